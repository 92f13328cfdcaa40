-- Alert rules and their evaluation (tables in versioned/0011_alerts.sql).
--
-- telemetry.alert_conditions() says which (rule, device) conditions hold at a moment: one branch
-- per rule, each a plain query on what the platform already keeps (the aggregate-backed
-- fleet_performance for the efficiency rules, the current-state tables for the others), so both
-- editions give the same answer. telemetry.evaluate_alerts() reconciles the open alerts with them
-- in one transaction and writes the webhook outbox in the same one.

-- A timestamp as the API's JSON encoder (msgspec) writes it: RFC 3339 in UTC ending in Z, with six
-- fractional digits only when the microseconds are not zero (2026-11-23T10:00:00Z,
-- 2026-11-23T10:00:00.120000Z), so a webhook body and GET /v1/alerts/{id} spell a time the same way.
CREATE OR REPLACE FUNCTION telemetry.rfc3339(ts timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
           || CASE WHEN date_part('microseconds', ts)::bigint % 1000000 = 0 THEN ''
                   ELSE to_char(ts AT TIME ZONE 'UTC', '.US') END
           || 'Z'
$$;

-- The conditions that hold at p_now, one row per (rule, device) with the value that triggers it:
--   faulty_charger     the 'faulty' verdict over [p_now - p_window, p_now) (efficiency below the
--                      degraded threshold with at least min_ac_kwh of AC from the linked meter);
--                      value: the efficiency
--   impossible_energy  the 'anomaly' verdict over the same window (DC above AC); value: the efficiency
--   device_silent      a meter or vehicle whose latest reading is within the day before p_now but
--                      older than p_silence; value: seconds since that reading
--   battery_overheat   a vehicle whose latest reading (vehicle_state), taken within the day before
--                      p_now, is above p_battery_temp: the alert follows the battery's current
--                      temperature and resolves when a cooler reading arrives (or after a day
--                      without readings, when device_silent has long said so); value: the temperature
CREATE OR REPLACE FUNCTION telemetry.alert_conditions(
    p_now timestamptz, p_window interval DEFAULT INTERVAL '6 hours',
    p_silence interval DEFAULT INTERVAL '15 minutes', p_battery_temp double precision DEFAULT 55,
    healthy double precision DEFAULT 0.85, degraded double precision DEFAULT 0.75,
    min_ac_kwh double precision DEFAULT 0.1)
RETURNS TABLE (rule text, device_id text, value double precision)
LANGUAGE sql STABLE AS $$
    WITH performance AS MATERIALIZED (
        SELECT p.vehicle_id, p.efficiency, p.verdict
        FROM telemetry.fleet_performance(p_now - p_window, p_now, healthy, degraded, min_ac_kwh) p
        WHERE p.verdict IN ('faulty', 'anomaly')
    ), latest AS (
        -- A meter and a vehicle sharing an id are one device here: one alert for it, not two.
        SELECT s.device_id, max(s.time) AS time
        FROM (SELECT m.meter_id::text AS device_id, m.time FROM telemetry.meter_state m
              UNION ALL
              SELECT v.vehicle_id::text, v.time FROM telemetry.vehicle_state v) s
        WHERE s.time >= p_now - INTERVAL '1 day'
        GROUP BY s.device_id
    )
    SELECT 'faulty_charger', p.vehicle_id::text, p.efficiency FROM performance p WHERE p.verdict = 'faulty'
    UNION ALL
    SELECT 'impossible_energy', p.vehicle_id::text, p.efficiency FROM performance p WHERE p.verdict = 'anomaly'
    UNION ALL
    SELECT 'device_silent', l.device_id, date_part('epoch', p_now - l.time)
    FROM latest l WHERE l.time < p_now - p_silence
    UNION ALL
    SELECT 'battery_overheat', v.vehicle_id::text, v.battery_temp
    FROM telemetry.vehicle_state v
    WHERE v.battery_temp > p_battery_temp AND v.time >= p_now - INTERVAL '1 day'
$$;

-- An alert as webhook bodies carry it: the fields and spelling of GET /v1/alerts/{id}.
CREATE OR REPLACE FUNCTION telemetry.alert_json(a telemetry.alerts) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', a.id, 'rule', a.rule, 'deviceId', a.device_id, 'state', a.state,
        'openedAt', telemetry.rfc3339(a.opened_at), 'lastSeenAt', telemetry.rfc3339(a.last_seen_at),
        'resolvedAt', telemetry.rfc3339(a.resolved_at), 'value', a.value,
        'acknowledgedAt', telemetry.rfc3339(a.acknowledged_at))
$$;

-- One evaluation at p_now: opens an alert for each condition without an open one (opened_at =
-- last_seen_at = p_now), refreshes last_seen_at and value of those still holding, and resolves the
-- open ones whose condition is gone (acknowledged or not). Each opening and resolution writes one
-- delivery per subscribed webhook (not deleted; rules NULL or naming the rule) into the outbox, in
-- the same transaction. Returns the openings and resolutions; evaluating again at once returns none.
--
-- Evaluations from several processes are serialized by a transaction-level advisory lock: with
-- p_wait (the default: `python -m api alerts evaluate`) a second one waits and then, reading the
-- winner's committed alerts, finds nothing to change; without it (the API's periodic loop, one per
-- worker) a second one returns at once with nothing done. The lock is taken by its own statement
-- so that the statement after it reads a snapshot taken once the lock is held.
CREATE OR REPLACE FUNCTION telemetry.evaluate_alerts(
    p_now timestamptz DEFAULT now(), p_window interval DEFAULT INTERVAL '6 hours',
    p_silence interval DEFAULT INTERVAL '15 minutes', p_battery_temp double precision DEFAULT 55,
    healthy double precision DEFAULT 0.85, degraded double precision DEFAULT 0.75,
    min_ac_kwh double precision DEFAULT 0.1, p_wait boolean DEFAULT true)
RETURNS TABLE (id bigint, rule text, device_id text, event text, value double precision)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    IF p_wait THEN
        PERFORM pg_advisory_xact_lock(x'7E1E3E720003'::bigint);
    ELSIF NOT pg_try_advisory_xact_lock(x'7E1E3E720003'::bigint) THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH conditions AS MATERIALIZED (
        SELECT c.rule, c.device_id, c.value
        FROM telemetry.alert_conditions(p_now, p_window, p_silence, p_battery_temp, healthy, degraded,
                                        min_ac_kwh) c
    ), seen AS (
        UPDATE telemetry.alerts a SET last_seen_at = p_now, value = c.value
        FROM conditions c
        WHERE a.state = 'open' AND a.rule = c.rule AND a.device_id = c.device_id
        RETURNING a.id
    ), opened AS (
        INSERT INTO telemetry.alerts AS a (rule, device_id, opened_at, last_seen_at, value)
        SELECT c.rule, c.device_id, p_now, p_now, c.value
        FROM conditions c
        WHERE NOT EXISTS (SELECT FROM telemetry.alerts o
                          WHERE o.state = 'open' AND o.rule = c.rule AND o.device_id = c.device_id)
        RETURNING a AS alert
    ), resolved AS (
        UPDATE telemetry.alerts a SET state = 'resolved', resolved_at = p_now
        WHERE a.state = 'open'
          AND NOT EXISTS (SELECT FROM conditions c WHERE c.rule = a.rule AND c.device_id = a.device_id)
        RETURNING a AS alert
    ), changes AS (
        SELECT 'alert.opened'::text AS event, o.alert FROM opened o
        UNION ALL
        SELECT 'alert.resolved', r.alert FROM resolved r
    ), outbox AS (
        INSERT INTO telemetry.webhook_deliveries (id, webhook_id, alert_id, event, payload)
        SELECT d.delivery_id, d.webhook_id, (d.alert).id, d.event,
               jsonb_build_object('event', d.event, 'deliveryId', d.delivery_id,
                                  'alert', telemetry.alert_json(d.alert))
        FROM (SELECT gen_random_uuid() AS delivery_id, w.id AS webhook_id, ch.event, ch.alert
              FROM changes ch
              JOIN telemetry.webhooks w
                ON w.deleted_at IS NULL AND (w.rules IS NULL OR (ch.alert).rule = ANY (w.rules))) d
    )
    SELECT (ch.alert).id, (ch.alert).rule, (ch.alert).device_id::text, ch.event, (ch.alert).value
    FROM changes ch
    ORDER BY ch.event DESC, (ch.alert).rule, (ch.alert).device_id;
END $$;
