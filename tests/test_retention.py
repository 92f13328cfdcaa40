"""Retention drops expired raw chunks; the aggregates for those hours survive unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from tests.fix_db import Database, ingest_rows


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
