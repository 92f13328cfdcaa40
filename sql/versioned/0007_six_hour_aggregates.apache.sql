-- Six-hour energy per device, kept exact by the ingest transaction like the hourly and daily tables:
-- a 24-hour window that is not a whole day reads about 3 six-hour rows and a few hourly ones per
-- device instead of 24 hourly ones.

CREATE TABLE telemetry.meter_energy_6h (LIKE telemetry.meter_energy_hourly INCLUDING ALL);
CREATE TABLE telemetry.vehicle_energy_6h (LIKE telemetry.vehicle_energy_hourly INCLUDING ALL);

-- 10,000 devices x 4 blocks a day: 90-day chunks.
SELECT create_hypertable('telemetry.meter_energy_6h', by_range('bucket', INTERVAL '90 days'));
SELECT create_hypertable('telemetry.vehicle_energy_6h', by_range('bucket', INTERVAL '90 days'));

-- Rows for the readings stored before this migration.
INSERT INTO telemetry.meter_energy_6h
SELECT meter_id, time_bucket(INTERVAL '6 hours', bucket), sum(kwh_consumed_ac), sum(voltage_sum),
       min(voltage_min), max(voltage_max), sum(readings)::bigint
FROM telemetry.meter_energy_hourly GROUP BY 1, 2;
INSERT INTO telemetry.vehicle_energy_6h
SELECT vehicle_id, time_bucket(INTERVAL '6 hours', bucket), sum(kwh_delivered_dc), sum(battery_temp_sum),
       min(battery_temp_min), max(battery_temp_max), min(soc_min), max(soc_max), sum(readings)::bigint
FROM telemetry.vehicle_energy_hourly GROUP BY 1, 2;
