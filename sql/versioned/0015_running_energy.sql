-- Running sums of the hourly energy within each UTC day: the row of a device at hour h holds the sums
-- of its hourly rows from midnight through h (energy, the averaged quantity's sum, readings). A
-- window of whole hours [a, b) is then the sum of each day's last row between them, plus the row at
-- b - 1 hour, minus the row at a - 1 hour: at most three rows per device for any 24 hours, instead
-- of up to nine hourly, six-hour and daily ones (telemetry.window_cuts, sql/repeatable/50_analytics.sql).
--
-- Rows are dense from a device's first hour of a day on: an hour without readings repeats the sums
-- before it, so a missing row always means zero. Built from the materialized hourly rows by the
-- refresh job after it refreshes them (sql/repeatable/35_refresh.community.sql); the Apache edition
-- does not build them and reads its hourly, six-hour and daily tables instead. Kept as long as the
-- hourly rows (telemetry.retention_targets).

CREATE TABLE telemetry.meter_energy_running (
    meter_id        telemetry.device_id NOT NULL,
    bucket          timestamptz         NOT NULL,
    kwh_consumed_ac double precision    NOT NULL,
    voltage_sum     double precision    NOT NULL,
    readings        bigint              NOT NULL,
    PRIMARY KEY (meter_id, bucket)
);

CREATE TABLE telemetry.vehicle_energy_running (
    vehicle_id       telemetry.device_id NOT NULL,
    bucket           timestamptz         NOT NULL,
    kwh_delivered_dc double precision    NOT NULL,
    battery_temp_sum double precision    NOT NULL,
    readings         bigint              NOT NULL,
    PRIMARY KEY (vehicle_id, bucket)
);

-- Whole days per chunk, so that retention drops a day's rows all together.
SELECT create_hypertable('telemetry.meter_energy_running', by_range('bucket', INTERVAL '7 days'));
SELECT create_hypertable('telemetry.vehicle_energy_running', by_range('bucket', INTERVAL '7 days'));

-- Per stream, the hours [built_from, built_to) whose running rows are complete; no row: none are,
-- and the analytics read the other levels.
CREATE TABLE telemetry.energy_running_range (
    stream     text        PRIMARY KEY CHECK (stream IN ('meter', 'vehicle')),
    built_from timestamptz NOT NULL,
    built_to   timestamptz NOT NULL CHECK (built_to >= built_from)
);

-- Hours that received readings after their running rows may have been built: written by the ingest
-- transaction for every hour before the current one (a reading of the current hour is always past
-- built_to), read and cleared by the refresh job, which rebuilds the rest of those days.
CREATE TABLE telemetry.energy_running_dirty (
    id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream text        NOT NULL CHECK (stream IN ('meter', 'vehicle')),
    hour   timestamptz NOT NULL
);
