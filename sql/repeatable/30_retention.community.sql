-- Community edition: the retention policies follow telemetry.retention. Applied on every migration
-- too, so a policy edited by hand is put back.

CREATE OR REPLACE FUNCTION telemetry.apply_retention_policies() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    target record;
BEGIN
    FOR target IN SELECT * FROM telemetry.retention_targets() LOOP
        PERFORM add_retention_policy(target.relation, drop_after => target.keep_for, if_not_exists => true);
        PERFORM alter_job(j.job_id, config => jsonb_set(j.config, '{drop_after}', to_jsonb(target.keep_for::text)))
        FROM timescaledb_information.jobs j
        WHERE j.proc_name = 'policy_retention'
          AND format('%I.%I', j.hypertable_schema, j.hypertable_name)::regclass = target.relation
          AND (j.config ->> 'drop_after')::interval <> target.keep_for;
    END LOOP;
END $$;

SET LOCAL client_min_messages = error;  -- if_not_exists notices and warnings on every run
SELECT telemetry.apply_retention_policies();
