-- Hourly and daily energy per device as plain hypertables with the same names and columns as the
-- Community edition's continuous aggregates. The ingest transaction keeps them exact
-- (telemetry.ingest_*_staging), and telemetry.run_maintenance() applies retention.

CREATE TABLE telemetry.meter_energy_hourly (
    meter_id        telemetry.device_id NOT NULL,
    bucket          timestamptz         NOT NULL,
    kwh_consumed_ac double precision    NOT NULL,
    voltage_sum     double precision    NOT NULL,
    voltage_min     double precision    NOT NULL,
    voltage_max     double precision    NOT NULL,
    readings        bigint              NOT NULL,
    PRIMARY KEY (meter_id, bucket)
);

CREATE TABLE telemetry.vehicle_energy_hourly (
    vehicle_id       telemetry.device_id NOT NULL,
    bucket           timestamptz         NOT NULL,
    kwh_delivered_dc double precision    NOT NULL,
    battery_temp_sum double precision    NOT NULL,
    battery_temp_min double precision    NOT NULL,
    battery_temp_max double precision    NOT NULL,
    soc_min          double precision    NOT NULL,
    soc_max          double precision    NOT NULL,
    readings         bigint              NOT NULL,
    PRIMARY KEY (vehicle_id, bucket)
);

CREATE TABLE telemetry.meter_energy_daily (LIKE telemetry.meter_energy_hourly INCLUDING ALL);
CREATE TABLE telemetry.vehicle_energy_daily (LIKE telemetry.vehicle_energy_hourly INCLUDING ALL);

-- 10,000 devices x 24 buckets a day: 30-day chunks for the hourly tables, a year for the daily ones.
SELECT create_hypertable('telemetry.meter_energy_hourly', by_range('bucket', INTERVAL '30 days'));
SELECT create_hypertable('telemetry.vehicle_energy_hourly', by_range('bucket', INTERVAL '30 days'));
SELECT create_hypertable('telemetry.meter_energy_daily', by_range('bucket', INTERVAL '365 days'));
SELECT create_hypertable('telemetry.vehicle_energy_daily', by_range('bucket', INTERVAL '365 days'));
