-- The EnergyGrid write path: the connector COPYs a poll's readings into staging, then this moves the
-- new ones into the hypertable and counts the repeats.

CREATE OR REPLACE FUNCTION telemetry.prepare_energygrid_staging() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS energygrid_staging (
        serial text, last_updated timestamptz, power_kw double precision, online boolean
    ) ON COMMIT DELETE ROWS;
END $$;

CREATE OR REPLACE FUNCTION telemetry.ingest_energygrid_staging(OUT inserted bigint, OUT duplicates bigint)
LANGUAGE plpgsql AS $$
DECLARE
    staged bigint;
BEGIN
    WITH ins AS (
        INSERT INTO telemetry.energygrid_readings (serial, last_updated, power_kw, online)
        SELECT serial, last_updated, power_kw, online FROM pg_temp.energygrid_staging
        ORDER BY serial, last_updated
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM pg_temp.energygrid_staging) INTO inserted, staged;
    duplicates := staged - inserted;
END $$;
