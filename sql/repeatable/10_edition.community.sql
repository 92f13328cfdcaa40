-- Community edition: continuous aggregates maintain themselves.

CREATE OR REPLACE FUNCTION telemetry.aggregates_maintained_by_ingest() RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT false $$;

CREATE OR REPLACE FUNCTION telemetry.add_meter_energy(hours telemetry.meter_energy_hourly[]) RETURNS bigint
LANGUAGE plpgsql STRICT AS $$
BEGIN
    RAISE EXCEPTION 'continuous aggregates maintain themselves on the Community edition';
END $$;

CREATE OR REPLACE FUNCTION telemetry.add_vehicle_energy(hours telemetry.vehicle_energy_hourly[]) RETURNS bigint
LANGUAGE plpgsql STRICT AS $$
BEGIN
    RAISE EXCEPTION 'continuous aggregates maintain themselves on the Community edition';
END $$;

-- The analytics read the materialized rows of the aggregates themselves and the raw readings past
-- the watermark (what real-time aggregation does), with the watermark read once per query: through
-- the real-time views inside inlined functions, TimescaleDB would evaluate it for every row.
DO $$
DECLARE
    agg record;
BEGIN
    FOR agg IN
        SELECT c.user_view_name, h.schema_name, h.table_name
        FROM _timescaledb_catalog.continuous_agg c
        JOIN _timescaledb_catalog.hypertable h ON h.id = c.mat_hypertable_id
        WHERE c.user_view_schema = 'telemetry'
    LOOP
        EXECUTE format('CREATE OR REPLACE VIEW telemetry.%I AS SELECT * FROM %I.%I',
                       agg.user_view_name || '_materialized', agg.schema_name, agg.table_name);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION telemetry.aggregate_watermark(aggregate regclass) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce(_timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark(c.mat_hypertable_id)),
                    '-infinity')
    FROM _timescaledb_catalog.continuous_agg c
    WHERE format('%I.%I', c.user_view_schema, c.user_view_name)::regclass = aggregate
$$;
