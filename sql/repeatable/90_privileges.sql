-- The API and every long-running process connect as a member of telemetry_app: it reads and writes
-- data and runs the analytics functions, and nothing else (no DDL, no dropping chunks, no changing
-- the migration ledger or retention). Migrations and `retention set` run as the schema owner.
-- Re-applied on every migration, so objects added since are covered.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'telemetry_app') THEN
        CREATE ROLE telemetry_app NOLOGIN;
    END IF;
END $$;

REVOKE CREATE ON SCHEMA telemetry FROM PUBLIC;
GRANT USAGE ON SCHEMA telemetry TO telemetry_app;
GRANT SELECT ON ALL TABLES IN SCHEMA telemetry TO telemetry_app;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA telemetry TO telemetry_app;

-- What requests write: readings (and the hypertables' new chunks), current state, links, keys, and on
-- the Apache edition the aggregate tables the ingest keeps exact.
DO $$
DECLARE
    target regclass;
BEGIN
    FOR target IN
        SELECT format('telemetry.%I', c.relname)::regclass
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'telemetry' AND c.relkind IN ('r', 'p')
          AND c.relname IN ('meter_readings', 'vehicle_readings', 'energygrid_readings', 'meter_state',
                            'vehicle_state', 'vehicle_meter_links', 'api_keys',
                            'meter_energy_hourly', 'vehicle_energy_hourly', 'meter_energy_6h',
                            'vehicle_energy_6h', 'meter_energy_daily', 'vehicle_energy_daily')
    LOOP
        EXECUTE format('GRANT INSERT, UPDATE ON %s TO telemetry_app', target);
    END LOOP;
END $$;
