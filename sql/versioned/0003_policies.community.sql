-- Refresh, retention and compression policies (Community edition).
--
-- Refresh windows stay inside the retention of what they read, because a refresh over a range whose
-- raw data is gone would erase aggregate rows. The hourly aggregates refresh the last 30 days, as far
-- back as raw data is kept: retention drops only chunks that end before now - 30 days, so every hour
-- in the window still has its raw data, and a reading that arrives up to 30 days late (the API
-- accepts them until one hour before they expire) is materialized before its chunk is dropped.
-- Refreshes only recompute ranges invalidated by late data, so the long window costs nothing while
-- data arrives in order. The daily aggregates read the hourly ones (kept 2 years) over 35 days.

SELECT add_continuous_aggregate_policy('telemetry.meter_energy_hourly',
    start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '5 minutes');
SELECT add_continuous_aggregate_policy('telemetry.vehicle_energy_hourly',
    start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '5 minutes');
SELECT add_continuous_aggregate_policy('telemetry.meter_energy_daily',
    start_offset => INTERVAL '35 days', end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour');
SELECT add_continuous_aggregate_policy('telemetry.vehicle_energy_daily',
    start_offset => INTERVAL '35 days', end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour');

-- Raw readings: 30 days. Hourly aggregates: 2 years. Daily aggregates: forever.
SELECT add_retention_policy('telemetry.meter_readings', drop_after => INTERVAL '30 days');
SELECT add_retention_policy('telemetry.vehicle_readings', drop_after => INTERVAL '30 days');
SELECT add_retention_policy('telemetry.meter_energy_hourly', drop_after => INTERVAL '2 years');
SELECT add_retention_policy('telemetry.vehicle_energy_hourly', drop_after => INTERVAL '2 years');

-- Raw chunks compress after 2 days, segmented by device so one device's history decompresses alone.
ALTER TABLE telemetry.meter_readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'meter_id',
    timescaledb.compress_orderby = 'time DESC');
ALTER TABLE telemetry.vehicle_readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'vehicle_id',
    timescaledb.compress_orderby = 'time DESC');
SELECT add_compression_policy('telemetry.meter_readings', compress_after => INTERVAL '2 days');
SELECT add_compression_policy('telemetry.vehicle_readings', compress_after => INTERVAL '2 days');
