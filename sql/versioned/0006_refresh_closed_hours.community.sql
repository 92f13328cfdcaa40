-- Materialize each hour five minutes after it closes, and each day an hour after it closes, instead
-- of an hour (a day) later: until then every query read the most recent whole hour (day) from the
-- raw readings through real-time aggregation. The start offsets are unchanged, so the refresh
-- windows stay inside the raw (30 days) and hourly (2 years) retention. A reading that arrives
-- after its hour was materialized invalidates that hour, which the next run (within 5 minutes)
-- recomputes.

SELECT remove_continuous_aggregate_policy('telemetry.meter_energy_hourly');
SELECT remove_continuous_aggregate_policy('telemetry.vehicle_energy_hourly');
SELECT remove_continuous_aggregate_policy('telemetry.meter_energy_daily');
SELECT remove_continuous_aggregate_policy('telemetry.vehicle_energy_daily');

SELECT add_continuous_aggregate_policy('telemetry.meter_energy_hourly',
    start_offset => INTERVAL '30 days', end_offset => INTERVAL '5 minutes',
    schedule_interval => INTERVAL '5 minutes');
SELECT add_continuous_aggregate_policy('telemetry.vehicle_energy_hourly',
    start_offset => INTERVAL '30 days', end_offset => INTERVAL '5 minutes',
    schedule_interval => INTERVAL '5 minutes');
SELECT add_continuous_aggregate_policy('telemetry.meter_energy_daily',
    start_offset => INTERVAL '35 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour');
SELECT add_continuous_aggregate_policy('telemetry.vehicle_energy_daily',
    start_offset => INTERVAL '35 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour');
