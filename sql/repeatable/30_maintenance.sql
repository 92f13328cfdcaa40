-- Retention as a maintenance routine: the Apache edition has no policies, so the API runs this
-- periodically; on Community the retention policies do the same work and this is a manual tool.

CREATE OR REPLACE FUNCTION telemetry.run_maintenance(
    raw_retention    interval DEFAULT INTERVAL '30 days',
    hourly_retention interval DEFAULT INTERVAL '2 years')
RETURNS TABLE (relation text, dropped_chunk text)
LANGUAGE plpgsql AS $$
DECLARE
    target record;
BEGIN
    FOR target IN
        SELECT * FROM (VALUES ('telemetry.meter_readings', raw_retention),
                              ('telemetry.vehicle_readings', raw_retention),
                              ('telemetry.energygrid_readings', raw_retention),
                              ('telemetry.meter_energy_hourly', hourly_retention),
                              ('telemetry.vehicle_energy_hourly', hourly_retention),
                              ('telemetry.meter_energy_6h', hourly_retention),
                              ('telemetry.vehicle_energy_6h', hourly_retention)) AS t(rel, keep)
    LOOP
        RETURN QUERY
            SELECT target.rel, chunk::text
            FROM drop_chunks(target.rel::regclass, older_than => now() - target.keep) AS chunk;
    END LOOP;
END $$;
