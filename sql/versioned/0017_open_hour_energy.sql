-- The hours the running sums do not hold yet, per device (Community; empty on Apache, whose aggregate
-- tables are exact at ingest). For the first minutes after an hour closes, until the refresh job has
-- materialized it and built its running sums, a window ending at that hour read its last hour from
-- ten-minute rows and the last ten minutes of raw readings: 15 rows per device and stream instead of
-- one, three to four times the time of the same window once built. These rows give that hour, and
-- every later one, as one row per device.
--
-- The ingest transaction appends one row per device and hour it wrote readings into (only the
-- readings it inserted, from telemetry.open_hours_from() on), so the rows of an hour hold exactly the
-- readings committed in it, with no lock shared between concurrent writers. The refresh job folds
-- each device's rows of an hour into one and deletes the hours its running sums now hold
-- (telemetry.compact_open_hours, sql/repeatable/35_refresh.community.sql). No index: the fleet reads
-- whole hours of every device, and the table holds about two hours. sql/repeatable/20_ingest.sql
-- fills them from the readings already stored, with the ingest functions that keep them.

CREATE TABLE telemetry.meter_energy_open (
    meter_id        telemetry.device_id NOT NULL,
    bucket          timestamptz         NOT NULL,
    kwh_consumed_ac double precision    NOT NULL,
    voltage_sum     double precision    NOT NULL,
    readings        bigint              NOT NULL
);

CREATE TABLE telemetry.vehicle_energy_open (
    vehicle_id       telemetry.device_id NOT NULL,
    bucket           timestamptz         NOT NULL,
    kwh_delivered_dc double precision    NOT NULL,
    battery_temp_sum double precision    NOT NULL,
    readings         bigint              NOT NULL
);

-- Rewritten every minute: vacuumed by row count, not by a share of a table that stays small.
ALTER TABLE telemetry.meter_energy_open SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000);
ALTER TABLE telemetry.vehicle_energy_open SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000);

-- The hour from which they hold every reading. A database that already holds readings gets no copy
-- of them: until the repeatable files replace the ingest functions, a writer may still insert
-- readings without their row, up to 5 minutes ahead of its clock (the ingest's limit). Their hours
-- are read as before until the running sums hold them, within about two hours.
CREATE TABLE telemetry.open_hours_kept (
    from_hour timestamptz NOT NULL
);
INSERT INTO telemetry.open_hours_kept
SELECT CASE WHEN EXISTS (SELECT FROM telemetry.meter_readings) OR EXISTS (SELECT FROM telemetry.vehicle_readings)
            THEN time_bucket(INTERVAL '1 hour', now() + INTERVAL '15 minutes') + INTERVAL '1 hour'
            ELSE '-infinity' END;
