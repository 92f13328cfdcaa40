-- The refresh job of the continuous aggregates (registered by 0009_chained_refresh): ten-minute and
-- hourly first (both read the raw readings), then the six-hour and daily aggregates built on the
-- hourly ones, each committed on its own.
--
-- Windows: a ten-minute slot or an hour is materialized once it is 5 minutes closed, as far back as raw readings are
-- kept (telemetry.retention), so a reading accepted late is materialized before its chunk expires.
-- The coarser levels read the hourly rows 5 days further back than that, inside the hourly
-- retention. Blocks and days are materialized once closed, in the same run as their last hour.

CREATE OR REPLACE PROCEDURE telemetry.refresh_energy_aggregates(job_id integer DEFAULT NULL, config jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    keep telemetry.retention;
    refreshed_at timestamptz := now();
    agg regclass;
BEGIN
    SELECT * INTO STRICT keep FROM telemetry.retention;
    FOREACH agg IN ARRAY ARRAY['telemetry.meter_energy_10m', 'telemetry.vehicle_energy_10m',
                               'telemetry.meter_energy_hourly', 'telemetry.vehicle_energy_hourly']::regclass[] LOOP
        CALL refresh_continuous_aggregate(agg, refreshed_at - keep.raw_readings, refreshed_at - INTERVAL '5 minutes');
        COMMIT;
    END LOOP;
    FOREACH agg IN ARRAY ARRAY['telemetry.meter_energy_6h', 'telemetry.vehicle_energy_6h',
                               'telemetry.meter_energy_daily', 'telemetry.vehicle_energy_daily']::regclass[] LOOP
        CALL refresh_continuous_aggregate(agg, refreshed_at - keep.raw_readings - INTERVAL '5 days',
                                          refreshed_at - INTERVAL '5 minutes');
        COMMIT;
    END LOOP;
END $$;
