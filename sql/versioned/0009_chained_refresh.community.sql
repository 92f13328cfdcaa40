-- One refresh job for every continuous aggregate, in dependency order (hourly, then six-hour and
-- daily on top of them), every 5 minutes, instead of one policy per aggregate on its own schedule.
-- A late reading then reaches the hourly, six-hour and daily rows in the same run, so answers over
-- whole days include it as soon as hourly answers do (before: up to an hour later). Refreshes only
-- recompute invalidated ranges, so the coarser levels cost nothing while data arrives in order.
-- The refresh windows come from telemetry.retention; the procedure's body lives in
-- sql/repeatable/35_refresh.community.sql (this file registers the job).

SELECT remove_continuous_aggregate_policy(agg, if_exists => true)
FROM unnest(ARRAY['telemetry.meter_energy_hourly', 'telemetry.vehicle_energy_hourly',
                  'telemetry.meter_energy_6h', 'telemetry.vehicle_energy_6h',
                  'telemetry.meter_energy_daily', 'telemetry.vehicle_energy_daily']::regclass[]) AS agg;

CREATE PROCEDURE telemetry.refresh_energy_aggregates(job_id integer DEFAULT NULL, config jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$ BEGIN END $$;

SELECT add_job('telemetry.refresh_energy_aggregates', INTERVAL '5 minutes');
