-- Raw readings (hypertables), current state per device, vehicle-to-meter links and API keys.

CREATE EXTENSION IF NOT EXISTS btree_gist;

-- A device id as devices send it: 1-64 characters of A-Z a-z 0-9 _ . : -
CREATE DOMAIN telemetry.device_id AS text
    CHECK (VALUE ~ '^[A-Za-z0-9_.:-]{1,64}$');

-- kWh fields are the energy of the interval ending at "time", so they add up over any window.
-- double precision, never real: sums must match the readings to 1e-9 relative.
CREATE TABLE telemetry.meter_readings (
    meter_id        telemetry.device_id NOT NULL,
    time            timestamptz         NOT NULL,
    kwh_consumed_ac double precision    NOT NULL CHECK (kwh_consumed_ac >= 0 AND kwh_consumed_ac < 'Infinity'),
    voltage         double precision    NOT NULL CHECK (voltage >= 0 AND voltage <= 1000),
    PRIMARY KEY (meter_id, time)
);

CREATE TABLE telemetry.vehicle_readings (
    vehicle_id       telemetry.device_id NOT NULL,
    time             timestamptz         NOT NULL,
    soc              double precision    NOT NULL CHECK (soc >= 0 AND soc <= 100),
    kwh_delivered_dc double precision    NOT NULL CHECK (kwh_delivered_dc >= 0 AND kwh_delivered_dc < 'Infinity'),
    battery_temp     double precision    NOT NULL CHECK (battery_temp >= -40 AND battery_temp <= 120),
    PRIMARY KEY (vehicle_id, time)
);

-- 10,000 devices a minute is 14.4 million rows a day per stream (about 1.5 GB with the primary key
-- index): one-day chunks keep the chunk being written, and its index, well inside memory, and make
-- retention drop whole days.
SELECT create_hypertable('telemetry.meter_readings', by_range('time', INTERVAL '1 day'));
SELECT create_hypertable('telemetry.vehicle_readings', by_range('time', INTERVAL '1 day'));

-- Current state: one row per device, rewritten every minute. A low fillfactor leaves room on each
-- page for HOT updates (no index touches the updated columns), and aggressive autovacuum keeps the
-- dead versions from piling up.
CREATE TABLE telemetry.meter_state (
    meter_id        telemetry.device_id PRIMARY KEY,
    time            timestamptz         NOT NULL,
    kwh_consumed_ac double precision    NOT NULL,
    voltage         double precision    NOT NULL,
    received_at     timestamptz         NOT NULL DEFAULT now()
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

CREATE TABLE telemetry.vehicle_state (
    vehicle_id       telemetry.device_id PRIMARY KEY,
    time             timestamptz         NOT NULL,
    soc              double precision    NOT NULL,
    kwh_delivered_dc double precision    NOT NULL,
    battery_temp     double precision    NOT NULL,
    received_at      timestamptz         NOT NULL DEFAULT now()
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

-- Which meter feeds a vehicle's charger, over time: relinking closes the old period, so analytics
-- over past windows keep using the meter that was linked then.
CREATE TABLE telemetry.vehicle_meter_links (
    vehicle_id telemetry.device_id NOT NULL,
    meter_id   telemetry.device_id NOT NULL,
    valid      tstzrange           NOT NULL CHECK (NOT isempty(valid)),
    linked_at  timestamptz         NOT NULL DEFAULT now(),
    EXCLUDE USING gist (vehicle_id WITH =, valid WITH &&)
);
CREATE INDEX vehicle_meter_links_meter_idx ON telemetry.vehicle_meter_links (meter_id);

-- API keys: only a SHA-256 of the secret is stored (keys are 256-bit random, so a fast hash is
-- enough); key_id is the public part of the key, used to find the row.
CREATE TABLE telemetry.api_keys (
    key_id      text        PRIMARY KEY,
    secret_hash bytea       NOT NULL,
    scopes      text[]      NOT NULL CHECK (scopes <@ ARRAY['ingest', 'read', 'admin'] AND cardinality(scopes) > 0),
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
