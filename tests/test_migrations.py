"""The migration runner and the schema it builds, on every edition the machine can run."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from api.ops.maintenance import refresh_jobs
from api.schema.migrations import MigrationError, check, migrate
from tests.fix_db import SQL_DIR, Database

AGGREGATE_COLUMNS = {
    "meter_energy_10m": ["meter_id", "bucket", "kwh_consumed_ac", "voltage_sum", "voltage_min",
                         "voltage_max", "readings"],
    "meter_energy_hourly": ["meter_id", "bucket", "kwh_consumed_ac", "voltage_sum", "voltage_min",
                            "voltage_max", "readings"],
    "meter_energy_6h": ["meter_id", "bucket", "kwh_consumed_ac", "voltage_sum", "voltage_min",
                        "voltage_max", "readings"],
    "meter_energy_daily": ["meter_id", "bucket", "kwh_consumed_ac", "voltage_sum", "voltage_min",
                           "voltage_max", "readings"],
    "vehicle_energy_10m": ["vehicle_id", "bucket", "kwh_delivered_dc", "battery_temp_sum", "battery_temp_min",
                           "battery_temp_max", "soc_min", "soc_max", "readings"],
    "vehicle_energy_hourly": ["vehicle_id", "bucket", "kwh_delivered_dc", "battery_temp_sum", "battery_temp_min",
                              "battery_temp_max", "soc_min", "soc_max", "readings"],
    "vehicle_energy_6h": ["vehicle_id", "bucket", "kwh_delivered_dc", "battery_temp_sum", "battery_temp_min",
                          "battery_temp_max", "soc_min", "soc_max", "readings"],
    "vehicle_energy_daily": ["vehicle_id", "bucket", "kwh_delivered_dc", "battery_temp_sum", "battery_temp_min",
                             "battery_temp_max", "soc_min", "soc_max", "readings"],
}


def _schema_snapshot(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        """
        SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE n.nspname = 'telemetry'
        ORDER BY 1, 3
        """
    ).fetchall()


def test_migrations_build_the_schema_from_an_empty_database(empty_database: Database) -> None:
    report = migrate(empty_database.url, SQL_DIR)

    assert report.edition == empty_database.edition
    assert report.applied == (
        ("0001_readings.sql", "0002_energy_aggregates.community.sql", "0003_policies.community.sql",
         "0004_energygrid.sql", "0005_energygrid_policies.community.sql",
         "0006_refresh_closed_hours.community.sql", "0007_six_hour_aggregates.community.sql",
         "0008_retention_settings.sql", "0009_chained_refresh.community.sql", "0010_one_vehicle_per_meter.sql",
         "0011_alerts.sql", "0012_broker_credentials.sql", "0013_ten_minute_meter_energy.community.sql",
         "0014_ten_minute_vehicle_energy.community.sql", "0015_running_energy.sql",
         "0016_refresh_every_minute.community.sql", "0017_open_hour_energy.sql",
         "0018_ten_minute_refreshed.sql")
        if empty_database.edition == "community"
        else ("0001_readings.sql", "0002_energy_aggregates.apache.sql", "0004_energygrid.sql",
              "0007_six_hour_aggregates.apache.sql", "0008_retention_settings.sql",
              "0010_one_vehicle_per_meter.sql", "0011_alerts.sql", "0012_broker_credentials.sql",
              "0013_ten_minute_energy.apache.sql", "0015_running_energy.sql", "0017_open_hour_energy.sql",
              "0018_ten_minute_refreshed.sql")
    )
    with empty_database.connect() as conn:
        ledger = conn.execute("SELECT version, name, edition FROM telemetry.schema_migrations ORDER BY 1").fetchall()
        assert [row[1] for row in ledger] == list(report.applied)
        assert {row[2] for row in ledger} == {empty_database.edition}
        assert check(conn, SQL_DIR) == []


def test_a_second_run_changes_nothing(empty_database: Database) -> None:
    migrate(empty_database.url, SQL_DIR)
    with empty_database.connect() as conn:
        schema_before = _schema_snapshot(conn)
        ledger_before = conn.execute("SELECT * FROM telemetry.schema_migrations ORDER BY version").fetchall()
        jobs_before = conn.execute("SELECT count(*) FROM _timescaledb_config.bgw_job").fetchone()[0]

    report = migrate(empty_database.url, SQL_DIR)

    assert report.applied == ()
    with empty_database.connect() as conn:
        assert _schema_snapshot(conn) == schema_before
        assert conn.execute("SELECT * FROM telemetry.schema_migrations ORDER BY version").fetchall() == ledger_before
        assert conn.execute("SELECT count(*) FROM _timescaledb_config.bgw_job").fetchone()[0] == jobs_before


def test_an_edited_applied_file_is_refused(empty_database: Database, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    migrate(empty_database.url, sql_dir)
    edited = sql_dir / "versioned" / "0001_readings.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")

    with pytest.raises(MigrationError, match=r"0001_readings\.sql was edited after it was applied"):
        migrate(empty_database.url, sql_dir)
    with empty_database.connect() as conn:
        assert any("0001_readings.sql was edited" in p for p in check(conn, sql_dir))


def test_a_new_numbered_file_is_applied_once(empty_database: Database, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    migrate(empty_database.url, sql_dir)
    (sql_dir / "versioned" / "0900_extra.sql").write_text("CREATE TABLE telemetry.extra (id int);")

    assert migrate(empty_database.url, sql_dir).applied == ("0900_extra.sql",)
    assert migrate(empty_database.url, sql_dir).applied == ()
    with empty_database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM telemetry.schema_migrations WHERE name = '0900_extra.sql'"
                            ).fetchone()[0] == 1


def test_a_failing_file_leaves_no_trace(empty_database: Database, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    migrate(empty_database.url, sql_dir)
    (sql_dir / "versioned" / "0900_broken.sql").write_text(
        "CREATE TABLE telemetry.half_done (id int);\nSELECT no_such_function();"
    )

    with pytest.raises(MigrationError, match="0900_broken.sql"):
        migrate(empty_database.url, sql_dir)
    with empty_database.connect() as conn:
        assert conn.execute("SELECT to_regclass('telemetry.half_done')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM telemetry.schema_migrations WHERE version = 900").fetchone()[0] == 0


def test_a_no_transaction_file_runs_outside_a_transaction(empty_database: Database, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction block.
    (sql_dir / "versioned" / "0900_concurrent_index.sql").write_text(
        "-- migrate: no-transaction\n"
        "CREATE INDEX CONCURRENTLY meter_state_time_idx ON telemetry.meter_state (time)"
    )

    assert "0900_concurrent_index.sql" in migrate(empty_database.url, sql_dir).applied
    with empty_database.connect() as conn:
        assert conn.execute("SELECT to_regclass('telemetry.meter_state_time_idx')").fetchone()[0] is not None


def test_concurrent_runners_do_not_interleave(empty_database: Database) -> None:
    errors: list[BaseException] = []
    reports = []

    def run() -> None:
        try:
            reports.append(migrate(empty_database.url, SQL_DIR))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    applied = [name for report in reports for name in report.applied]
    assert len(applied) == len(set(applied)) and "0001_readings.sql" in applied
    with empty_database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM telemetry.schema_migrations").fetchone()[0] == len(applied)


def test_a_database_migrated_for_another_edition_is_refused(database: Database) -> None:
    other = "apache" if database.edition == "community" else "community"
    with database.connect() as conn:
        conn.execute("UPDATE telemetry.schema_migrations SET edition = %s", (other,))
    with pytest.raises(MigrationError, match=f"applied for the {other} edition"):
        migrate(database.url, SQL_DIR)


def test_readings_are_hypertables_keyed_by_device_and_time(conn: psycopg.Connection) -> None:
    hypertables = dict(conn.execute(
        """SELECT h.hypertable_name, d.time_interval FROM timescaledb_information.hypertables h
           JOIN timescaledb_information.dimensions d USING (hypertable_schema, hypertable_name)
           WHERE h.hypertable_schema = 'telemetry'"""
    ).fetchall())
    assert str(hypertables["meter_readings"]) == "1 day, 0:00:00"
    assert str(hypertables["vehicle_readings"]) == "1 day, 0:00:00"
    for table, device in (("meter_readings", "meter_id"), ("vehicle_readings", "vehicle_id")):
        key = conn.execute(
            """SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_constraint c
               CROSS JOIN unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
               WHERE c.conrelid = %s::regclass AND c.contype = 'p'""",
            (f"telemetry.{table}",),
        ).fetchone()[0]
        assert key == [device, "time"]


def test_energy_columns_are_double_precision(conn: psycopg.Connection) -> None:
    types = dict(conn.execute(
        """SELECT table_name || '.' || column_name, data_type FROM information_schema.columns
           WHERE table_schema = 'telemetry' AND column_name LIKE 'kwh%'"""
    ).fetchall())
    assert len(types) >= 8
    assert set(types.values()) == {"double precision"}


def test_current_state_tables_leave_room_for_hot_updates(conn: psycopg.Connection) -> None:
    for table in ("meter_state", "vehicle_state"):
        options = conn.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass",
                               (f"telemetry.{table}",)).fetchone()[0]
        assert "fillfactor=50" in options


def test_aggregates_have_the_same_columns_on_every_edition(conn: psycopg.Connection, edition: str) -> None:
    for relation, columns in AGGREGATE_COLUMNS.items():
        found = [row[0] for row in conn.execute(
            """SELECT column_name FROM information_schema.columns
               WHERE table_schema = 'telemetry' AND table_name = %s ORDER BY ordinal_position""",
            (relation,),
        )]
        assert found == columns, relation
    caggs = {row[0] for row in conn.execute(
        "SELECT view_name FROM timescaledb_information.continuous_aggregates WHERE view_schema = 'telemetry'"
    )}
    if edition == "community":
        assert caggs == set(AGGREGATE_COLUMNS)
        realtime = conn.execute(
            "SELECT bool_and(NOT materialized_only) FROM timescaledb_information.continuous_aggregates"
        ).fetchone()[0]
        assert realtime is True
    else:
        assert caggs == set()
        hypertables = {row[0] for row in conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables WHERE hypertable_schema = 'telemetry'"
        )}
        assert set(AGGREGATE_COLUMNS) <= hypertables


def test_policies_match_the_edition(conn: psycopg.Connection, edition: str) -> None:
    jobs = conn.execute(
        """SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs
           WHERE hypertable_schema IS NOT NULL ORDER BY 1, 2"""
    ).fetchall()
    if edition == "apache":
        # No policies on Apache: telemetry.run_maintenance() applies retention instead.
        assert jobs == []
        return
    by_kind: dict[str, dict[str, dict]] = {}
    for proc, relation, config in jobs:
        by_kind.setdefault(proc, {})[relation] = config
    # One refresh job for every aggregate, in dependency order (0009), not a policy per aggregate.
    assert "policy_refresh_continuous_aggregate" not in by_kind
    assert [(str(job["schedule_interval"]), job["config"]) for job in refresh_jobs(conn)] == [
        ("0:01:00", {"margin": "2 minutes"})]
    assert by_kind["policy_retention"]["meter_readings"]["drop_after"] == "30 days"
    assert by_kind["policy_retention"]["vehicle_readings"]["drop_after"] == "30 days"
    assert by_kind["policy_retention"]["vehicle_energy_10m"]["drop_after"] == "30 days"
    assert by_kind["policy_retention"]["meter_energy_hourly"]["drop_after"] == "2 years"
    assert by_kind["policy_retention"]["vehicle_energy_6h"]["drop_after"] == "2 years"
    assert "meter_energy_daily" not in by_kind["policy_retention"]
    assert by_kind["policy_compression"]["meter_readings"]["compress_after"] == "2 days"
