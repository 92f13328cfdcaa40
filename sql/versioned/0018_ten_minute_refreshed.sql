-- How far the refresh job has refreshed each stream's ten-minute aggregate (Community; empty on
-- Apache, whose tables are always complete). TimescaleDB's watermark stops at the end of the last
-- slot that held readings, so after a quiet stretch it stays behind what was refreshed, and a window
-- ending at an hour whose last minutes were quiet read that hour from ten-minute rows and raw
-- readings instead of its hourly row. The slots up to this time were refreshed, with or without
-- readings (telemetry.ten_minute_mark, sql/repeatable/50_analytics.sql; written by
-- sql/repeatable/35_refresh.community.sql right after each refresh, before its commit).
CREATE TABLE telemetry.ten_minute_refreshed (
    stream       text        PRIMARY KEY CHECK (stream IN ('meter', 'vehicle')),
    refreshed_to timestamptz NOT NULL
);

-- Read by the analytics as soon as the repeatable files that follow commit (see 0017).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'telemetry_app') THEN
        GRANT SELECT ON telemetry.ten_minute_refreshed TO telemetry_app;
    END IF;
END $$;
