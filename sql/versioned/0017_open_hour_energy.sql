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
-- whole hours of every device, and the table holds about two hours. The ingest functions that keep
-- them are in sql/repeatable/20_ingest.sql; readings stored before those have no row (below).

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

-- The hour from which they hold every reading. A database being upgraded (its ingest functions exist)
-- gets no copy of the readings it holds, and until the repeatable files replace those functions a
-- writer may still insert readings without their row, up to 5 minutes ahead of its clock (the
-- ingest's limit): the hours up to the second whole one after the upgrade are read as before until
-- the running sums hold them. A new database keeps them from the start.
CREATE TABLE telemetry.open_hours_kept (
    from_hour timestamptz NOT NULL
);
INSERT INTO telemetry.open_hours_kept
SELECT CASE WHEN to_regprocedure('telemetry.ingest_meter_staging()') IS NOT NULL
            THEN time_bucket(INTERVAL '1 hour', now() + INTERVAL '15 minutes') + INTERVAL '1 hour'
            ELSE '-infinity' END;

-- Writers and readers use them as soon as the repeatable files that follow commit, one by one: the
-- grants of sql/repeatable/90_privileges.sql, applied last, would come too late for those between.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'telemetry_app') THEN
        GRANT SELECT, INSERT, UPDATE ON telemetry.meter_energy_open, telemetry.vehicle_energy_open TO telemetry_app;
        GRANT SELECT ON telemetry.open_hours_kept TO telemetry_app;
    END IF;
END $$;
