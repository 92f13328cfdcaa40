-- Readings pulled from EnergyGrid vendor clouds. A reading is identified by (serial, last_updated):
-- polling again before the device reports anew stores nothing twice.

CREATE TABLE telemetry.energygrid_readings (
    serial       telemetry.device_id NOT NULL,
    last_updated timestamptz         NOT NULL,
    power_kw     double precision    NOT NULL CHECK (power_kw >= 0 AND power_kw < 'Infinity'),
    online       boolean             NOT NULL,
    fetched_at   timestamptz         NOT NULL DEFAULT now(),
    PRIMARY KEY (serial, last_updated)
);
-- 500 devices polled every minute or so: 720,000 rows a day at most; weekly chunks.
SELECT create_hypertable('telemetry.energygrid_readings', by_range('last_updated', INTERVAL '7 days'));
