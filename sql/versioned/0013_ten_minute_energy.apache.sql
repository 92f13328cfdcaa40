-- Ten-minute energy per device, kept exact by the ingest transaction like the hourly tables. A window
-- edge anywhere in an hour then costs at most five minutes of raw readings and a few ten-minute rows
-- per device (telemetry.window_cuts in sql/repeatable/50_analytics.sql), instead of up to an hour of
-- raw readings. Kept as long as the raw readings they summarize.

CREATE TABLE telemetry.meter_energy_10m (LIKE telemetry.meter_energy_hourly INCLUDING ALL);
CREATE TABLE telemetry.vehicle_energy_10m (LIKE telemetry.vehicle_energy_hourly INCLUDING ALL);

-- 10,000 devices x 144 slots a day: one-day chunks, like the raw readings, so retention drops days.
SELECT create_hypertable('telemetry.meter_energy_10m', by_range('bucket', INTERVAL '1 day'));
SELECT create_hypertable('telemetry.vehicle_energy_10m', by_range('bucket', INTERVAL '1 day'));

-- Rows for the readings stored before this migration.
INSERT INTO telemetry.meter_energy_10m
SELECT meter_id, time_bucket(INTERVAL '10 minutes', time), sum(kwh_consumed_ac), sum(voltage), min(voltage),
       max(voltage), count(*)
FROM telemetry.meter_readings GROUP BY 1, 2;
INSERT INTO telemetry.vehicle_energy_10m
SELECT vehicle_id, time_bucket(INTERVAL '10 minutes', time), sum(kwh_delivered_dc), sum(battery_temp),
       min(battery_temp), max(battery_temp), min(soc), max(soc), count(*)
FROM telemetry.vehicle_readings GROUP BY 1, 2;
