-- Charging-efficiency analytics, exact for any window [from, to).
--
-- A window is cut into parts: raw readings for the partial hours at its edges (and for whole hours
-- past the hourly aggregate's watermark, as real-time aggregation does), materialized hourly rows
-- for whole hours, and, where asked, materialized six-hour rows for whole six-hour blocks and daily
-- rows for whole UTC days inside them. Every part lies inside one hour, one block or one day, so
-- sums over the parts equal sums over the raw readings, and grouping them by hour or day gives
-- exact series. A 24-hour window reads about 30 materialized rows per device and stream, and raw
-- readings only for its partial hours.
--
-- Cost model: the bounds and the watermarks are computed once per query into plain values
-- (telemetry.window_parts); the parts are read by one inlinable query (telemetry.energy_pieces)
-- whose predicates compare columns with those values only. A stable expression left in a filter
-- would be evaluated for every row, and the watermark through TimescaleDB's real-time views for
-- every row too. Per-device reads run on generic plans: planned once per session, TimescaleDB
-- excludes the chunks outside the window at executor startup, and each part is gated by a one-time
-- test of its bounds, so an empty part (a window with no partial hour, say) descends no index.
-- Fleet-wide reads run on custom plans, where chunks are excluded while planning.

-- Objects of an earlier version of this file.
DROP VIEW IF EXISTS telemetry.energy_hourly_materialized, telemetry.energy_daily_materialized;
DROP FUNCTION IF EXISTS telemetry.vehicle_performance(timestamptz, timestamptz, text[], double precision,
                                                      double precision, double precision);
DROP FUNCTION IF EXISTS telemetry.vehicle_ac_pieces(timestamptz, timestamptz, text[], boolean);
DROP FUNCTION IF EXISTS telemetry.link_periods(timestamptz, timestamptz, text[]);
DROP FUNCTION IF EXISTS telemetry.meter_energy_pieces(timestamptz, timestamptz, text[], boolean);
DROP FUNCTION IF EXISTS telemetry.vehicle_energy_pieces(timestamptz, timestamptz, text[], boolean);
DROP FUNCTION IF EXISTS telemetry.head_end(timestamptz, timestamptz);
DROP FUNCTION IF EXISTS telemetry.hour_ceil(timestamptz), telemetry.block_ceil(timestamptz),
                        telemetry.day_ceil(timestamptz);
DROP FUNCTION IF EXISTS telemetry.window_parts(text, timestamptz, timestamptz, boolean);
DROP FUNCTION IF EXISTS telemetry.device_pieces(text, text, timestamptz, timestamptz, boolean);
DROP FUNCTION IF EXISTS telemetry.energy_pieces(text, timestamptz, timestamptz, timestamptz, timestamptz,
                                                timestamptz, timestamptz, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS telemetry.energy_totals(text, timestamptz, timestamptz, timestamptz, timestamptz,
                                                timestamptz, timestamptz, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS telemetry.tail_start(timestamptz, timestamptz);
DROP FUNCTION IF EXISTS telemetry.days_start(timestamptz, timestamptz, boolean);
DROP FUNCTION IF EXISTS telemetry.days_end(timestamptz, timestamptz, boolean);

-- The first bucket boundary of the given width at or after ts.
CREATE OR REPLACE FUNCTION telemetry.bucket_ceil(width interval, ts timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN time_bucket(width, ts) = ts THEN ts ELSE time_bucket(width, ts) + width END
$$;

-- The whole buckets of an aggregate of the given width inside [p_from, p_to) that it has
-- materialized, as [lo, hi); empty when lo >= hi (the watermark is read only when some fit).
CREATE OR REPLACE FUNCTION telemetry.materialized_range(
    p_from timestamptz, p_to timestamptz, width interval, aggregate regclass,
    OUT lo timestamptz, OUT hi timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    lo := telemetry.bucket_ceil(width, p_from);
    hi := time_bucket(width, p_to);
    IF lo < hi THEN
        hi := least(hi, telemetry.aggregate_watermark(aggregate));
    END IF;
END $$;

-- Both streams in one shape: device, time, energy of the interval, and the quantity averaged over
-- the readings (voltage for meters, battery temperature for vehicles).
CREATE OR REPLACE VIEW telemetry.energy_readings AS
    SELECT 'meter'::text AS stream, meter_id::text AS device_id, time, kwh_consumed_ac AS kwh, voltage AS level
    FROM telemetry.meter_readings
    UNION ALL
    SELECT 'vehicle'::text, vehicle_id::text, time, kwh_delivered_dc, battery_temp
    FROM telemetry.vehicle_readings;

-- The materialized rows of the aggregates (continuous aggregates on Community, tables on Apache),
-- hourly, six-hourly and daily: per bucket, the energy, the sum of the averaged quantity and the number of
-- readings. A query for one grain and one stream keeps only that branch, while planning.
CREATE OR REPLACE VIEW telemetry.energy_materialized AS
    SELECT 'hour'::text AS grain, 'meter'::text AS stream, meter_id::text AS device_id, bucket,
           kwh_consumed_ac AS kwh, voltage_sum AS level_sum, readings::integer AS readings
    FROM telemetry.meter_energy_hourly_materialized
    UNION ALL
    SELECT 'hour', 'vehicle', vehicle_id::text, bucket, kwh_delivered_dc, battery_temp_sum, readings::integer
    FROM telemetry.vehicle_energy_hourly_materialized
    UNION ALL
    SELECT '6h', 'meter', meter_id::text, bucket, kwh_consumed_ac, voltage_sum, readings::integer
    FROM telemetry.meter_energy_6h_materialized
    UNION ALL
    SELECT '6h', 'vehicle', vehicle_id::text, bucket, kwh_delivered_dc, battery_temp_sum, readings::integer
    FROM telemetry.vehicle_energy_6h_materialized
    UNION ALL
    SELECT 'day', 'meter', meter_id::text, bucket, kwh_consumed_ac, voltage_sum, readings::integer
    FROM telemetry.meter_energy_daily_materialized
    UNION ALL
    SELECT 'day', 'vehicle', vehicle_id::text, bucket, kwh_delivered_dc, battery_temp_sum, readings::integer
    FROM telemetry.vehicle_energy_daily_materialized;

-- The parts of [p_from, p_to) for one stream:
--   raw readings   [p_from, head_to)  and  [tail_from, p_to)
--   hourly rows    [hours_from, hours_to), except the blocks and the days below
--   six-hour rows  [blocks_from, blocks_to), except the days below
--   daily rows     [days_from, days_to)
-- Hours at or past the hourly watermark are raw (in the tail part). Blocks and days are used only
-- when asked (p_coarse: not for hourly series) and only where their own aggregate is materialized
-- too; an unused coarse range is empty (from = to), which excludes no finer row.
CREATE OR REPLACE FUNCTION telemetry.window_parts(
    p_stream text, p_from timestamptz, p_to timestamptz, p_coarse boolean DEFAULT true,
    OUT head_to timestamptz, OUT tail_from timestamptz, OUT hours_from timestamptz, OUT hours_to timestamptz,
    OUT blocks_from timestamptz, OUT blocks_to timestamptz, OUT days_from timestamptz, OUT days_to timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    h0 timestamptz := telemetry.bucket_ceil(INTERVAL '1 hour', p_from);
    h1 timestamptz := time_bucket(INTERVAL '1 hour', p_to);
    hourly_mark timestamptz := telemetry.aggregate_watermark(
        CASE p_stream WHEN 'meter' THEN 'telemetry.meter_energy_hourly'::regclass
                      ELSE 'telemetry.vehicle_energy_hourly'::regclass END);
    r record;
BEGIN
    head_to := least(h0, p_to);
    tail_from := greatest(h0, least(hourly_mark, h1));
    hours_from := h0;
    hours_to := least(h1, hourly_mark);
    blocks_from := h0;
    blocks_to := h0;
    days_from := h0;
    days_to := h0;
    IF NOT p_coarse THEN
        RETURN;
    END IF;
    r := telemetry.materialized_range(h0, hours_to, INTERVAL '6 hours',
        CASE p_stream WHEN 'meter' THEN 'telemetry.meter_energy_6h'::regclass
                      ELSE 'telemetry.vehicle_energy_6h'::regclass END);
    IF r.lo < r.hi THEN
        blocks_from := r.lo;
        blocks_to := r.hi;
    END IF;
    r := telemetry.materialized_range(h0, hours_to, INTERVAL '1 day',
        CASE p_stream WHEN 'meter' THEN 'telemetry.meter_energy_daily'::regclass
                      ELSE 'telemetry.vehicle_energy_daily'::regclass END);
    IF r.lo < r.hi THEN
        days_from := r.lo;
        days_to := r.hi;
    END IF;
END $$;

-- Every reading of a stream in [p_from, p_to), as parts (one raw reading, one hour, one block or one
-- day each), given the bounds from telemetry.window_parts. Inlined into its caller: a device filter
-- on the result is pushed down into every branch and reaches the (device, time) indexes.
CREATE OR REPLACE FUNCTION telemetry.energy_pieces(
    p_stream text, p_from timestamptz, p_to timestamptz, p_head_to timestamptz, p_tail_from timestamptz,
    p_hours_from timestamptz, p_hours_to timestamptz, p_blocks_from timestamptz, p_blocks_to timestamptz,
    p_days_from timestamptz, p_days_to timestamptz)
RETURNS TABLE (device_id text, piece_start timestamptz, kwh double precision, level_sum double precision,
               readings integer)
LANGUAGE sql STABLE AS $$
    SELECT r.device_id, r.time, r.kwh, r.level, 1
    FROM telemetry.energy_readings r
    WHERE r.stream = p_stream AND p_from < p_head_to AND r.time >= p_from AND r.time < p_head_to
    UNION ALL
    SELECT r.device_id, r.time, r.kwh, r.level, 1
    FROM telemetry.energy_readings r
    WHERE r.stream = p_stream AND p_tail_from < p_to AND r.time >= p_tail_from AND r.time < p_to
    UNION ALL
    SELECT h.device_id, h.bucket, h.kwh, h.level_sum, h.readings
    FROM telemetry.energy_materialized h
    WHERE h.grain = 'hour' AND h.stream = p_stream AND p_hours_from < p_hours_to
      AND h.bucket >= p_hours_from AND h.bucket < p_hours_to
      AND (h.bucket < p_blocks_from OR h.bucket >= p_blocks_to) AND (h.bucket < p_days_from OR h.bucket >= p_days_to)
    UNION ALL
    SELECT b.device_id, b.bucket, b.kwh, b.level_sum, b.readings
    FROM telemetry.energy_materialized b
    WHERE b.grain = '6h' AND b.stream = p_stream AND p_blocks_from < p_blocks_to
      AND b.bucket >= p_blocks_from AND b.bucket < p_blocks_to
      AND (b.bucket < p_days_from OR b.bucket >= p_days_to)
    UNION ALL
    SELECT d.device_id, d.bucket, d.kwh, d.level_sum, d.readings
    FROM telemetry.energy_materialized d
    WHERE d.grain = 'day' AND d.stream = p_stream AND p_days_from < p_days_to
      AND d.bucket >= p_days_from AND d.bucket < p_days_to
$$;

-- Every device's totals of a stream over [p_from, p_to), from the same parts as telemetry.energy_pieces:
-- the fleet-wide path. Each part is summed per device right above its scan, so that only one row per
-- device and part reaches the final sum. Device ids come out in the "C" collation: the fleet query
-- sorts and joins 10,000 of them, and byte-wise comparison is cheaper than a linguistic collation's
-- (equality is the same).
CREATE OR REPLACE FUNCTION telemetry.energy_totals(
    p_stream text, p_from timestamptz, p_to timestamptz, p_head_to timestamptz, p_tail_from timestamptz,
    p_hours_from timestamptz, p_hours_to timestamptz, p_blocks_from timestamptz, p_blocks_to timestamptz,
    p_days_from timestamptz, p_days_to timestamptz)
RETURNS TABLE (device_id text, kwh double precision, level_sum double precision, readings bigint)
LANGUAGE sql STABLE AS $$
    SELECT p.device_id COLLATE "C", sum(p.kwh), sum(p.level_sum), sum(p.readings)::bigint
    FROM (
        SELECT r.device_id, sum(r.kwh) AS kwh, sum(r.level) AS level_sum, count(*) AS readings
        FROM telemetry.energy_readings r
        WHERE r.stream = p_stream AND p_from < p_head_to AND r.time >= p_from AND r.time < p_head_to
        GROUP BY r.device_id
        UNION ALL
        SELECT r.device_id, sum(r.kwh), sum(r.level), count(*)
        FROM telemetry.energy_readings r
        WHERE r.stream = p_stream AND p_tail_from < p_to AND r.time >= p_tail_from AND r.time < p_to
        GROUP BY r.device_id
        UNION ALL
        SELECT h.device_id, sum(h.kwh), sum(h.level_sum), sum(h.readings)
        FROM telemetry.energy_materialized h
        WHERE h.grain = 'hour' AND h.stream = p_stream AND p_hours_from < p_hours_to
      AND h.bucket >= p_hours_from AND h.bucket < p_hours_to
          AND (h.bucket < p_blocks_from OR h.bucket >= p_blocks_to)
          AND (h.bucket < p_days_from OR h.bucket >= p_days_to)
        GROUP BY h.device_id
        UNION ALL
        SELECT b.device_id, sum(b.kwh), sum(b.level_sum), sum(b.readings)
        FROM telemetry.energy_materialized b
        WHERE b.grain = '6h' AND b.stream = p_stream AND p_blocks_from < p_blocks_to
      AND b.bucket >= p_blocks_from AND b.bucket < p_blocks_to
          AND (b.bucket < p_days_from OR b.bucket >= p_days_to)
        GROUP BY b.device_id
        UNION ALL
        SELECT d.device_id, sum(d.kwh), sum(d.level_sum), sum(d.readings)
        FROM telemetry.energy_materialized d
        WHERE d.grain = 'day' AND d.stream = p_stream AND p_days_from < p_days_to
      AND d.bucket >= p_days_from AND d.bucket < p_days_to
        GROUP BY d.device_id
    ) p
    GROUP BY 1
$$;

-- One device's totals over a window: the per-request path of the performance endpoint. One static
-- statement per stream, so that each generic plan holds only that stream's relations.
CREATE OR REPLACE FUNCTION telemetry.device_energy(
    p_stream text, p_device text, p_from timestamptz, p_to timestamptz,
    OUT kwh double precision, OUT level_sum double precision, OUT readings bigint)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    w record;
BEGIN
    w := telemetry.window_parts(p_stream, p_from, p_to);
    IF p_stream = 'meter' THEN
        SELECT coalesce(sum(e.kwh), 0), coalesce(sum(e.level_sum), 0), coalesce(sum(e.readings), 0)
        INTO kwh, level_sum, readings
        FROM telemetry.energy_pieces('meter', p_from, p_to, w.head_to, w.tail_from, w.hours_from, w.hours_to,
                                     w.blocks_from, w.blocks_to, w.days_from, w.days_to) e
        WHERE e.device_id = p_device;
    ELSE
        SELECT coalesce(sum(e.kwh), 0), coalesce(sum(e.level_sum), 0), coalesce(sum(e.readings), 0)
        INTO kwh, level_sum, readings
        FROM telemetry.energy_pieces('vehicle', p_from, p_to, w.head_to, w.tail_from, w.hours_from, w.hours_to,
                                     w.blocks_from, w.blocks_to, w.days_from, w.days_to) e
        WHERE e.device_id = p_device;
    END IF;
END $$;

-- One device's parts over a window, for series.
CREATE OR REPLACE FUNCTION telemetry.device_pieces(
    p_stream text, p_device text, p_from timestamptz, p_to timestamptz, p_coarse boolean)
RETURNS TABLE (piece_start timestamptz, kwh double precision, level_sum double precision, readings integer)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    w record;
BEGIN
    w := telemetry.window_parts(p_stream, p_from, p_to, p_coarse);
    RETURN QUERY
    SELECT e.piece_start, e.kwh, e.level_sum, e.readings
    FROM telemetry.energy_pieces(p_stream, p_from, p_to, w.head_to, w.tail_from, w.hours_from, w.hours_to,
                                 w.blocks_from, w.blocks_to, w.days_from, w.days_to) e
    WHERE e.device_id = p_device;
END $$;

-- The link periods of every vehicle clipped to the window: AC is read from the meter that fed the
-- vehicle's charger at the time. Inlined into its caller: a filter on vehicle_id is pushed down to
-- the links' (vehicle_id, valid) index, in generic plans too.
CREATE OR REPLACE FUNCTION telemetry.link_periods(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (vehicle_id text, meter_id text, period_from timestamptz, period_to timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT l.vehicle_id, l.meter_id, greatest(lower(l.valid), p_from), least(upper(l.valid), p_to)
    FROM telemetry.vehicle_meter_links l
    WHERE l.valid && tstzrange(p_from, p_to)
$$;

CREATE OR REPLACE FUNCTION telemetry.verdict(
    ac_kwh double precision, dc_kwh double precision, meter_readings bigint, vehicle_readings bigint,
    healthy double precision DEFAULT 0.85, degraded double precision DEFAULT 0.75,
    min_ac_kwh double precision DEFAULT 0.1)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN coalesce(meter_readings, 0) = 0 OR coalesce(vehicle_readings, 0) = 0
             OR coalesce(ac_kwh, 0) < min_ac_kwh          THEN 'insufficient_data'
        WHEN dc_kwh / ac_kwh > 1.0                         THEN 'anomaly'
        WHEN dc_kwh / ac_kwh >= healthy                    THEN 'healthy'
        WHEN dc_kwh / ac_kwh >= degraded                   THEN 'degraded'
        ELSE 'faulty'
    END
$$;

-- One vehicle over a window: DC from its own readings, AC from the meters linked to it over each
-- part of the window. No row for a vehicle with neither a link nor readings in the window.
CREATE OR REPLACE FUNCTION telemetry.vehicle_performance(
    p_vehicle text, p_from timestamptz, p_to timestamptz,
    healthy double precision DEFAULT 0.85, degraded double precision DEFAULT 0.75,
    min_ac_kwh double precision DEFAULT 0.1)
RETURNS TABLE (vehicle_id text, meter_id text, linked boolean, ac_kwh double precision,
               dc_kwh double precision, loss_kwh double precision, efficiency double precision,
               avg_battery_temp double precision, meter_readings bigint, vehicle_readings bigint,
               verdict text)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    dc record;
    ac record;
    link record;
    ac_total double precision := 0;
    ac_n bigint := 0;
    latest_meter text;
BEGIN
    dc := telemetry.device_energy('vehicle', p_vehicle, p_from, p_to);
    FOR link IN
        SELECT l.meter_id, l.period_from, l.period_to FROM telemetry.link_periods(p_from, p_to) l
        WHERE l.vehicle_id = p_vehicle ORDER BY l.period_from
    LOOP
        ac := telemetry.device_energy('meter', link.meter_id, link.period_from, link.period_to);
        ac_total := ac_total + ac.kwh;
        ac_n := ac_n + ac.readings;
        latest_meter := link.meter_id;
    END LOOP;
    IF latest_meter IS NULL AND dc.readings = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT
        p_vehicle, latest_meter, latest_meter IS NOT NULL, ac_total, dc.kwh, ac_total - dc.kwh,
        CASE WHEN ac_total > 0 THEN dc.kwh / ac_total END,
        dc.level_sum / nullif(dc.readings, 0), ac_n, dc.readings,
        telemetry.verdict(ac_total, dc.kwh, ac_n, dc.readings, healthy, degraded, min_ac_kwh);
END $$;

-- Every vehicle with a link or DC readings in the window, set-based: each stream is summed per
-- device in one pass over its parts, then AC is attached to vehicles through the links. Links that
-- cover the whole window (the usual case) use the per-meter sums; periods cut by a relink are read
-- per period, and the latest of them names the vehicle's meter.
CREATE OR REPLACE FUNCTION telemetry.fleet_performance(
    p_from timestamptz, p_to timestamptz,
    healthy double precision DEFAULT 0.85, degraded double precision DEFAULT 0.75,
    min_ac_kwh double precision DEFAULT 0.1)
RETURNS TABLE (vehicle_id text, meter_id text, linked boolean, ac_kwh double precision,
               dc_kwh double precision, loss_kwh double precision, efficiency double precision,
               avg_battery_temp double precision, meter_readings bigint, vehicle_readings bigint,
               verdict text)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    m record;
    v record;
BEGIN
    m := telemetry.window_parts('meter', p_from, p_to);
    v := telemetry.window_parts('vehicle', p_from, p_to);
    RETURN QUERY
    WITH links AS MATERIALIZED (
        SELECT l.vehicle_id COLLATE "C" AS vehicle_id, l.meter_id COLLATE "C" AS meter_id, l.period_from,
               l.period_to, (l.period_from = p_from AND l.period_to = p_to) AS whole
        FROM telemetry.link_periods(p_from, p_to) l
    ), meter_totals AS (
        SELECT e.device_id, e.kwh, e.readings
        FROM telemetry.energy_totals('meter', p_from, p_to, m.head_to, m.tail_from, m.hours_from, m.hours_to,
                                     m.blocks_from, m.blocks_to, m.days_from, m.days_to) e
    ), ac AS (
        -- A link that covers the whole window is the vehicle's only one (periods never overlap).
        SELECT l.vehicle_id, l.meter_id, t.kwh, t.readings
        FROM links l LEFT JOIN meter_totals t ON t.device_id = l.meter_id
        WHERE l.whole
        UNION ALL
        SELECT l.vehicle_id, (array_agg(l.meter_id ORDER BY l.period_to DESC))[1], sum(e.kwh),
               sum(e.readings)::bigint
        FROM links l
        CROSS JOIN LATERAL telemetry.device_energy('meter', l.meter_id COLLATE "default", l.period_from,
                                                   l.period_to) e
        WHERE NOT l.whole
        GROUP BY l.vehicle_id
    ), dc AS (
        SELECT e.device_id AS vehicle_id, e.kwh, e.level_sum AS temp_sum, e.readings
        FROM telemetry.energy_totals('vehicle', p_from, p_to, v.head_to, v.tail_from, v.hours_from, v.hours_to,
                                     v.blocks_from, v.blocks_to, v.days_from, v.days_to) e
    )
    SELECT coalesce(a.vehicle_id, dc.vehicle_id), a.meter_id, a.meter_id IS NOT NULL,
           coalesce(a.kwh, 0), coalesce(dc.kwh, 0), coalesce(a.kwh, 0) - coalesce(dc.kwh, 0),
           CASE WHEN a.kwh > 0 THEN coalesce(dc.kwh, 0) / a.kwh END,
           dc.temp_sum / nullif(dc.readings, 0),
           coalesce(a.readings, 0), coalesce(dc.readings, 0),
           telemetry.verdict(a.kwh, dc.kwh, a.readings, dc.readings, healthy, degraded, min_ac_kwh)
    FROM ac a
    FULL JOIN dc ON dc.vehicle_id = a.vehicle_id;
END $$;

-- One vehicle's AC, DC, efficiency and battery temperature per bucket of the window.
CREATE OR REPLACE FUNCTION telemetry.vehicle_series(
    p_vehicle text, p_from timestamptz, p_to timestamptz, p_bucket interval)
RETURNS TABLE (bucket timestamptz, ac_kwh double precision, dc_kwh double precision,
               efficiency double precision, avg_battery_temp double precision,
               meter_readings bigint, vehicle_readings bigint)
LANGUAGE sql STABLE AS $$
    WITH ac AS (
        SELECT time_bucket(p_bucket, e.piece_start) AS bucket, sum(e.kwh) AS kwh, sum(e.readings)::bigint AS readings
        FROM telemetry.link_periods(p_from, p_to) l
        CROSS JOIN LATERAL telemetry.device_pieces('meter', l.meter_id, l.period_from, l.period_to,
                                                   p_bucket >= INTERVAL '1 day') e
        WHERE l.vehicle_id = p_vehicle
        GROUP BY 1
    ), dc AS (
        SELECT time_bucket(p_bucket, e.piece_start) AS bucket, sum(e.kwh) AS kwh,
               sum(e.level_sum) AS temp_sum, sum(e.readings)::bigint AS readings
        FROM telemetry.device_pieces('vehicle', p_vehicle, p_from, p_to, p_bucket >= INTERVAL '1 day') e
        GROUP BY 1
    )
    SELECT bucket, coalesce(ac.kwh, 0), coalesce(dc.kwh, 0),
           CASE WHEN ac.kwh > 0 THEN coalesce(dc.kwh, 0) / ac.kwh END,
           dc.temp_sum / nullif(dc.readings, 0), coalesce(ac.readings, 0), coalesce(dc.readings, 0)
    FROM ac FULL JOIN dc USING (bucket)
    ORDER BY bucket
$$;

-- The fleet over a window: totals over linked vehicles, vehicles per verdict, and the worst
-- chargers by efficiency (vehicles with a computable, plausible efficiency only).
CREATE OR REPLACE FUNCTION telemetry.fleet_summary(
    p_from timestamptz, p_to timestamptz, p_worst integer DEFAULT 10,
    healthy double precision DEFAULT 0.85, degraded double precision DEFAULT 0.75,
    min_ac_kwh double precision DEFAULT 0.1)
RETURNS TABLE (vehicles bigint, linked_vehicles bigint, ac_kwh double precision, dc_kwh double precision,
               loss_kwh double precision, efficiency double precision, unlinked_dc_kwh double precision,
               meter_readings bigint, vehicle_readings bigint, verdicts jsonb, worst jsonb)
LANGUAGE sql STABLE AS $$
    WITH p AS MATERIALIZED (
        SELECT * FROM telemetry.fleet_performance(p_from, p_to, healthy, degraded, min_ac_kwh)
    ), totals AS (
        SELECT count(*) AS vehicles,
               count(*) FILTER (WHERE linked) AS linked_vehicles,
               coalesce(sum(ac_kwh) FILTER (WHERE linked), 0) AS ac,
               coalesce(sum(dc_kwh) FILTER (WHERE linked), 0) AS dc,
               coalesce(sum(dc_kwh) FILTER (WHERE NOT linked), 0) AS unlinked_dc,
               coalesce(sum(meter_readings), 0)::bigint AS meter_n,
               coalesce(sum(vehicle_readings), 0)::bigint AS vehicle_n
        FROM p
    )
    SELECT t.vehicles, t.linked_vehicles, t.ac, t.dc, t.ac - t.dc,
           CASE WHEN t.ac > 0 THEN t.dc / t.ac END, t.unlinked_dc, t.meter_n, t.vehicle_n,
           (SELECT jsonb_object_agg(v.verdict, coalesce(c.n, 0))
            FROM unnest(ARRAY['healthy', 'degraded', 'faulty', 'anomaly', 'insufficient_data']) AS v(verdict)
            LEFT JOIN (SELECT verdict, count(*) AS n FROM p GROUP BY verdict) c USING (verdict)),
           (SELECT coalesce(jsonb_agg(w ORDER BY w.efficiency, w.vehicle_id), '[]'::jsonb) FROM (
                SELECT vehicle_id, meter_id, ac_kwh, dc_kwh, loss_kwh, efficiency, avg_battery_temp,
                       meter_readings, vehicle_readings, verdict
                FROM p WHERE verdict IN ('healthy', 'degraded', 'faulty')
                ORDER BY efficiency, vehicle_id LIMIT p_worst) w)
    FROM totals t
$$;
