-- Charging-efficiency analytics, exact for any window [from, to).
--
-- A window is cut into pieces: raw readings for the partial hours at its edges, materialized hourly
-- aggregate rows for whole hours (raw readings for whole hours past the aggregate's watermark, as
-- real-time aggregation does), and, when asked, daily rows for whole UTC days. Every piece lies
-- inside one hour or one day, so sums over pieces equal sums over the raw readings, and grouping
-- pieces by hour or day gives exact series. The bounds are immutable expressions of the window, so
-- TimescaleDB excludes every raw chunk outside the edges, and each branch starts with a guard that
-- folds to false when its part of the window is empty, so the planner skips that branch entirely.

CREATE OR REPLACE FUNCTION telemetry.hour_ceil(ts timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN time_bucket(INTERVAL '1 hour', ts) = ts THEN ts
                ELSE time_bucket(INTERVAL '1 hour', ts) + INTERVAL '1 hour' END
$$;

CREATE OR REPLACE FUNCTION telemetry.day_ceil(ts timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN time_bucket(INTERVAL '1 day', ts) = ts THEN ts
                ELSE time_bucket(INTERVAL '1 day', ts) + INTERVAL '1 day' END
$$;

-- Raw head [from, head_end), whole hours [h0, h1) of which whole days [d0, d1), raw tail [tail_start, to).
CREATE OR REPLACE FUNCTION telemetry.head_end(p_from timestamptz, p_to timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT least(telemetry.hour_ceil(p_from), p_to) $$;

CREATE OR REPLACE FUNCTION telemetry.tail_start(p_from timestamptz, p_to timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT greatest(time_bucket(INTERVAL '1 hour', p_to), telemetry.hour_ceil(p_from))
$$;

CREATE OR REPLACE FUNCTION telemetry.days_start(p_from timestamptz, p_to timestamptz, p_use_daily boolean)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_use_daily THEN telemetry.day_ceil(telemetry.hour_ceil(p_from)) ELSE 'infinity' END
$$;

CREATE OR REPLACE FUNCTION telemetry.days_end(p_from timestamptz, p_to timestamptz, p_use_daily boolean)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_use_daily THEN time_bucket(INTERVAL '1 day', time_bucket(INTERVAL '1 hour', p_to))
                ELSE '-infinity' END
$$;

CREATE OR REPLACE FUNCTION telemetry.meter_energy_pieces(
    p_from timestamptz, p_to timestamptz, p_meters text[] DEFAULT NULL, p_use_daily boolean DEFAULT true)
RETURNS TABLE (meter_id text, piece_start timestamptz, kwh double precision,
               voltage_sum double precision, readings bigint)
LANGUAGE sql STABLE AS $$
    WITH watermark AS MATERIALIZED (
        SELECT telemetry.aggregate_watermark('telemetry.meter_energy_hourly') AS hourly,
               telemetry.aggregate_watermark('telemetry.meter_energy_daily') AS daily
    )
    -- raw readings: the partial hours at the edges, and whole hours past the hourly watermark
    SELECT r.meter_id, r.time, r.kwh_consumed_ac, r.voltage, 1::bigint
    FROM telemetry.meter_readings r
    WHERE p_from < telemetry.head_end(p_from, p_to)
      AND r.time >= p_from AND r.time < telemetry.head_end(p_from, p_to)
      AND (p_meters IS NULL OR r.meter_id = ANY (p_meters))
    UNION ALL
    SELECT r.meter_id, r.time, r.kwh_consumed_ac, r.voltage, 1::bigint
    FROM telemetry.meter_readings r
    WHERE telemetry.hour_ceil(p_from) < time_bucket(INTERVAL '1 hour', p_to)
      AND r.time >= greatest(telemetry.hour_ceil(p_from), (SELECT hourly FROM watermark))
      AND r.time < time_bucket(INTERVAL '1 hour', p_to)
      AND NOT (r.time >= telemetry.days_start(p_from, p_to, p_use_daily)
               AND r.time < least(telemetry.days_end(p_from, p_to, p_use_daily), (SELECT daily FROM watermark)))
      AND (p_meters IS NULL OR r.meter_id = ANY (p_meters))
    UNION ALL
    SELECT r.meter_id, r.time, r.kwh_consumed_ac, r.voltage, 1::bigint
    FROM telemetry.meter_readings r
    WHERE telemetry.tail_start(p_from, p_to) < p_to
      AND r.time >= telemetry.tail_start(p_from, p_to) AND r.time < p_to
      AND (p_meters IS NULL OR r.meter_id = ANY (p_meters))
    UNION ALL
    -- materialized whole hours, outside the materialized whole days
    SELECT h.meter_id, h.bucket, h.kwh_consumed_ac, h.voltage_sum, h.readings
    FROM telemetry.meter_energy_hourly_materialized h
    WHERE telemetry.hour_ceil(p_from) < time_bucket(INTERVAL '1 hour', p_to)
      AND h.bucket >= telemetry.hour_ceil(p_from) AND h.bucket < time_bucket(INTERVAL '1 hour', p_to)
      AND h.bucket < (SELECT hourly FROM watermark)
      AND NOT (h.bucket >= telemetry.days_start(p_from, p_to, p_use_daily)
               AND h.bucket < least(telemetry.days_end(p_from, p_to, p_use_daily), (SELECT daily FROM watermark)))
      AND (p_meters IS NULL OR h.meter_id = ANY (p_meters))
    UNION ALL
    -- materialized whole days
    SELECT d.meter_id, d.bucket, d.kwh_consumed_ac, d.voltage_sum, d.readings
    FROM telemetry.meter_energy_daily_materialized d
    WHERE telemetry.days_start(p_from, p_to, p_use_daily) < telemetry.days_end(p_from, p_to, p_use_daily)
      AND d.bucket >= telemetry.days_start(p_from, p_to, p_use_daily)
      AND d.bucket < least(telemetry.days_end(p_from, p_to, p_use_daily), (SELECT daily FROM watermark))
      AND (p_meters IS NULL OR d.meter_id = ANY (p_meters))
$$;

CREATE OR REPLACE FUNCTION telemetry.vehicle_energy_pieces(
    p_from timestamptz, p_to timestamptz, p_vehicles text[] DEFAULT NULL, p_use_daily boolean DEFAULT true)
RETURNS TABLE (vehicle_id text, piece_start timestamptz, kwh double precision,
               battery_temp_sum double precision, readings bigint)
LANGUAGE sql STABLE AS $$
    WITH watermark AS MATERIALIZED (
        SELECT telemetry.aggregate_watermark('telemetry.vehicle_energy_hourly') AS hourly,
               telemetry.aggregate_watermark('telemetry.vehicle_energy_daily') AS daily
    )
    -- raw readings: the partial hours at the edges, and whole hours past the hourly watermark
    SELECT r.vehicle_id, r.time, r.kwh_delivered_dc, r.battery_temp, 1::bigint
    FROM telemetry.vehicle_readings r
    WHERE p_from < telemetry.head_end(p_from, p_to)
      AND r.time >= p_from AND r.time < telemetry.head_end(p_from, p_to)
      AND (p_vehicles IS NULL OR r.vehicle_id = ANY (p_vehicles))
    UNION ALL
    SELECT r.vehicle_id, r.time, r.kwh_delivered_dc, r.battery_temp, 1::bigint
    FROM telemetry.vehicle_readings r
    WHERE telemetry.hour_ceil(p_from) < time_bucket(INTERVAL '1 hour', p_to)
      AND r.time >= greatest(telemetry.hour_ceil(p_from), (SELECT hourly FROM watermark))
      AND r.time < time_bucket(INTERVAL '1 hour', p_to)
      AND NOT (r.time >= telemetry.days_start(p_from, p_to, p_use_daily)
               AND r.time < least(telemetry.days_end(p_from, p_to, p_use_daily), (SELECT daily FROM watermark)))
      AND (p_vehicles IS NULL OR r.vehicle_id = ANY (p_vehicles))
    UNION ALL
    SELECT r.vehicle_id, r.time, r.kwh_delivered_dc, r.battery_temp, 1::bigint
    FROM telemetry.vehicle_readings r
    WHERE telemetry.tail_start(p_from, p_to) < p_to
      AND r.time >= telemetry.tail_start(p_from, p_to) AND r.time < p_to
      AND (p_vehicles IS NULL OR r.vehicle_id = ANY (p_vehicles))
    UNION ALL
    -- materialized whole hours, outside the materialized whole days
    SELECT h.vehicle_id, h.bucket, h.kwh_delivered_dc, h.battery_temp_sum, h.readings
    FROM telemetry.vehicle_energy_hourly_materialized h
    WHERE telemetry.hour_ceil(p_from) < time_bucket(INTERVAL '1 hour', p_to)
      AND h.bucket >= telemetry.hour_ceil(p_from) AND h.bucket < time_bucket(INTERVAL '1 hour', p_to)
      AND h.bucket < (SELECT hourly FROM watermark)
      AND NOT (h.bucket >= telemetry.days_start(p_from, p_to, p_use_daily)
               AND h.bucket < least(telemetry.days_end(p_from, p_to, p_use_daily), (SELECT daily FROM watermark)))
      AND (p_vehicles IS NULL OR h.vehicle_id = ANY (p_vehicles))
    UNION ALL
    -- materialized whole days
    SELECT d.vehicle_id, d.bucket, d.kwh_delivered_dc, d.battery_temp_sum, d.readings
    FROM telemetry.vehicle_energy_daily_materialized d
    WHERE telemetry.days_start(p_from, p_to, p_use_daily) < telemetry.days_end(p_from, p_to, p_use_daily)
      AND d.bucket >= telemetry.days_start(p_from, p_to, p_use_daily)
      AND d.bucket < least(telemetry.days_end(p_from, p_to, p_use_daily), (SELECT daily FROM watermark))
      AND (p_vehicles IS NULL OR d.vehicle_id = ANY (p_vehicles))
$$;

-- The link periods of each vehicle clipped to the window: AC is read from the meter that fed the
-- vehicle's charger at the time.
CREATE OR REPLACE FUNCTION telemetry.link_periods(
    p_from timestamptz, p_to timestamptz, p_vehicles text[] DEFAULT NULL)
RETURNS TABLE (vehicle_id text, meter_id text, period_from timestamptz, period_to timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT l.vehicle_id, l.meter_id, greatest(lower(l.valid), p_from), least(upper(l.valid), p_to)
    FROM telemetry.vehicle_meter_links l
    WHERE l.valid && tstzrange(p_from, p_to)
      AND (p_vehicles IS NULL OR l.vehicle_id = ANY (p_vehicles))
$$;

-- AC pieces per vehicle: the linked meters' pieces over each link period. PL/pgSQL on purpose: the
-- meters are resolved first and passed as a plain value, so the pieces query is inlined and planned
-- with the window bounds as constants (a subquery argument would prevent that, and with it the
-- exclusion of chunks outside the window). Periods covering the whole window (the usual case) are
-- read in one set-based call; only periods cut by a relink are read per period.
CREATE OR REPLACE FUNCTION telemetry.vehicle_ac_pieces(
    p_from timestamptz, p_to timestamptz, p_vehicles text[] DEFAULT NULL, p_use_daily boolean DEFAULT true)
RETURNS TABLE (vehicle_id text, meter_id text, piece_start timestamptz, kwh double precision, readings bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    whole_meters text[];
    has_cut boolean;
BEGIN
    SELECT array_agg(DISTINCT l.meter_id) FILTER (WHERE l.period_from = p_from AND l.period_to = p_to),
           bool_or(NOT (l.period_from = p_from AND l.period_to = p_to))
    INTO whole_meters, has_cut
    FROM telemetry.link_periods(p_from, p_to, p_vehicles) l;

    IF whole_meters IS NOT NULL THEN
        RETURN QUERY
        SELECT p.vehicle_id, p.meter_id, e.piece_start, e.kwh, e.readings
        FROM telemetry.meter_energy_pieces(
                 p_from, p_to, CASE WHEN p_vehicles IS NOT NULL THEN whole_meters END, p_use_daily) e
        JOIN telemetry.link_periods(p_from, p_to, p_vehicles) p
          ON p.meter_id = e.meter_id AND p.period_from = p_from AND p.period_to = p_to;
    END IF;

    IF NOT has_cut THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH cut AS (
        SELECT * FROM telemetry.link_periods(p_from, p_to, p_vehicles) l
        WHERE NOT (l.period_from = p_from AND l.period_to = p_to)
    )
    SELECT p.vehicle_id, p.meter_id, e.piece_start, e.kwh, e.readings
    FROM (SELECT c.period_from, c.period_to, array_agg(DISTINCT c.meter_id) AS meters
          FROM cut c GROUP BY c.period_from, c.period_to) w
    CROSS JOIN LATERAL telemetry.meter_energy_pieces(w.period_from, w.period_to, w.meters, p_use_daily) e
    JOIN cut p ON p.meter_id = e.meter_id AND p.period_from = w.period_from AND p.period_to = w.period_to;
END $$;

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

-- Per-vehicle performance over a window: every vehicle with a link or DC readings in it.
CREATE OR REPLACE FUNCTION telemetry.vehicle_performance(
    p_from timestamptz, p_to timestamptz, p_vehicles text[] DEFAULT NULL,
    healthy double precision DEFAULT 0.85, degraded double precision DEFAULT 0.75,
    min_ac_kwh double precision DEFAULT 0.1)
RETURNS TABLE (vehicle_id text, meter_id text, linked boolean, ac_kwh double precision,
               dc_kwh double precision, loss_kwh double precision, efficiency double precision,
               avg_battery_temp double precision, meter_readings bigint, vehicle_readings bigint,
               verdict text)
LANGUAGE sql STABLE AS $$
    WITH ac AS (
        SELECT vehicle_id, sum(kwh) AS kwh, sum(readings)::bigint AS readings
        FROM telemetry.vehicle_ac_pieces(p_from, p_to, p_vehicles) GROUP BY vehicle_id
    ), latest_link AS (
        SELECT DISTINCT ON (vehicle_id) vehicle_id, meter_id
        FROM telemetry.link_periods(p_from, p_to, p_vehicles)
        ORDER BY vehicle_id, period_to DESC NULLS FIRST
    ), dc AS (
        SELECT vehicle_id, sum(kwh) AS kwh, sum(battery_temp_sum) AS temp_sum, sum(readings)::bigint AS readings
        FROM telemetry.vehicle_energy_pieces(p_from, p_to, p_vehicles) GROUP BY vehicle_id
    ), vehicles AS (
        SELECT vehicle_id FROM latest_link UNION SELECT vehicle_id FROM dc
    )
    SELECT v.vehicle_id, l.meter_id, l.meter_id IS NOT NULL,
           coalesce(ac.kwh, 0), coalesce(dc.kwh, 0), coalesce(ac.kwh, 0) - coalesce(dc.kwh, 0),
           CASE WHEN ac.kwh > 0 THEN coalesce(dc.kwh, 0) / ac.kwh END,
           dc.temp_sum / nullif(dc.readings, 0),
           coalesce(ac.readings, 0), coalesce(dc.readings, 0),
           telemetry.verdict(ac.kwh, dc.kwh, ac.readings, dc.readings, healthy, degraded, min_ac_kwh)
    FROM vehicles v
    LEFT JOIN latest_link l USING (vehicle_id)
    LEFT JOIN ac USING (vehicle_id)
    LEFT JOIN dc USING (vehicle_id)
$$;

-- One vehicle's AC, DC, efficiency and battery temperature per bucket of the window.
CREATE OR REPLACE FUNCTION telemetry.vehicle_series(
    p_vehicle text, p_from timestamptz, p_to timestamptz, p_bucket interval)
RETURNS TABLE (bucket timestamptz, ac_kwh double precision, dc_kwh double precision,
               efficiency double precision, avg_battery_temp double precision,
               meter_readings bigint, vehicle_readings bigint)
LANGUAGE sql STABLE AS $$
    WITH ac AS (
        SELECT time_bucket(p_bucket, piece_start) AS bucket, sum(kwh) AS kwh, sum(readings)::bigint AS readings
        FROM telemetry.vehicle_ac_pieces(p_from, p_to, ARRAY[p_vehicle], p_bucket >= INTERVAL '1 day')
        GROUP BY 1
    ), dc AS (
        SELECT time_bucket(p_bucket, piece_start) AS bucket, sum(kwh) AS kwh,
               sum(battery_temp_sum) AS temp_sum, sum(readings)::bigint AS readings
        FROM telemetry.vehicle_energy_pieces(p_from, p_to, ARRAY[p_vehicle], p_bucket >= INTERVAL '1 day')
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
        SELECT * FROM telemetry.vehicle_performance(p_from, p_to, NULL, healthy, degraded, min_ac_kwh)
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
