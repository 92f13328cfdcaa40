-- EnergyGrid readings are kept as long as the raw meter and vehicle readings.
SELECT add_retention_policy('telemetry.energygrid_readings', drop_after => INTERVAL '30 days');
