-- Community edition: continuous aggregates maintain themselves.

CREATE OR REPLACE FUNCTION telemetry.aggregates_maintained_by_ingest() RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT false $$;

CREATE OR REPLACE FUNCTION telemetry.add_meter_energy(slots telemetry.meter_energy_hourly[]) RETURNS bigint
LANGUAGE plpgsql STRICT AS $$
BEGIN
    RAISE EXCEPTION 'continuous aggregates maintain themselves on the Community edition';
END $$;

CREATE OR REPLACE FUNCTION telemetry.add_vehicle_energy(slots telemetry.vehicle_energy_hourly[]) RETURNS bigint
LANGUAGE plpgsql STRICT AS $$
BEGIN
    RAISE EXCEPTION 'continuous aggregates maintain themselves on the Community edition';
END $$;

-- The analytics read the materialized rows of the aggregates themselves and the raw readings past
-- the watermark (what real-time aggregation does), with the watermark read once per query: through
-- the real-time views inside inlined functions, TimescaleDB would evaluate it for every row.
-- telemetry.aggregate_watermark() is rebuilt on every run with each aggregate's internal id baked
-- in: a single expression that PostgreSQL inlines into its caller, with no catalog join to plan.
DO $do$
DECLARE
    agg record;
    cases text := '';
BEGIN
    FOR agg IN
        SELECT c.user_view_name, c.mat_hypertable_id, h.schema_name, h.table_name,
               format('%I.%I', c.user_view_schema, c.user_view_name)::regclass::oid AS view_oid
        FROM _timescaledb_catalog.continuous_agg c
        JOIN _timescaledb_catalog.hypertable h ON h.id = c.mat_hypertable_id
        WHERE c.user_view_schema = 'telemetry'
        ORDER BY c.mat_hypertable_id
    LOOP
        EXECUTE format('CREATE OR REPLACE VIEW telemetry.%I AS SELECT * FROM %I.%I',
                       agg.user_view_name || '_materialized', agg.schema_name, agg.table_name);
        cases := cases || format(' WHEN %s THEN %s', agg.view_oid, agg.mat_hypertable_id);
    END LOOP;
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION telemetry.aggregate_watermark(aggregate regclass) RETURNS timestamptz
        LANGUAGE sql STABLE AS $b$
            SELECT coalesce(_timescaledb_functions.to_timestamp(
                       _timescaledb_functions.cagg_watermark(CASE aggregate::oid %s END)), '-infinity')
        $b$$f$, cases);
END $do$;
