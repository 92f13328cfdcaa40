-- Charging-efficiency analytics, exact for any window [from, to).
--
-- A window is written as a signed sum of parts, each read from one level: raw readings, ten-minute,
-- hourly, six-hour and daily rows. Going up one level, each end of the window moves to the nearest
-- boundary of that level, and the stretch between the old and the new end is added where the end moved
-- inwards and subtracted where it moved outwards, read at the finer level:
--
--   W(from, to) = W(from, a) + W(a, A) + ... + W(A, B) + ... + W(B, b) + W(b, to)
--
-- where W(x, y) = -W(y, x). Sums and counts subtract exactly (to floating-point rounding), so an
-- edge anywhere in an hour costs at most five minutes of raw readings and three ten-minute rows per
-- device, and a day that is mostly inside the window is read as the day minus a few hours, never as
-- 24 hourly rows. Every part is whole rows of one level, never wider than an hour in hourly series
-- or a day in daily ones, so grouping the signed parts by hour or day gives exact series. A level is used only where it is materialized (its watermark; the
-- Apache tables always are): past the watermark the finer level carries the window, as real-time
-- aggregation does.
--
-- Cost model: the cuts and the watermarks are computed once per query into plain values
-- (telemetry.window_cuts); the parts are read by one inlinable query (telemetry.energy_pieces)
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
DROP FUNCTION IF EXISTS telemetry.materialized_range(timestamptz, timestamptz, interval, regclass),
                        telemetry.bucket_ceil(interval, timestamptz);
DROP FUNCTION IF EXISTS telemetry.energy_pieces(text, timestamptz, timestamptz, timestamptz, timestamptz, timestamptz,
                                                timestamptz, timestamptz, timestamptz, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS telemetry.energy_totals(text, timestamptz, timestamptz, timestamptz, timestamptz, timestamptz,
                                                timestamptz, timestamptz, timestamptz, timestamptz, timestamptz);

DROP VIEW IF EXISTS telemetry.energy_readings, telemetry.energy_materialized, telemetry.energy_rows;

-- The parts of a window for one stream: per level (1 raw, 2 ten minutes, 3 hours, 4 six-hour
-- blocks, 5 days), a head stretch W(head_from[l], head_to[l]) and a tail stretch W(tail_from[l],
-- tail_to[l]), each empty when its ends are equal.
DROP TYPE IF EXISTS telemetry.window_cut CASCADE;
-- Past the hourly level, the whole hours may instead be read as running sums (plus the rows at
-- run_plus, minus those at run_minus), and whole hours the running sums do not hold yet as the
-- open-hour sums of open_hours (versioned/0017_open_hour_energy.sql).
CREATE TYPE telemetry.window_cut AS (
    head_from timestamptz[], head_to timestamptz[], tail_from timestamptz[], tail_to timestamptz[],
    run_plus timestamptz[], run_minus timestamptz[], open_hours timestamptz[]);

-- How far the ten-minute rows of a stream are materialized: TimescaleDB's watermark is the end of the
-- last slot that held readings, so after a quiet stretch it stays behind what the refresh job has
-- refreshed (versioned/0018_ten_minute_refreshed.sql); the slots before that end were refreshed too,
-- without readings then (one landing there later counts after the next run, as any late one).
DROP FUNCTION IF EXISTS telemetry.ten_minute_mark(regclass[]);
CREATE OR REPLACE FUNCTION telemetry.ten_minute_mark(p_stream text, aggregate regclass) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT greatest(telemetry.aggregate_watermark(aggregate),
                    (SELECT time_bucket(INTERVAL '10 minutes', r.refreshed_to)
                     FROM telemetry.ten_minute_refreshed r WHERE r.stream = p_stream))
$$;

-- The cuts of [p_from, p_to). Going up from level to level, the current ends x <= y move to the
-- nearest boundaries X <= Y of the next level; W(x, X) and W(Y, y) stay at the current level, and
-- the middle W(X, Y) goes on up; the last level used holds the middle as its head. A level is not
-- used when the ends would meet (a short window: climbing would read more than it saves), nor past
-- what it has materialized: Y stays at or before its watermark and the current level's. Hourly
-- series (p_coarse false) stop at hours.
--
-- With p_open (the fleet), a window that starts before the running sums end (built_to) and ends at
-- least an hour after it reads the whole hours from built_to on as open-hour sums, one row per device
-- and hour, and what follows its last whole hour from ten-minute rows and raw readings: the window
-- ending at the hour that has just closed costs the same before the refresh job has built that hour
-- as after. The open-hour sums are read only where they hold every reading (built_to at or past
-- telemetry.open_hours_complete_from()), and not for the per-device paths, which reach their
-- readings through the (device, time) indexes at no such cost.
CREATE OR REPLACE FUNCTION telemetry.window_cuts(
    p_stream text, p_from timestamptz, p_to timestamptz, p_coarse boolean DEFAULT true,
    p_open boolean DEFAULT false)
RETURNS telemetry.window_cut
LANGUAGE plpgsql STABLE AS $$
DECLARE
    widths interval[] := ARRAY[INTERVAL '10 minutes', INTERVAL '1 hour', INTERVAL '6 hours', INTERVAL '1 day'];
    aggregates regclass[] := CASE p_stream
        WHEN 'meter' THEN ARRAY['telemetry.meter_energy_10m', 'telemetry.meter_energy_hourly',
                                'telemetry.meter_energy_6h', 'telemetry.meter_energy_daily']::regclass[]
        ELSE ARRAY['telemetry.vehicle_energy_10m', 'telemetry.vehicle_energy_hourly',
                   'telemetry.vehicle_energy_6h', 'telemetry.vehicle_energy_daily']::regclass[] END;
    none timestamptz[] := array_fill(p_from, ARRAY[5]);
    cut telemetry.window_cut := (none, none, none, none, '{}', '{}', '{}');
    running telemetry.energy_running_range;
    level integer := 1;  -- the level of x and y
    level_mark timestamptz := 'infinity';
    x timestamptz := p_from;
    y timestamptz := p_to;
    mark timestamptz;
    limit_ timestamptz;
    nx timestamptz;
    ny timestamptz;
BEGIN
    IF p_open AND p_coarse THEN
        SELECT * INTO running FROM telemetry.energy_running_range WHERE stream = p_stream;
        y := time_bucket(INTERVAL '1 hour', p_to);
        mark := telemetry.ten_minute_mark(p_stream, aggregates[1]);
        IF p_from <= running.built_to AND y > running.built_to
           AND running.built_to >= telemetry.open_hours_complete_from()
           AND running.built_to <= telemetry.aggregate_watermark(aggregates[2]) THEN
            -- Up to built_to as usual: at its hour boundary, inside both watermarks, nothing of it
            -- is read at the raw and ten-minute levels' tails, which then carry what follows y.
            cut := telemetry.window_cuts(p_stream, p_from, running.built_to, p_coarse);
            IF cut.tail_from[1] = cut.tail_to[1] AND cut.tail_from[2] = cut.tail_to[2] THEN
                cut.open_hours := ARRAY(SELECT generate_series(running.built_to, y - INTERVAL '1 hour',
                                                               INTERVAL '1 hour'));
                mark := greatest(y, least(time_bucket(INTERVAL '10 minutes', p_to), mark));
                cut.tail_from[2] := y;
                cut.tail_to[2] := mark;
                cut.tail_from[1] := mark;
                cut.tail_to[1] := p_to;
                RETURN cut;
            END IF;
            cut := (none, none, none, none, '{}', '{}', '{}');
        END IF;
        y := p_to;
    END IF;
    FOR k IN 1 .. CASE WHEN p_coarse THEN 4 ELSE 2 END LOOP
        IF k = 3 AND level = 3 THEN
            -- The whole hours [x, y) from the running sums, where they are built: each day's last
            -- row from the day of x to the day before y's, the row before y, less the row before x.
            SELECT * INTO running FROM telemetry.energy_running_range WHERE stream = p_stream;
            IF running.built_from <= time_bucket(INTERVAL '1 day', x) AND y <= running.built_to THEN
                cut.run_plus := ARRAY(
                    SELECT d + INTERVAL '23 hours'
                    FROM generate_series(time_bucket(INTERVAL '1 day', x),
                                         time_bucket(INTERVAL '1 day', y) - INTERVAL '1 day', INTERVAL '1 day') d);
                IF y > time_bucket(INTERVAL '1 day', y) THEN
                    cut.run_plus := cut.run_plus || (y - INTERVAL '1 hour');
                END IF;
                IF x > time_bucket(INTERVAL '1 day', x) THEN
                    cut.run_minus := ARRAY[x - INTERVAL '1 hour'];
                END IF;
                RETURN cut;
            END IF;
        END IF;
        nx := time_bucket(widths[k], x + widths[k] / 2);
        ny := time_bucket(widths[k], y + widths[k] / 2);
        EXIT WHEN nx >= ny;
        mark := CASE k WHEN 1 THEN telemetry.ten_minute_mark(p_stream, aggregates[1])
                       ELSE telemetry.aggregate_watermark(aggregates[k]) END;
        limit_ := least(mark, level_mark);
        IF ny > limit_ THEN
            CONTINUE WHEN NOT isfinite(limit_);
            ny := least(time_bucket(widths[k], y), time_bucket(widths[k], limit_));
            CONTINUE WHEN nx >= ny;
        END IF;
        cut.head_from[level] := x;
        cut.head_to[level] := nx;
        cut.tail_from[level] := ny;
        cut.tail_to[level] := y;
        x := nx;
        y := ny;
        level := k + 1;
        level_mark := mark;
    END LOOP;
    cut.head_from[level] := x;
    cut.head_to[level] := y;
    RETURN cut;
END $$;

-- +1 for a stretch W(x, y) read forwards (x < y), -1 for one read backwards: [y, x) is subtracted.
CREATE OR REPLACE FUNCTION telemetry.part_sign(x timestamptz, y timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN y > x THEN 1 ELSE -1 END
$$;

-- Generated from one template, each a single static UNION ALL of the stretches of a window (two per
-- level and stream), inlined into its caller. Each branch reads one relation: the raw readings or
-- the materialized rows of an aggregate (continuous aggregates on Community, tables on Apache),
-- whose columns it names as energy, the sum of the averaged quantity (voltage for meters, battery
-- temperature for vehicles) and the number of readings (1 for a raw reading). The other stream's
-- branches fall away while planning (custom plans) or at their one-time filter (generic plans).
--   telemetry.energy_pieces(stream, cut): every signed part, one raw reading or aggregate row each;
--     a device filter on the result is pushed down into every branch and reaches the (device, time)
--     indexes.
--   telemetry.energy_totals(stream, cut): every device's totals, the fleet-wide path. A raw stretch
--     is summed per device right above its scan, so that one row per device reaches the final sum;
--     aggregate rows (a few per device and stretch) go to the final sum as they are: one hash table
--     instead of one per stretch. Each branch gives its values already signed, as
--     `CASE WHEN part_sign(..) > 0 THEN v ELSE -v END`: under the fleet's custom plan the test is a
--     constant and the CASE folds to `v` or `-v` while planning, so no sign travels with each row to
--     be multiplied in above. Counts sum in integers (a bigint sum is a numeric one). A device
--     whose parts cancel out (all its readings in subtracted stretches) has no row. Device ids come
--     out in the "C" collation: the fleet query sorts and joins 10,000 of them, and byte-wise
--     comparison is cheaper than a linguistic collation's (equality is the same).
DO $do$
DECLARE
    pieces text;
    totals text;
BEGIN
    SELECT string_agg(format($b$
    SELECT x.%1$I::text, x.%2$I, %3$s, x.%4$I, x.%5$I, %6$s
    FROM telemetry.%7$I x
    WHERE %8$s$b$, id, bucket, sign, kwh, level_sum, readings, relation, filter),
                      E'\n    UNION ALL' ORDER BY level, side, stream),
           string_agg(CASE WHEN suffix IS NULL THEN format($b$
        SELECT x.%1$I::text, CASE WHEN %2$s THEN sum(x.%3$I) ELSE -sum(x.%3$I) END,
               CASE WHEN %2$s THEN sum(x.%4$I) ELSE -sum(x.%4$I) END,
               CASE WHEN %2$s THEN count(*)::integer ELSE -count(*)::integer END
        FROM telemetry.%5$I x
        WHERE %6$s
        GROUP BY x.%1$I$b$, id, forward, kwh, level_sum, relation, filter)
                           ELSE format($b$
        SELECT x.%1$I::text, CASE WHEN %2$s THEN x.%3$I ELSE -x.%3$I END,
               CASE WHEN %2$s THEN x.%4$I ELSE -x.%4$I END,
               CASE WHEN %2$s THEN x.readings::integer ELSE -x.readings::integer END
        FROM telemetry.%5$I x
        WHERE %6$s$b$, id, forward, kwh, level_sum, relation, filter) END,
                      E'\n        UNION ALL' ORDER BY level, side, stream)
    INTO pieces, totals
    FROM (
        SELECT l.level, t.side, s.stream, l.suffix, s.stream || '_id' AS id, s.kwh,
               CASE WHEN l.suffix IS NULL THEN 'time' ELSE 'bucket' END AS bucket,
               CASE WHEN l.suffix IS NULL THEN s.level ELSE s.level || '_sum' END AS level_sum,
               CASE WHEN l.suffix IS NULL THEN '1' ELSE 'x.readings::integer' END AS readings,
               CASE WHEN l.suffix IS NULL THEN s.stream || '_readings'
                    ELSE format('%s_energy_%s_materialized', s.stream, l.suffix) END AS relation,
               format('telemetry.part_sign(%s, %s)', t.lo, t.hi) AS sign,
               format('telemetry.part_sign(%s, %s) > 0', t.lo, t.hi) AS forward,
               format('p_stream = %1$L AND %2$s <> %3$s AND x.%4$I >= least(%2$s, %3$s) AND x.%4$I < greatest(%2$s, %3$s)',
                      s.stream, t.lo, t.hi, CASE WHEN l.suffix IS NULL THEN 'time' ELSE 'bucket' END) AS filter
        FROM unnest(ARRAY[NULL, '10m', 'hourly', '6h', 'daily']) WITH ORDINALITY AS l(suffix, level),
             LATERAL (VALUES (1, format('(cut).head_from[%s]', l.level), format('(cut).head_to[%s]', l.level)),
                             (2, format('(cut).tail_from[%s]', l.level), format('(cut).tail_to[%s]', l.level)))
                 AS t(side, lo, hi),
             (VALUES ('meter', 'kwh_consumed_ac', 'voltage'), ('vehicle', 'kwh_delivered_dc', 'battery_temp'))
                 AS s(stream, kwh, level)
    ) stretches;
    -- The running sums: one branch per stream and sign, read at the hours of the cut.
    SELECT pieces || string_agg(format($b$
    UNION ALL
    SELECT x.%1$I::text, time_bucket(INTERVAL '1 day', x.bucket), %2$s, x.%3$I, x.%4$I, x.readings::integer
    FROM telemetry.%5$I x
    WHERE %6$s$b$, id, sign, kwh, level_sum, relation, filter), '' ORDER BY stream, sign DESC),
           totals || string_agg(format($b$
        UNION ALL
        SELECT x.%1$I::text, %2$sx.%3$I, %2$sx.%4$I, %2$sx.readings::integer
        FROM telemetry.%5$I x
        WHERE %6$s$b$, id, CASE WHEN sign > 0 THEN '' ELSE '-' END, kwh, level_sum, relation, filter),
                           '' ORDER BY stream, sign DESC)
    INTO pieces, totals
    FROM (
        SELECT s.stream, s.stream || '_id' AS id, s.kwh, s.level || '_sum' AS level_sum, t.sign,
               s.stream || '_energy_running' AS relation,
               format('p_stream = %1$L AND cardinality(%2$s) > 0 AND x.bucket = ANY (%2$s)', s.stream, t.points) AS filter
        FROM (VALUES ('meter', 'kwh_consumed_ac', 'voltage'), ('vehicle', 'kwh_delivered_dc', 'battery_temp'))
                 AS s(stream, kwh, level),
             (VALUES (1, '(cut).run_plus'), (-1, '(cut).run_minus')) AS t(sign, points)
    ) running;
    -- The open-hour sums: one branch per stream, rows of the hours of the cut, all added.
    SELECT pieces || string_agg(format($b$
    UNION ALL
    SELECT x.%1$I::text, x.bucket, 1, x.%2$I, x.%3$I, x.readings::integer
    FROM telemetry.%4$I x
    WHERE %5$s$b$, id, kwh, level_sum, relation, filter), '' ORDER BY stream),
           totals || string_agg(format($b$
        UNION ALL
        SELECT x.%1$I::text, x.%2$I, x.%3$I, x.readings::integer
        FROM telemetry.%4$I x
        WHERE %5$s$b$, id, kwh, level_sum, relation, filter), '' ORDER BY stream)
    INTO pieces, totals
    FROM (
        SELECT s.stream, s.stream || '_id' AS id, s.kwh, s.level || '_sum' AS level_sum,
               s.stream || '_energy_open' AS relation,
               format('p_stream = %L AND cardinality((cut).open_hours) > 0 AND x.bucket = ANY ((cut).open_hours)',
                      s.stream) AS filter
        FROM (VALUES ('meter', 'kwh_consumed_ac', 'voltage'), ('vehicle', 'kwh_delivered_dc', 'battery_temp'))
                 AS s(stream, kwh, level)
    ) open_;
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION telemetry.energy_pieces(p_stream text, cut telemetry.window_cut)
RETURNS TABLE (device_id text, piece_start timestamptz, sign integer, kwh double precision,
               level_sum double precision, readings integer)
LANGUAGE sql STABLE AS $b$%s
$b$$f$, pieces);
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION telemetry.energy_totals(p_stream text, cut telemetry.window_cut)
RETURNS TABLE (device_id text, kwh double precision, level_sum double precision, readings bigint)
LANGUAGE sql STABLE AS $b$
    SELECT p.device_id COLLATE "C", sum(p.kwh), sum(p.level_sum), sum(p.readings)
    FROM (%s
    ) AS p (device_id, kwh, level_sum, readings)
    GROUP BY 1
    HAVING sum(p.readings) <> 0
$b$$f$, totals);
END $do$;

-- One device's totals over a window: the per-request path of the performance endpoint. One static
-- statement per stream, so that each generic plan holds only that stream's relations. Sums over no
-- reading are 0, also when parts cancel out.
CREATE OR REPLACE FUNCTION telemetry.device_energy(
    p_stream text, p_device text, p_from timestamptz, p_to timestamptz,
    OUT kwh double precision, OUT level_sum double precision, OUT readings bigint)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    w telemetry.window_cut;
BEGIN
    w := telemetry.window_cuts(p_stream, p_from, p_to);
    IF p_stream = 'meter' THEN
        SELECT coalesce(sum(e.sign * e.kwh), 0), coalesce(sum(e.sign * e.level_sum), 0),
               coalesce(sum(e.sign * e.readings), 0)
        INTO kwh, level_sum, readings
        FROM telemetry.energy_pieces('meter', w) e
        WHERE e.device_id = p_device;
    ELSE
        SELECT coalesce(sum(e.sign * e.kwh), 0), coalesce(sum(e.sign * e.level_sum), 0),
               coalesce(sum(e.sign * e.readings), 0)
        INTO kwh, level_sum, readings
        FROM telemetry.energy_pieces('vehicle', w) e
        WHERE e.device_id = p_device;
    END IF;
    IF readings = 0 THEN
        kwh := 0;
        level_sum := 0;
    END IF;
END $$;

-- One device's parts over a window, for series, signed: a subtracted part's values are negative.
CREATE OR REPLACE FUNCTION telemetry.device_pieces(
    p_stream text, p_device text, p_from timestamptz, p_to timestamptz, p_coarse boolean)
RETURNS TABLE (piece_start timestamptz, kwh double precision, level_sum double precision, readings integer)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    w telemetry.window_cut;
BEGIN
    w := telemetry.window_cuts(p_stream, p_from, p_to, p_coarse);
    RETURN QUERY
    SELECT e.piece_start, e.sign * e.kwh, e.sign * e.level_sum, e.sign * e.readings
    FROM telemetry.energy_pieces(p_stream, w) e
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
    m telemetry.window_cut;
    v telemetry.window_cut;
BEGIN
    m := telemetry.window_cuts('meter', p_from, p_to, true, true);
    v := telemetry.window_cuts('vehicle', p_from, p_to, true, true);
    RETURN QUERY
    WITH links AS MATERIALIZED (
        SELECT l.vehicle_id COLLATE "C" AS vehicle_id, l.meter_id COLLATE "C" AS meter_id, l.period_from,
               l.period_to, (l.period_from = p_from AND l.period_to = p_to) AS whole
        FROM telemetry.link_periods(p_from, p_to) l
    ), meter_totals AS (
        SELECT e.device_id, e.kwh, e.readings
        FROM telemetry.energy_totals('meter', m) e
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
        FROM telemetry.energy_totals('vehicle', v) e
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
        HAVING sum(e.readings) <> 0
    ), dc AS (
        SELECT time_bucket(p_bucket, e.piece_start) AS bucket, sum(e.kwh) AS kwh,
               sum(e.level_sum) AS temp_sum, sum(e.readings)::bigint AS readings
        FROM telemetry.device_pieces('vehicle', p_vehicle, p_from, p_to, p_bucket >= INTERVAL '1 day') e
        GROUP BY 1
        HAVING sum(e.readings) <> 0
    )
    SELECT bucket, coalesce(ac.kwh, 0), coalesce(dc.kwh, 0),
           CASE WHEN ac.kwh > 0 THEN coalesce(dc.kwh, 0) / ac.kwh END,
           dc.temp_sum / nullif(dc.readings, 0), coalesce(ac.readings, 0), coalesce(dc.readings, 0)
    FROM ac FULL JOIN dc USING (bucket)
    ORDER BY bucket
$$;

-- The fleet over a window: totals over linked vehicles, vehicles per verdict, and the worst
-- chargers by efficiency (vehicles with a computable, plausible efficiency only), ranked by their
-- efficiency to 9 decimals, then by id: sums read from other levels (before and after a refresh)
-- differ in the last bits, and chargers of equal efficiency keep their order.
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
           (SELECT coalesce(jsonb_agg(w ORDER BY round(w.efficiency * 1e9), w.vehicle_id), '[]'::jsonb) FROM (
                SELECT vehicle_id, meter_id, ac_kwh, dc_kwh, loss_kwh, efficiency, avg_battery_temp,
                       meter_readings, vehicle_readings, verdict
                FROM p WHERE verdict IN ('healthy', 'degraded', 'faulty')
                ORDER BY round(efficiency * 1e9), vehicle_id LIMIT p_worst) w)
    FROM totals t
$$;
