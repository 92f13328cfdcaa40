-- EnergyGrid readings: the write path (the connector COPYs a poll's readings into staging, then
-- ingest_energygrid_staging moves the new ones into the hypertable and counts the repeats) and the
-- API's reads.

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

-- One serial's readings in [p_from, p_to), oldest first, at most p_limit of them.
CREATE OR REPLACE FUNCTION telemetry.energygrid_device_readings(
    p_serial text, p_from timestamptz, p_to timestamptz, p_limit integer)
RETURNS TABLE (serial text, last_updated timestamptz, power_kw double precision, online boolean,
               fetched_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT r.serial::text, r.last_updated, r.power_kw, r.online, r.fetched_at
    FROM telemetry.energygrid_readings r
    WHERE r.serial = p_serial AND r.last_updated >= p_from AND r.last_updated < p_to
    ORDER BY r.last_updated
    LIMIT p_limit
$$;

-- The newest reading of every serial. A loose index scan: the recursive part steps from one serial to
-- the next down the primary key's index (serial, last_updated), and each serial's newest row is read
-- from the same index, so the cost grows with the devices, not with the rows kept. DISTINCT ON would
-- read every row on the Apache edition, which has no SkipScan.
CREATE OR REPLACE FUNCTION telemetry.energygrid_latest()
RETURNS TABLE (serial text, last_updated timestamptz, power_kw double precision, online boolean,
               fetched_at timestamptz)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE serials(serial) AS (
        (SELECT r.serial FROM telemetry.energygrid_readings r ORDER BY r.serial LIMIT 1)
        UNION ALL
        SELECT (SELECT r.serial FROM telemetry.energygrid_readings r
                WHERE r.serial > s.serial ORDER BY r.serial LIMIT 1)
        FROM serials s
        WHERE s.serial IS NOT NULL
    )
    SELECT newest.*
    FROM serials s
    CROSS JOIN LATERAL (
        SELECT r.serial::text, r.last_updated, r.power_kw, r.online, r.fetched_at
        FROM telemetry.energygrid_readings r
        WHERE r.serial = s.serial
        ORDER BY r.last_updated DESC
        LIMIT 1
    ) newest
    ORDER BY newest.serial
$$;
