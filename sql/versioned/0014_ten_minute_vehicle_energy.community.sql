-- migrate: no-transaction
-- Ten-minute energy per vehicle: the vehicle side of 0013_ten_minute_meter_energy (one statement per
-- file outside a transaction).
CREATE MATERIALIZED VIEW telemetry.vehicle_energy_10m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT vehicle_id,
       time_bucket(INTERVAL '10 minutes', time) AS bucket,
       sum(kwh_delivered_dc)                    AS kwh_delivered_dc,
       sum(battery_temp)                        AS battery_temp_sum,
       min(battery_temp)                        AS battery_temp_min,
       max(battery_temp)                        AS battery_temp_max,
       min(soc)                                 AS soc_min,
       max(soc)                                 AS soc_max,
       count(*)                                 AS readings
FROM telemetry.vehicle_readings
GROUP BY vehicle_id, time_bucket(INTERVAL '10 minutes', time)
WITH DATA;
