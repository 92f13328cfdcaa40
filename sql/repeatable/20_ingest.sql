-- The write path: the API COPYs a request's readings into per-session staging tables, then one call
-- per stream moves them into the hypertable. ON CONFLICT DO NOTHING makes a repeated reading a
-- counted duplicate, never a second row; only newly inserted rows reach the current state (newest
-- "time" wins, whatever the arrival order) and, on Apache, the aggregate tables (the batch's
-- ten-minute rows, which telemetry.add_*_energy roll up to the coarser levels), on Community the
-- open-hour sums (one row per device and hour of the batch) and the hours to rebuild.

CREATE OR REPLACE FUNCTION telemetry.prepare_staging() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS meter_staging (
        meter_id text, time timestamptz, kwh_consumed_ac double precision, voltage double precision
    ) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS vehicle_staging (
        vehicle_id text, time timestamptz, soc double precision,
        kwh_delivered_dc double precision, battery_temp double precision
    ) ON COMMIT DELETE ROWS;
END $$;

DROP FUNCTION IF EXISTS telemetry.running_sums_maybe_built_before();  -- its first version took no argument

-- Community: the hours whose running sums the refresh job may have built before the ingest's
-- transaction commits end here; the ingest records those it writes into (telemetry.energy_running_dirty)
-- and the job rebuilds them. Every closed hour, and the current one in its last 10 minutes: now() is
-- the transaction's start, and the job builds an hour 2 minutes after it closes at the earliest, so
-- only a transaction open for more than 12 minutes could miss one.
CREATE OR REPLACE FUNCTION telemetry.running_sums_maybe_built_before(p_now timestamptz DEFAULT now())
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT time_bucket(INTERVAL '1 hour', p_now + INTERVAL '10 minutes')
$$;

-- Community: the first hour whose readings the ingest adds to the open-hour sums
-- (versioned/0017_open_hour_energy.sql): the first one the running sums do not hold, but at most a day
-- back, so that a refresh job that has not run yet (or is paused) leaves them a day of hours to keep.
-- A reader uses them only where built_to is at or past telemetry.open_hours_complete_from(): every
-- reading of an hour from built_to on is then in them, whatever built_to was when it was written (it
-- only grows).
CREATE OR REPLACE FUNCTION telemetry.open_hours_from(p_stream text, p_now timestamptz DEFAULT now())
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT greatest((SELECT r.built_to FROM telemetry.energy_running_range r WHERE r.stream = p_stream),
                    time_bucket(INTERVAL '1 hour', p_now - INTERVAL '1 day'))
$$;

-- The first hour from which the open-hour sums hold every reading: within the day, and not before the
-- ingest began to keep them (telemetry.open_hours_kept). An hour inside the day bound, as a writer
-- whose transaction started up to an hour after the reader's (statements are capped at 30 s) or the
-- job's fold may keep or drop a day back from its own clock.
CREATE OR REPLACE FUNCTION telemetry.open_hours_complete_from(p_now timestamptz DEFAULT now())
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT greatest((SELECT k.from_hour FROM telemetry.open_hours_kept k),
                    time_bucket(INTERVAL '1 hour', p_now - INTERVAL '1 day') + INTERVAL '1 hour')
$$;

CREATE OR REPLACE FUNCTION telemetry.ingest_meter_staging(OUT inserted bigint, OUT duplicates bigint)
LANGUAGE plpgsql AS $$
DECLARE
    staged bigint;
    -- Read once (a function in the filter would run for every reading).
    open_from constant timestamptz := CASE WHEN telemetry.aggregates_maintained_by_ingest() THEN 'infinity'
                                           ELSE telemetry.open_hours_from('meter') END;
BEGIN
    WITH ins AS (
        INSERT INTO telemetry.meter_readings AS r (meter_id, time, kwh_consumed_ac, voltage)
        SELECT meter_id, time, kwh_consumed_ac, voltage
        FROM pg_temp.meter_staging ORDER BY meter_id, time
        ON CONFLICT DO NOTHING
        RETURNING r.meter_id, r.time, r.kwh_consumed_ac, r.voltage
    ), state AS (
        INSERT INTO telemetry.meter_state AS s (meter_id, time, kwh_consumed_ac, voltage)
        SELECT DISTINCT ON (meter_id) meter_id, time, kwh_consumed_ac, voltage
        FROM ins ORDER BY meter_id, time DESC
        ON CONFLICT (meter_id) DO UPDATE SET
            time = excluded.time, kwh_consumed_ac = excluded.kwh_consumed_ac,
            voltage = excluded.voltage, received_at = now()
        WHERE s.time < excluded.time
    ), energy AS (
        SELECT telemetry.add_meter_energy(slots) FROM (
            SELECT array_agg(ROW(meter_id, bucket, kwh, vsum, vmin, vmax, n)::telemetry.meter_energy_hourly
                             ORDER BY meter_id, bucket) AS slots
            FROM (SELECT meter_id, time_bucket(INTERVAL '10 minutes', time) AS bucket, sum(kwh_consumed_ac) AS kwh,
                         sum(voltage) AS vsum, min(voltage) AS vmin, max(voltage) AS vmax, count(*) AS n
                  FROM ins GROUP BY 1, 2) g
        ) h
        WHERE telemetry.aggregates_maintained_by_ingest()
    ), dirty AS (
        INSERT INTO telemetry.energy_running_dirty (stream, hour)
        SELECT DISTINCT 'meter', time_bucket(INTERVAL '1 hour', time) FROM ins
        WHERE time < telemetry.running_sums_maybe_built_before() AND NOT telemetry.aggregates_maintained_by_ingest()
    ), open AS (
        INSERT INTO telemetry.meter_energy_open
        SELECT meter_id, time_bucket(INTERVAL '1 hour', time), sum(kwh_consumed_ac), sum(voltage), count(*)
        FROM ins
        WHERE time >= open_from
        GROUP BY 1, 2
    )
    SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM pg_temp.meter_staging)
    INTO inserted, staged
    FROM (SELECT count(*) FROM energy) e;
    duplicates := staged - inserted;
END $$;

CREATE OR REPLACE FUNCTION telemetry.ingest_vehicle_staging(OUT inserted bigint, OUT duplicates bigint)
LANGUAGE plpgsql AS $$
DECLARE
    staged bigint;
    -- Read once (a function in the filter would run for every reading).
    open_from constant timestamptz := CASE WHEN telemetry.aggregates_maintained_by_ingest() THEN 'infinity'
                                           ELSE telemetry.open_hours_from('vehicle') END;
BEGIN
    WITH ins AS (
        INSERT INTO telemetry.vehicle_readings AS r (vehicle_id, time, soc, kwh_delivered_dc, battery_temp)
        SELECT vehicle_id, time, soc, kwh_delivered_dc, battery_temp
        FROM pg_temp.vehicle_staging ORDER BY vehicle_id, time
        ON CONFLICT DO NOTHING
        RETURNING r.vehicle_id, r.time, r.soc, r.kwh_delivered_dc, r.battery_temp
    ), state AS (
        INSERT INTO telemetry.vehicle_state AS s (vehicle_id, time, soc, kwh_delivered_dc, battery_temp)
        SELECT DISTINCT ON (vehicle_id) vehicle_id, time, soc, kwh_delivered_dc, battery_temp
        FROM ins ORDER BY vehicle_id, time DESC
        ON CONFLICT (vehicle_id) DO UPDATE SET
            time = excluded.time, soc = excluded.soc, kwh_delivered_dc = excluded.kwh_delivered_dc,
            battery_temp = excluded.battery_temp, received_at = now()
        WHERE s.time < excluded.time
    ), energy AS (
        SELECT telemetry.add_vehicle_energy(slots) FROM (
            SELECT array_agg(ROW(vehicle_id, bucket, kwh, tsum, tmin, tmax, smin, smax, n)::telemetry.vehicle_energy_hourly
                             ORDER BY vehicle_id, bucket) AS slots
            FROM (SELECT vehicle_id, time_bucket(INTERVAL '10 minutes', time) AS bucket, sum(kwh_delivered_dc) AS kwh,
                         sum(battery_temp) AS tsum, min(battery_temp) AS tmin, max(battery_temp) AS tmax,
                         min(soc) AS smin, max(soc) AS smax, count(*) AS n
                  FROM ins GROUP BY 1, 2) g
        ) h
        WHERE telemetry.aggregates_maintained_by_ingest()
    ), dirty AS (
        INSERT INTO telemetry.energy_running_dirty (stream, hour)
        SELECT DISTINCT 'vehicle', time_bucket(INTERVAL '1 hour', time) FROM ins
        WHERE time < telemetry.running_sums_maybe_built_before() AND NOT telemetry.aggregates_maintained_by_ingest()
    ), open AS (
        INSERT INTO telemetry.vehicle_energy_open
        SELECT vehicle_id, time_bucket(INTERVAL '1 hour', time), sum(kwh_delivered_dc), sum(battery_temp), count(*)
        FROM ins
        WHERE time >= open_from
        GROUP BY 1, 2
    )
    SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM pg_temp.vehicle_staging)
    INTO inserted, staged
    FROM (SELECT count(*) FROM energy) e;
    duplicates := staged - inserted;
END $$;
