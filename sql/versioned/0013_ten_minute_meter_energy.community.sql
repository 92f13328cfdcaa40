-- migrate: no-transaction
-- Ten-minute energy per meter, a continuous aggregate on the raw readings, materialized from the
-- readings already stored as it is created (WITH DATA, hence outside a transaction, one statement).
-- A window edge anywhere in an hour then costs at most five minutes of raw readings and a few
-- ten-minute rows per device (telemetry.window_cuts in sql/repeatable/50_analytics.sql), instead of
-- up to an hour of raw readings. Refreshed by telemetry.refresh_energy_aggregates and kept as long as
-- the raw readings (telemetry.retention_targets).
CREATE MATERIALIZED VIEW telemetry.meter_energy_10m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT meter_id,
       time_bucket(INTERVAL '10 minutes', time) AS bucket,
       sum(kwh_consumed_ac)                     AS kwh_consumed_ac,
       sum(voltage)                             AS voltage_sum,
       min(voltage)                             AS voltage_min,
       max(voltage)                             AS voltage_max,
       count(*)                                 AS readings
FROM telemetry.meter_readings
GROUP BY meter_id, time_bucket(INTERVAL '10 minutes', time)
WITH DATA;
