"""Retention: one row in the database says how long data is kept; ingest, the policies, maintenance and
the refreshes follow it. Expired raw chunks are dropped; the aggregates for those hours survive."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from litestar.testing import TestClient
from psycopg.types.json import Jsonb

from api.ops.maintenance import run_refresh_policies
from api.schema.migrations import migrate
from api.server.app import create_app
from tests.fix_api import Keys, settings_for
from tests.fix_db import SQL_DIR, Database, ingest_rows
from tests.fix_readings import meter, post


def _hourly(conn: psycopg.Connection, meter_id: str) -> list[tuple]:
    return conn.execute(
        "SELECT bucket, kwh_consumed_ac, readings FROM telemetry.meter_energy_hourly WHERE meter_id = %s ORDER BY 1",
        (meter_id,),
    ).fetchall()


def _apply_retention(conn: psycopg.Connection, edition: str) -> None:
    if edition == "community":
        # The scheduler is off in tests (and on PostgreSQL 15.20 it logs every run as failed).
        job = conn.execute(
            """SELECT job_id FROM timescaledb_information.jobs
               WHERE proc_name = 'policy_retention' AND hypertable_name = 'meter_readings'"""
        ).fetchone()[0]
        conn.execute("CALL run_job(%s)", (job,))
    else:
        conn.execute("SELECT * FROM telemetry.run_maintenance()")


def test_retention_drops_old_raw_chunks_but_keeps_their_aggregates(database: Database) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    old_hour = now - timedelta(days=40)
    recent_hour = now - timedelta(days=1)
    rows = [("M-1", old_hour + timedelta(minutes=m), 0.25 + m / 1000, 230.0) for m in range(60)]
    rows += [("M-1", recent_hour + timedelta(minutes=m), 0.5, 231.0) for m in range(60)]

    with database.connect(autocommit=True) as conn:
        ingest_rows(conn, meters=rows)
        if database.edition == "community":
            conn.execute("CALL refresh_continuous_aggregate('telemetry.meter_energy_hourly', %s, %s)",
                         (old_hour - timedelta(days=1), now))
            conn.execute("CALL refresh_continuous_aggregate('telemetry.meter_energy_daily', %s, %s)",
                         (old_hour - timedelta(days=2), now - timedelta(days=1)))
        hourly_before = _hourly(conn, "M-1")
        chunks_before = conn.execute(
            "SELECT count(*) FROM show_chunks('telemetry.meter_readings')").fetchone()[0]
        assert [r[2] for r in hourly_before] == [60, 60]
        assert abs(hourly_before[0][1] - sum(r[2] for r in rows[:60])) < 1e-9

        _apply_retention(conn, database.edition)

        raw = conn.execute(
            "SELECT count(*) FILTER (WHERE time < %s), count(*) FROM telemetry.meter_readings", (now - timedelta(days=30),)
        ).fetchone()
        assert raw == (0, 60)
        chunks_after = conn.execute("SELECT count(*) FROM show_chunks('telemetry.meter_readings')").fetchone()[0]
        assert chunks_after == chunks_before - 1
        assert _hourly(conn, "M-1") == hourly_before
        daily_old = conn.execute(
            "SELECT kwh_consumed_ac, readings FROM telemetry.meter_energy_daily WHERE bucket = %s",
            (old_hour.replace(hour=0),),
        ).fetchone()
        assert daily_old[1] == 60 and abs(daily_old[0] - hourly_before[0][1]) < 1e-9


def _cli(database: Database, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database.app_url, "MIGRATE_DATABASE_URL": database.url}
    return subprocess.run([sys.executable, "-m", "api", *args], env=env, capture_output=True, text=True, timeout=60)


def _raw_policies(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute(
        """SELECT hypertable_name, config ->> 'drop_after' FROM timescaledb_information.jobs
           WHERE proc_name = 'policy_retention' AND hypertable_schema = 'telemetry'"""
    ).fetchall())


def test_retention_is_one_row_that_ingest_and_the_policies_follow(database: Database, keys: Keys) -> None:
    """A reading the API accepts is never dropped before the retention it was accepted under."""
    reading = meter(minutes_ago=45 * 24 * 60)  # 45 days old
    with TestClient(create_app(settings_for(database, retention_cache_s=0))) as client, \
            database.connect(autocommit=True) as conn:
        rejected = post(client, "/v1/telemetry/meters", [reading], keys.ingest)
        assert rejected.status_code == 422 and "older than" in rejected.json()["errors"][0]["reason"]
        if database.edition == "community":
            assert _raw_policies(conn)["meter_readings"] == "30 days"

        changed = _cli(database, "retention", "set", "--raw-days", "60")
        assert changed.returncode == 0, changed.stderr
        assert "raw readings:      60 days" in changed.stdout
        assert conn.execute("SELECT raw_readings FROM telemetry.retention").fetchone()[0] == timedelta(days=60)
        if database.edition == "community":
            policies = _raw_policies(conn)
            assert {policies[t] for t in ("meter_readings", "vehicle_readings", "energygrid_readings")} == {"60 days"}
            assert policies["meter_energy_hourly"] == "2 years"

        accepted = post(client, "/v1/telemetry/meters", [reading], keys.ingest)
        assert accepted.status_code == 200 and accepted.json()["inserted"] == 1
        _apply_retention(conn, database.edition)
        assert conn.execute("SELECT count(*) FROM telemetry.meter_readings").fetchone()[0] == 1
        # The refresh windows follow the row too: the reading reaches its hourly aggregate.
        run_refresh_policies(conn)
        hourly = _hourly(conn, reading["meterId"])
        assert [(readings, round(kwh, 9)) for _, kwh, readings in hourly] == [(1, reading["kwhConsumedAc"])]

        # Back to 30 days: the API refuses the old reading again, and retention drops it.
        assert _cli(database, "retention", "set", "--raw-days", "30").returncode == 0
        assert post(client, "/v1/telemetry/meters", [meter(minutes_ago=45 * 24 * 60 + 1)],
                    keys.ingest).status_code == 422
        _apply_retention(conn, database.edition)
        assert conn.execute("SELECT count(*) FROM telemetry.meter_readings").fetchone()[0] == 0


def test_an_impossible_retention_is_refused_and_changes_nothing(database: Database) -> None:
    refused = _cli(database, "retention", "set", "--raw-days", "800")  # longer than the hourly aggregates
    assert refused.returncode == 2 and "retention not changed" in refused.stderr
    shown = _cli(database, "retention", "show")
    assert shown.returncode == 0 and "raw readings:      30 days" in shown.stdout
    with database.connect() as conn:
        assert conn.execute("SELECT raw_readings FROM telemetry.retention").fetchone()[0] == timedelta(days=30)


def test_a_policy_edited_by_hand_is_put_back_by_the_next_migration(database: Database) -> None:
    if database.edition != "community":
        pytest.skip("the Apache edition has no policies: run_maintenance() reads telemetry.retention itself")
    with database.connect(autocommit=True) as conn:
        job, config = conn.execute(
            """SELECT job_id, config FROM timescaledb_information.jobs
               WHERE proc_name = 'policy_retention' AND hypertable_name = 'vehicle_readings'""").fetchone()
        conn.execute("SELECT alter_job(%s, config => %s)", (job, Jsonb({**config, "drop_after": "3 days"})))
        assert _raw_policies(conn)["vehicle_readings"] == "3 days"
        migrate(database.url, SQL_DIR)
        assert _raw_policies(conn)["vehicle_readings"] == "30 days"


def test_a_reading_accepted_at_the_edge_of_the_raw_retention_reaches_its_hourly_aggregate(
        database: Database, keys: Keys) -> None:
    """With the smallest late margin (5 minutes), a reading 6 minutes inside the raw retention is
    accepted; the refresh then materializes its hour, whatever the minute of the hour it runs at (on
    Apache the ingest writes it)."""
    with TestClient(create_app(settings_for(database, retention_cache_s=0))) as client, \
            database.connect(autocommit=True) as conn:
        conn.execute("SELECT telemetry.set_retention(INTERVAL '2 days', NULL, INTERVAL '5 minutes')")
        reading = {**meter(), "timestamp": (datetime.now(UTC) - timedelta(days=2, minutes=-6)).isoformat()}
        accepted = post(client, "/v1/telemetry/meters", [reading], keys.ingest)
        assert accepted.status_code == 200 and accepted.json()["inserted"] == 1, accepted.text
        run_refresh_policies(conn)
        materialized = conn.execute(
            # Community: the materialized rows themselves (the real-time view would show the raw
            # reading too while nothing is materialized).
            "SELECT bucket, readings, kwh_consumed_ac FROM telemetry.meter_energy_hourly{}"
            " WHERE meter_id = %s".format("_materialized" if database.edition == "community" else ""),
            (reading["meterId"],)).fetchall()
        at = datetime.fromisoformat(reading["timestamp"])
        assert [(b, n, round(kwh, 9)) for b, n, kwh in materialized] == [
            (at.replace(minute=0, second=0, microsecond=0), 1, reading["kwhConsumedAc"])]
