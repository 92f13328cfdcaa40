-- Community edition: the retention policies follow telemetry.retention. Applied on every migration
-- too, so a policy edited by hand is put back.

CREATE OR REPLACE FUNCTION telemetry.apply_retention_policies() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    keep telemetry.retention;
    target record;
BEGIN
    SELECT * INTO STRICT keep FROM telemetry.retention;
    FOR target IN
        SELECT * FROM (VALUES ('meter_readings', keep.raw_readings), ('vehicle_readings', keep.raw_readings),
                              ('energygrid_readings', keep.raw_readings),
                              ('meter_energy_hourly', keep.hourly_aggregates),
                              ('vehicle_energy_hourly', keep.hourly_aggregates),
                              ('meter_energy_6h', keep.hourly_aggregates),
                              ('vehicle_energy_6h', keep.hourly_aggregates)) AS t(name, keep_for)
    LOOP
        PERFORM add_retention_policy(format('telemetry.%I', target.name)::regclass, drop_after => target.keep_for,
                                     if_not_exists => true);
        PERFORM alter_job(j.job_id, config => jsonb_set(j.config, '{drop_after}', to_jsonb(target.keep_for::text)))
        FROM timescaledb_information.jobs j
        WHERE j.proc_name = 'policy_retention' AND j.hypertable_schema = 'telemetry'
          AND j.hypertable_name = target.name AND (j.config ->> 'drop_after')::interval <> target.keep_for;
    END LOOP;
END $$;

SET LOCAL client_min_messages = error;  -- if_not_exists notices and warnings on every run
SELECT telemetry.apply_retention_policies();
