-- Alerts and webhooks. An alert is one rule's condition holding for one device: opened once, kept
-- open (last_seen_at, value) while the condition holds, resolved when an evaluation finds it gone.
-- Every opening and resolution writes one event per subscribed webhook into webhook_deliveries in
-- the same transaction (an outbox), from which the platform delivers them at least once.

CREATE TABLE telemetry.alert_rules (
    rule        text PRIMARY KEY,
    description text NOT NULL
);
INSERT INTO telemetry.alert_rules (rule, description) VALUES
    ('faulty_charger', 'a linked vehicle''s efficiency over the trailing window is below the faulty threshold'),
    ('impossible_energy', 'DC above AC over the trailing window (the anomaly verdict)'),
    ('device_silent', 'a device that reported within the last day has been silent for the silence limit'),
    ('battery_overheat', 'a vehicle reading above the battery temperature limit');

CREATE TABLE telemetry.alerts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule            text                NOT NULL REFERENCES telemetry.alert_rules,
    device_id       telemetry.device_id NOT NULL,
    state           text                NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
    opened_at       timestamptz         NOT NULL,
    last_seen_at    timestamptz         NOT NULL,
    resolved_at     timestamptz,
    value           double precision,
    acknowledged_at timestamptz,
    acknowledged_by text,
    CHECK ((state = 'resolved') = (resolved_at IS NOT NULL))
);
-- One open alert per (rule, device).
CREATE UNIQUE INDEX alerts_one_open ON telemetry.alerts (rule, device_id) WHERE state = 'open';
-- Newest first, by state, for the listing and its cursor.
CREATE INDEX alerts_newest ON telemetry.alerts (state, id DESC);
CREATE INDEX alerts_device ON telemetry.alerts (device_id, id DESC);

CREATE TABLE telemetry.webhooks (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url        text        NOT NULL CHECK (url ~ '^https?://'),
    rules      text[],     -- NULL: every rule
    -- The signing secret must be at hand to sign each delivery: stored as is, shown once, never listed.
    secret     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);

CREATE TABLE telemetry.webhook_deliveries (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    webhook_id      bigint      NOT NULL REFERENCES telemetry.webhooks,
    alert_id        bigint      NOT NULL REFERENCES telemetry.alerts,
    event           text        NOT NULL CHECK (event IN ('alert.opened', 'alert.resolved')),
    payload         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    given_up_at     timestamptz,
    last_status     integer,
    last_error      text
);
-- What is due: pending deliveries in the order they are due.
CREATE INDEX webhook_deliveries_due ON telemetry.webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
CREATE INDEX webhook_deliveries_by_webhook ON telemetry.webhook_deliveries (webhook_id, created_at DESC);
