-- The refresh job of the continuous aggregates (registered by 0009_chained_refresh): ten-minute and
-- hourly first (both read the raw readings), then the running sums of the hourly rows, then the
-- six-hour and daily aggregates built on the hourly ones, each committed on its own.
--
-- Windows: a ten-minute slot or an hour is materialized at the first run once it is closed by the
-- job's margin (its config "margin", 2 minutes; the job runs every minute, versioned/0016), as far
-- back as raw readings are kept (telemetry.retention), so a reading accepted late is materialized
-- before its chunk expires. Whatever lies past a level's watermark is read from the finer levels and
-- the raw readings, at once; a reading that lands before it counts after the next run.
-- The coarser levels read the hourly rows 5 days further back than that, inside the hourly
-- retention. Blocks and days are materialized once closed, in the same run as their last hour.

-- Rebuilds the running sums (versioned/0015_running_energy.sql) of hours [p_from, p_to), both whole
-- hours, from the materialized hourly rows, a day at a time: each day starts from the rows at
-- p_from - 1 hour when p_from is not midnight, and every device with a row there or an hourly row
-- in the day gets a row for every hour from its first one to the end of the stretch. Rows are
-- written hour by hour: the fleet reads all rows of an hour, which then share few pages.
CREATE OR REPLACE FUNCTION telemetry.build_energy_running(p_stream text, p_from timestamptz, p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    id text := p_stream || '_id';
    cols text[] := CASE p_stream WHEN 'meter' THEN ARRAY['kwh_consumed_ac', 'voltage_sum']
                                 ELSE ARRAY['kwh_delivered_dc', 'battery_temp_sum'] END;
    s timestamptz := p_from;
    e timestamptz;
    n bigint;
    total bigint := 0;
BEGIN
    WHILE s < p_to LOOP
        e := least(time_bucket(INTERVAL '1 day', s) + INTERVAL '1 day', p_to);
        EXECUTE format('DELETE FROM telemetry.%1$s_energy_running WHERE bucket >= $1 AND bucket < $2', p_stream)
        USING s, e;
        EXECUTE format($q$
            INSERT INTO telemetry.%1$s_energy_running (%2$I, bucket, %3$I, %4$I, readings)
            WITH base AS (
                SELECT %2$I, %3$I, %4$I, readings FROM telemetry.%1$s_energy_running
                WHERE bucket = $1 - INTERVAL '1 hour' AND $1 > time_bucket(INTERVAL '1 day', $1)
            ), hours AS (
                SELECT %2$I, bucket, %3$I, %4$I, readings FROM telemetry.%1$s_energy_hourly_materialized
                WHERE bucket >= $1 AND bucket < $2
            ), firsts AS (
                SELECT %2$I, min(first) AS first
                FROM (SELECT %2$I, bucket AS first FROM hours UNION ALL SELECT %2$I, $1 FROM base) f
                GROUP BY 1
            )
            SELECT f.%2$I, g.hour,
                   coalesce(b.%3$I, 0) + sum(coalesce(h.%3$I, 0)) OVER w,
                   coalesce(b.%4$I, 0) + sum(coalesce(h.%4$I, 0)) OVER w,
                   coalesce(b.readings, 0) + (sum(coalesce(h.readings, 0)) OVER w)::bigint
            FROM firsts f
            CROSS JOIN LATERAL generate_series(f.first, $2 - INTERVAL '1 hour', INTERVAL '1 hour') AS g(hour)
            LEFT JOIN hours h ON h.%2$I = f.%2$I AND h.bucket = g.hour
            LEFT JOIN base b ON b.%2$I = f.%2$I
            WINDOW w AS (PARTITION BY f.%2$I ORDER BY g.hour)
            ORDER BY g.hour, f.%2$I$q$, p_stream, id, cols[1], cols[2])
        USING s, e;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
        s := e;
    END LOOP;
    RETURN total;
END $$;

-- Brings the running sums of a stream up to its hourly watermark: first the days that received
-- readings below built_to (the dirty hours `seen` at the start of the job, whose readings the
-- hourly refresh has materialized since), from their earliest such hour on; then the hours the
-- refresh has added. The first run builds everything the hourly aggregate holds.
CREATE OR REPLACE FUNCTION telemetry.update_energy_running(p_stream text, seen bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    mark timestamptz := telemetry.aggregate_watermark(format('telemetry.%s_energy_hourly', p_stream)::regclass);
    r telemetry.energy_running_range;
    first_hour timestamptz;
    day_ record;
BEGIN
    IF NOT isfinite(mark) THEN
        RETURN;
    END IF;
    SELECT * INTO r FROM telemetry.energy_running_range WHERE stream = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        EXECUTE format('SELECT min(bucket) FROM telemetry.%s_energy_hourly_materialized', p_stream) INTO first_hour;
        first_hour := time_bucket(INTERVAL '1 day', least(first_hour, mark));
        INSERT INTO telemetry.energy_running_range VALUES (p_stream, first_hour, first_hour) RETURNING * INTO r;
    END IF;
    -- Days the retention policy may have dropped are no longer read from here.
    UPDATE telemetry.energy_running_range
    SET built_from = k.kept_from, built_to = greatest(built_to, k.kept_from)
    FROM (SELECT time_bucket(INTERVAL '1 day', now() - hourly_aggregates) + INTERVAL '1 day' AS kept_from
          FROM telemetry.retention) k
    WHERE stream = p_stream AND built_from < k.kept_from;
    SELECT * INTO STRICT r FROM telemetry.energy_running_range WHERE stream = p_stream;
    FOR day_ IN
        SELECT time_bucket(INTERVAL '1 day', d.hour) AS day, min(d.hour) AS hour
        FROM telemetry.energy_running_dirty d
        WHERE d.id = ANY (seen) AND d.stream = p_stream AND d.hour >= r.built_from AND d.hour < r.built_to
        GROUP BY 1
    LOOP
        PERFORM telemetry.build_energy_running(p_stream, day_.hour, least(day_.day + INTERVAL '1 day', r.built_to));
    END LOOP;
    IF mark > r.built_to THEN
        PERFORM telemetry.build_energy_running(p_stream, r.built_to, mark);
        UPDATE telemetry.energy_running_range SET built_to = mark WHERE stream = p_stream;
    END IF;
END $$;

-- Folds each device's open-hour sums (versioned/0017_open_hour_energy.sql) of an hour into one row and
-- drops the hours before telemetry.open_hours_from(), which the running sums hold (in the transaction
-- that moved built_to past them), or which lie more than a day back. Rows that writers commit
-- meanwhile are not visible to the DELETE and stay as they are: each reading is in exactly one row.
CREATE OR REPLACE FUNCTION telemetry.compact_open_hours(p_stream text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    -- Read once, not for every row folded (about 2 million a minute at 100x).
    keep_from constant timestamptz := telemetry.open_hours_from(p_stream);
BEGIN
    EXECUTE format($q$
        WITH gone AS (
            DELETE FROM telemetry.%1$s_energy_open RETURNING *
        )
        INSERT INTO telemetry.%1$s_energy_open
        SELECT %2$I, bucket, sum(%3$I), sum(%4$I), sum(readings)
        FROM gone
        WHERE bucket >= $1
        GROUP BY 1, 2
        ORDER BY 2, 1$q$, p_stream, p_stream || '_id',
        CASE p_stream WHEN 'meter' THEN 'kwh_consumed_ac' ELSE 'kwh_delivered_dc' END,
        CASE p_stream WHEN 'meter' THEN 'voltage_sum' ELSE 'battery_temp_sum' END)
    USING keep_from;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

CREATE OR REPLACE PROCEDURE telemetry.refresh_energy_aggregates(job_id integer DEFAULT NULL, config jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    keep telemetry.retention;
    refreshed_at timestamptz := now();
    margin constant interval := coalesce((config ->> 'margin')::interval, INTERVAL '2 minutes');
    agg regclass;
    seen bigint[];
BEGIN
    SELECT * INTO STRICT keep FROM telemetry.retention;
    -- The dirty hours committed before the hourly refresh: their readings are in it.
    seen := ARRAY(SELECT id FROM telemetry.energy_running_dirty);
    FOREACH agg IN ARRAY ARRAY['telemetry.meter_energy_10m', 'telemetry.vehicle_energy_10m',
                               'telemetry.meter_energy_hourly', 'telemetry.vehicle_energy_hourly']::regclass[] LOOP
        -- From the hour the raw retention reaches into: TimescaleDB rounds a window's start up to
        -- the next bucket, which would leave readings of that hour (accepted up to the raw retention
        -- less the late margin) out of every aggregate for good. Raw chunks are whole days, so that
        -- hour's readings are all still there.
        CALL refresh_continuous_aggregate(agg, time_bucket(INTERVAL '1 hour', refreshed_at - keep.raw_readings),
                                          refreshed_at - margin);
        INSERT INTO telemetry.ten_minute_refreshed AS r (stream, refreshed_to)
        SELECT s.stream, refreshed_at - margin
        FROM (VALUES ('meter', 'telemetry.meter_energy_10m'::regclass),
                     ('vehicle', 'telemetry.vehicle_energy_10m'::regclass)) AS s(stream, aggregate)
        WHERE s.aggregate = agg
        ON CONFLICT (stream) DO UPDATE SET refreshed_to = greatest(r.refreshed_to, excluded.refreshed_to);
        COMMIT;
    END LOOP;
    PERFORM telemetry.update_energy_running('meter', seen);
    PERFORM telemetry.update_energy_running('vehicle', seen);
    PERFORM telemetry.compact_open_hours('meter');
    PERFORM telemetry.compact_open_hours('vehicle');
    DELETE FROM telemetry.energy_running_dirty WHERE id = ANY (seen);
    COMMIT;
    FOREACH agg IN ARRAY ARRAY['telemetry.meter_energy_6h', 'telemetry.vehicle_energy_6h',
                               'telemetry.meter_energy_daily', 'telemetry.vehicle_energy_daily']::regclass[] LOOP
        CALL refresh_continuous_aggregate(agg, refreshed_at - keep.raw_readings - INTERVAL '5 days',
                                          refreshed_at - margin);
        COMMIT;
    END LOOP;
END $$;
