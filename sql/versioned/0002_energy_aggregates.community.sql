-- Hourly energy per device as continuous aggregates with real-time aggregation, and daily ones on
-- top of them (hierarchical). Sums, extremes and counts only, so any window combines exactly.

CREATE MATERIALIZED VIEW telemetry.meter_energy_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT meter_id,
       time_bucket(INTERVAL '1 hour', time) AS bucket,
       sum(kwh_consumed_ac)                 AS kwh_consumed_ac,
       sum(voltage)                         AS voltage_sum,
       min(voltage)                         AS voltage_min,
       max(voltage)                         AS voltage_max,
       count(*)                             AS readings
FROM telemetry.meter_readings
GROUP BY meter_id, time_bucket(INTERVAL '1 hour', time)
WITH NO DATA;

CREATE MATERIALIZED VIEW telemetry.vehicle_energy_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT vehicle_id,
       time_bucket(INTERVAL '1 hour', time) AS bucket,
       sum(kwh_delivered_dc)                AS kwh_delivered_dc,
       sum(battery_temp)                    AS battery_temp_sum,
       min(battery_temp)                    AS battery_temp_min,
       max(battery_temp)                    AS battery_temp_max,
       min(soc)                             AS soc_min,
       max(soc)                             AS soc_max,
       count(*)                             AS readings
FROM telemetry.vehicle_readings
GROUP BY vehicle_id, time_bucket(INTERVAL '1 hour', time)
WITH NO DATA;

CREATE MATERIALIZED VIEW telemetry.meter_energy_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT meter_id,
       time_bucket(INTERVAL '1 day', bucket) AS bucket,
       sum(kwh_consumed_ac)                  AS kwh_consumed_ac,
       sum(voltage_sum)                      AS voltage_sum,
       min(voltage_min)                      AS voltage_min,
       max(voltage_max)                      AS voltage_max,
       sum(readings)::bigint                 AS readings
FROM telemetry.meter_energy_hourly
GROUP BY meter_id, time_bucket(INTERVAL '1 day', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW telemetry.vehicle_energy_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT vehicle_id,
       time_bucket(INTERVAL '1 day', bucket) AS bucket,
       sum(kwh_delivered_dc)                 AS kwh_delivered_dc,
       sum(battery_temp_sum)                 AS battery_temp_sum,
       min(battery_temp_min)                 AS battery_temp_min,
       max(battery_temp_max)                 AS battery_temp_max,
       min(soc_min)                          AS soc_min,
       max(soc_max)                          AS soc_max,
       sum(readings)::bigint                 AS readings
FROM telemetry.vehicle_energy_hourly
GROUP BY vehicle_id, time_bucket(INTERVAL '1 day', bucket)
WITH NO DATA;
