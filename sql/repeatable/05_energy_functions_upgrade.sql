-- Both editions define telemetry.add_meter_energy(slots) and telemetry.add_vehicle_energy(slots)
-- (10_edition.*.sql): their argument was named hours when the finest level was hourly, and they
-- returned nothing before they counted the rows they wrote; such a definition cannot be replaced,
-- only dropped. Only a definition of an earlier release is dropped: dropping on every migration
-- would fail ingests running meanwhile ("function does not exist").
DO $drop$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = 'telemetry'::regnamespace
               AND p.proname IN ('add_meter_energy', 'add_vehicle_energy')
               AND (p.proargnames IS DISTINCT FROM ARRAY['slots'] OR p.prorettype <> 'bigint'::regtype)
    LOOP
        EXECUTE format('DROP FUNCTION %s', f);
    END LOOP;
END $drop$;
