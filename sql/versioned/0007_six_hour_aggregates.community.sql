-- Six-hour energy per device, on top of the hourly aggregates (hierarchical), for windows that are
-- not whole days: a 24-hour window reads about 3 six-hour rows and a few hourly ones per device
-- instead of 24 hourly ones. Same columns as the hourly aggregates, so any window still combines
-- exactly.

CREATE MATERIALIZED VIEW telemetry.meter_energy_6h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT meter_id,
       time_bucket(INTERVAL '6 hours', bucket) AS bucket,
       sum(kwh_consumed_ac)                    AS kwh_consumed_ac,
       sum(voltage_sum)                        AS voltage_sum,
       min(voltage_min)                        AS voltage_min,
       max(voltage_max)                        AS voltage_max,
       sum(readings)::bigint                   AS readings
FROM telemetry.meter_energy_hourly
GROUP BY meter_id, time_bucket(INTERVAL '6 hours', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW telemetry.vehicle_energy_6h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT vehicle_id,
       time_bucket(INTERVAL '6 hours', bucket) AS bucket,
       sum(kwh_delivered_dc)                   AS kwh_delivered_dc,
       sum(battery_temp_sum)                   AS battery_temp_sum,
       min(battery_temp_min)                   AS battery_temp_min,
       max(battery_temp_max)                   AS battery_temp_max,
       min(soc_min)                            AS soc_min,
       max(soc_max)                            AS soc_max,
       sum(readings)::bigint                   AS readings
FROM telemetry.vehicle_energy_hourly
GROUP BY vehicle_id, time_bucket(INTERVAL '6 hours', bucket)
WITH NO DATA;

-- Each block is materialized 15 minutes after it closes (its last hour is materialized after 5),
-- over the same 35 days as the daily aggregates, inside the hourly retention (2 years), which the
-- six-hour rows share.
SELECT add_continuous_aggregate_policy('telemetry.meter_energy_6h',
    start_offset => INTERVAL '35 days', end_offset => INTERVAL '15 minutes',
    schedule_interval => INTERVAL '15 minutes');
SELECT add_continuous_aggregate_policy('telemetry.vehicle_energy_6h',
    start_offset => INTERVAL '35 days', end_offset => INTERVAL '15 minutes',
    schedule_interval => INTERVAL '15 minutes');
SELECT add_retention_policy('telemetry.meter_energy_6h', drop_after => INTERVAL '2 years');
SELECT add_retention_policy('telemetry.vehicle_energy_6h', drop_after => INTERVAL '2 years');
