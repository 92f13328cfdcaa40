-- The API and every long-running process connect as a member of telemetry_app: it reads and writes
-- data and runs the analytics functions, and nothing else (no DDL, no dropping chunks, no changing
-- the migration ledger or retention). Migrations and `retention set` run as the schema owner.
-- Re-applied on every migration, so objects added since are covered. Only missing privileges are
-- granted: a GRANT rewrites the object's catalog row even when nothing changes, and would collide
-- with sessions creating chunks of the same hypertable while a migration runs under load.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'telemetry_app') THEN
        CREATE ROLE telemetry_app NOLOGIN;
    END IF;
    IF has_schema_privilege('public', 'telemetry', 'CREATE') THEN
        REVOKE CREATE ON SCHEMA telemetry FROM PUBLIC;
    END IF;
    IF NOT has_schema_privilege('telemetry_app', 'telemetry', 'USAGE') THEN
        GRANT USAGE ON SCHEMA telemetry TO telemetry_app;
    END IF;
END $$;

DO $$
DECLARE
    target record;
    -- What requests write: readings (and the hypertables' new chunks), current state, links, keys,
    -- on the Apache edition the aggregate tables the ingest keeps exact (on Community the hours whose
    -- running sums the refresh job rebuilds and the open-hour sums), and the alerts, webhooks and
    -- their delivery outbox, which the API's evaluation and delivery loops keep.
    written text[] := ARRAY['meter_readings', 'vehicle_readings', 'energygrid_readings', 'meter_state',
                            'vehicle_state', 'vehicle_meter_links', 'api_keys', 'meter_energy_10m',
                            'vehicle_energy_10m', 'meter_energy_hourly',
                            'vehicle_energy_hourly', 'meter_energy_6h', 'vehicle_energy_6h',
                            'meter_energy_daily', 'vehicle_energy_daily', 'energy_running_dirty',
                            'meter_energy_open', 'vehicle_energy_open', 'alerts', 'webhooks', 'webhook_deliveries'];
BEGIN
    FOR target IN
        SELECT c.oid::regclass AS rel, c.relkind IN ('r', 'p') AND c.relname = ANY (written) AS writes
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'telemetry' AND c.relkind IN ('r', 'p', 'v', 'm')
    LOOP
        IF NOT has_table_privilege('telemetry_app', target.rel, 'SELECT') THEN
            EXECUTE format('GRANT SELECT ON %s TO telemetry_app', target.rel);
        END IF;
        IF target.writes AND NOT (has_table_privilege('telemetry_app', target.rel, 'INSERT')
                               AND has_table_privilege('telemetry_app', target.rel, 'UPDATE')) THEN
            EXECUTE format('GRANT INSERT, UPDATE ON %s TO telemetry_app', target.rel);
        END IF;
    END LOOP;
    -- A SECURITY DEFINER function runs with the owner's rights (run_maintenance drops chunks): only
    -- telemetry_app may call it, not every role of the cluster (PUBLIC may execute new functions).
    FOR target IN
        SELECT p.oid::regprocedure AS fn
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'telemetry' AND p.prosecdef AND has_function_privilege('public', p.oid, 'EXECUTE')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON ROUTINE %s FROM PUBLIC', target.fn);
    END LOOP;
    FOR target IN
        SELECT p.oid::regprocedure AS fn
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'telemetry' AND p.prokind IN ('f', 'p')
          AND NOT has_function_privilege('telemetry_app', p.oid, 'EXECUTE')
    LOOP
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO telemetry_app', target.fn);
    END LOOP;
END $$;
