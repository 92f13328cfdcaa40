"""How soon an accepted reading counts: a late reading is in every answer (ten-minute, hourly, six-hour,
daily) after the refresh runs that are scheduled every 5 minutes (Community), or at once (Apache)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from litestar.testing import TestClient

from tests.fix_api import Keys
from tests.fix_readings import iso

DAY = timedelta(days=1)
# Three whole UTC days, the last ending at today's midnight.
D0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - 3 * DAY
LATE_AT = D0 + DAY + timedelta(hours=12, minutes=5)  # "yesterday", off the 10-minute grid of the history


def _run_jobs_due_within_five_minutes(conn: psycopg.Connection) -> int:
    """What the scheduler runs within 5 minutes of a reading's arrival (the scheduler is off in tests)."""
    jobs = conn.execute(
        """SELECT job_id FROM timescaledb_information.jobs
           WHERE schedule_interval <= INTERVAL '5 minutes'
             AND (hypertable_schema = 'telemetry' OR proc_schema = 'telemetry')
           ORDER BY job_id"""
    ).fetchall()
    for (job,) in jobs:
        conn.execute("CALL run_job(%s)", (job,))
    return len(jobs)


def _materialize_everything(conn: psycopg.Connection) -> None:
    """The steady state: every aggregate level refreshed, finer levels first."""
    jobs = conn.execute(
        """SELECT job_id FROM timescaledb_information.jobs
           WHERE proc_name IN ('policy_refresh_continuous_aggregate', 'refresh_energy_aggregates')
           ORDER BY coalesce(hypertable_name, '') NOT LIKE '%hourly', job_id"""
    ).fetchall()
    for (job,) in jobs:
        conn.execute("CALL run_job(%s)", (job,))


def _send(client: TestClient, key: str, body: list[dict]) -> None:
    for i in range(0, len(body), 2000):
        response = client.post("/v1/telemetry", json=body[i:i + 2000], headers=Keys.header(key))
        assert response.status_code == 200, response.text


def _answers(client: TestClient, key: str) -> dict[str, float]:
    """AC per answer kind: whole days (daily rows), a day of whole six-hour blocks, a day with edges inside
    ten-minute slots, hourly and daily series."""
    headers = Keys.header(key)

    def performance(start: datetime, end: datetime) -> float:
        response = client.get("/v1/analytics/performance/V-1", params={"from": iso(start), "to": iso(end)},
                              headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["acConsumedKwh"]

    def series(bucket: str) -> float:
        response = client.get("/v1/analytics/vehicles/V-1/series",
                              params={"from": iso(D0), "to": iso(D0 + 3 * DAY), "bucket": bucket}, headers=headers)
        assert response.status_code == 200, response.text
        return sum(p["acConsumedKwh"] for p in response.json()["points"])

    fleet = client.get("/v1/analytics/fleet", params={"from": iso(D0), "to": iso(D0 + 3 * DAY)}, headers=headers)
    return {
        "three days": performance(D0, D0 + 3 * DAY),
        "six-hour blocks": performance(D0 + DAY + timedelta(hours=6), D0 + 2 * DAY + timedelta(hours=6)),
        # Edges inside ten-minute slots: the late reading's slot row, less two minutes of raw readings.
        "ten-minute edges": performance(D0 + DAY + timedelta(hours=12, minutes=2),
                                        D0 + 2 * DAY + timedelta(hours=12, minutes=3)),
        "hourly series": series("1h"),
        "daily series": series("1d"),
        "fleet": fleet.json()["acConsumedKwh"],
    }


def test_a_late_reading_counts_in_multi_day_answers_as_soon_as_in_hourly_ones(
        client: TestClient, keys: Keys, conn: psycopg.Connection, edition: str) -> None:
    assert client.put("/v1/vehicles/V-1/meter", json={"meterId": "M-1"},
                      headers=Keys.header(keys.ingest)).status_code == 200
    history = [D0 + timedelta(minutes=10 * i) for i in range(3 * 24 * 6)]
    _send(client, keys.ingest,
          [{"meterId": "M-1", "kwhConsumedAc": 0.5, "voltage": 230, "timestamp": iso(t)} for t in history]
          + [{"vehicleId": "V-1", "soc": 50, "kwhDeliveredDc": 0.45, "batteryTemp": 30, "timestamp": iso(t)}
             for t in history])
    _materialize_everything(conn)
    before = _answers(client, keys.read)
    assert before["three days"] == pytest.approx(0.5 * len(history), rel=1e-12)
    assert before["six-hour blocks"] == pytest.approx(0.5 * 24 * 6, rel=1e-12)
    assert set(before.values()) == {before["three days"], before["six-hour blocks"]}

    _send(client, keys.ingest, [{"meterId": "M-1", "kwhConsumedAc": 5.0, "voltage": 230, "timestamp": iso(LATE_AT)}])
    if edition == "community":
        # Until the refresh runs, the reading is in no materialized row: every answer is as before.
        assert _answers(client, keys.read) == before
        assert _run_jobs_due_within_five_minutes(conn) >= 1
    after = _answers(client, keys.read)
    assert after == {kind: pytest.approx(value + 5.0, rel=1e-12) for kind, value in before.items()}
