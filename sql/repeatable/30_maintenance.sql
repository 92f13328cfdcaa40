-- Retention: telemetry.retention (0008_retention_settings) says how long data is kept; this file's
-- functions change it and apply it. On Community the retention policies drop expired chunks, and
-- telemetry.apply_retention_policies() (30_retention.community.sql) keeps their drop_after equal to
-- the row; on Apache, which has no policies, the API runs telemetry.run_maintenance() periodically.

DROP FUNCTION IF EXISTS telemetry.run_maintenance(interval, interval);

-- Every relation that retention applies to, with how long it is kept (daily aggregates: forever).
-- The ten-minute aggregates serve only the edges of windows, and are kept as long as raw readings.
CREATE OR REPLACE FUNCTION telemetry.retention_targets()
RETURNS TABLE (relation regclass, keep_for interval)
LANGUAGE sql STABLE SET search_path = pg_catalog, public AS $$
    SELECT t.rel::regclass, CASE t.kind WHEN 'raw' THEN keep.raw_readings ELSE keep.hourly_aggregates END
    FROM telemetry.retention keep,
         (VALUES ('telemetry.meter_readings', 'raw'), ('telemetry.vehicle_readings', 'raw'),
                 ('telemetry.energygrid_readings', 'raw'),
                 ('telemetry.meter_energy_10m', 'raw'), ('telemetry.vehicle_energy_10m', 'raw'),
                 ('telemetry.meter_energy_hourly', 'hourly'), ('telemetry.vehicle_energy_hourly', 'hourly'),
                 ('telemetry.meter_energy_6h', 'hourly'), ('telemetry.vehicle_energy_6h', 'hourly'),
                 ('telemetry.meter_energy_running', 'hourly'), ('telemetry.vehicle_energy_running', 'hourly'))
             AS t(rel, kind)
$$;

-- Drops the chunks past their retention. SECURITY DEFINER: the API's role may not drop anything
-- itself; this runs as the schema owner, with a fixed search path.
CREATE OR REPLACE FUNCTION telemetry.run_maintenance()
RETURNS TABLE (relation text, dropped_chunk text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT t.relation::text, chunk::text
    FROM telemetry.retention_targets() t
    CROSS JOIN LATERAL drop_chunks(t.relation, older_than => now() - t.keep_for) AS chunk
$$;

-- The one way to change retention: the row and, on Community, the policies, in one transaction.
-- NULL keeps a value as it is.
CREATE OR REPLACE FUNCTION telemetry.set_retention(
    p_raw_readings interval, p_hourly_aggregates interval DEFAULT NULL, p_late_margin interval DEFAULT NULL)
RETURNS telemetry.retention
LANGUAGE plpgsql AS $$
DECLARE
    keep telemetry.retention;
BEGIN
    UPDATE telemetry.retention SET
        raw_readings = coalesce(p_raw_readings, raw_readings),
        hourly_aggregates = coalesce(p_hourly_aggregates, hourly_aggregates),
        late_margin = coalesce(p_late_margin, late_margin),
        updated_at = now()
    RETURNING * INTO STRICT keep;
    PERFORM telemetry.apply_retention_policies();
    RETURN keep;
END $$;
