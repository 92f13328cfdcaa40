"""The hours the running sums do not hold yet (Community): the ingest appends their sums per device and
hour, the fleet reads whole hours from them before the refresh job has built them, exact against the
raw readings, and the job folds them into one row per device and hour without losing or counting
twice a reading committed while it does. Apache keeps its aggregate tables exact at ingest and
writes none."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from litestar.testing import TestClient

from api.ops.maintenance import refresh_jobs, run_refresh_policies
from api.schema.migrations import migrate
from tests.fix_api import Keys
from tests.fix_db import SQL_DIR, ingest_rows
from tests.fix_readings import iso
from tests.fix_reference import LinkPeriod, MeterRow, Store, VehicleRow, dedupe
from tests.test_analytics import check_fleet, send

HOUR = timedelta(hours=1)
# The refresh job's margin in these tests: it builds the running sums to the hour 3 hours back, as it
# would after a pause, so that the hours after it are closed and still open-hour sums.
MARGIN = "3 hours"


@dataclass
class Lagging:
    store: Store
    now: datetime  # when the readings were sent
    hour: datetime  # the current hour then
    start: datetime  # six hours before it: the history's first hour


def _history(rng: random.Random, start: datetime, now: datetime) -> Store:
    span = int((now - timedelta(seconds=30) - start).total_seconds())

    def at() -> datetime:
        return start + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(10**6))

    meters = dedupe([MeterRow(f"M-{i % 3}", at(), rng.uniform(0, 2), rng.uniform(200, 250)) for i in range(900)],
                    key=lambda r: (r.meter_id, r.time))
    vehicles = dedupe([VehicleRow(f"V-{i % 3}", at(), rng.uniform(0, 100), rng.uniform(0, 1.9), rng.uniform(-10, 60))
                       for i in range(900)], key=lambda r: (r.vehicle_id, r.time))
    return Store(meters, vehicles, [LinkPeriod(f"V-{i}", f"M-{i}", None, None) for i in range(3)])


def _set_margin(conn: psycopg.Connection, margin: str) -> None:
    for job in refresh_jobs(conn):
        conn.execute("SELECT alter_job(%s, config => jsonb_build_object('margin', %s::text))", (job["job_id"], margin))


def _built_to(conn: psycopg.Connection) -> dict[str, datetime]:
    return dict(conn.execute("SELECT stream, built_to FROM telemetry.energy_running_range").fetchall())


def _open_rows(conn: psycopg.Connection, stream: str) -> list[tuple[str, datetime, float, int]]:
    energy = "kwh_consumed_ac" if stream == "meter" else "kwh_delivered_dc"
    return conn.execute(f"SELECT {stream}_id, bucket, {energy}, readings FROM telemetry.{stream}_energy_open"
                        " ORDER BY 1, 2").fetchall()


def _raw_hours(rows, device) -> dict[tuple[str, datetime], tuple[float, int]]:
    sums: dict[tuple[str, datetime], tuple[float, int]] = {}
    for r in rows:
        key = (device(r), r.time.replace(minute=0, second=0, microsecond=0))
        kwh, n = sums.get(key, (0.0, 0))
        sums[key] = (kwh + r.kwh, n + 1)
    return sums


def _open_hours_of(conn: psycopg.Connection, start: datetime, end: datetime) -> list[datetime]:
    (hours,) = conn.execute("SELECT (telemetry.window_cuts('meter', %s, %s, true, true)).open_hours",
                            (start, end)).fetchone()
    return hours


@pytest.fixture
def lagging(client: TestClient, keys: Keys, conn: psycopg.Connection, edition: str) -> Lagging:
    """Six hours up to now: the refresh job runs once (Community: with a 3-hour margin) after the first
    part of the readings, then again after the older readings of the second part (which then reach
    the running sums through their dirty hours); the rest, all in the hours it has not built, and the
    last readings of two of those hours arrive after it."""
    now = datetime.now(UTC)
    if now.minute == 59:  # the jobs here and in the tests must all run within the same hour
        time.sleep(61 - now.second)
        now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    start = hour - 6 * HOUR
    store = _history(random.Random(20261124), start, now)
    for link in store.links:
        response = client.put(f"/v1/vehicles/{link.vehicle_id}/meter", json={"meterId": link.meter_id},
                              headers=Keys.header(keys.ingest))
        assert response.status_code == 200, response.text
    _set_margin(conn, MARGIN)
    built = hour - 3 * HOUR  # the hour of now - 3 hours: what the job builds
    send(client, keys.ingest, store.meters[::2], store.vehicles[::2])
    run_refresh_policies(conn)
    send(client, keys.ingest, [m for m in store.meters[1::2] if m.time < built],
         [v for v in store.vehicles[1::2] if v.time < built])
    run_refresh_policies(conn)
    extra = Store([MeterRow(f"M-{i}", hour - HOUR - timedelta(minutes=1, seconds=i), 0.25 + i, 231.0)
                   for i in range(3)],
                  [VehicleRow(f"V-{i}", hour - timedelta(minutes=3, seconds=i), 50.0, 0.2 + i, 20.0)
                   for i in range(3)], [])
    send(client, keys.ingest, [m for m in store.meters[1::2] if m.time >= built] + extra.meters,
         [v for v in store.vehicles[1::2] if v.time >= built] + extra.vehicles)
    return Lagging(Store(store.meters + extra.meters, store.vehicles + extra.vehicles, store.links), now, hour, start)


def _fold(rows: list[tuple[str, datetime, float, int]]) -> dict[tuple[str, datetime], tuple[float, int]]:
    folded: dict[tuple[str, datetime], tuple[float, int]] = {}
    for dev, hour, kwh, n in rows:
        total = folded.get((dev, hour), (0.0, 0))
        folded[(dev, hour)] = (total[0] + kwh, total[1] + n)
    return folded


def test_the_fleet_reads_the_hours_not_built_yet_from_the_open_hour_sums_exactly(
        client: TestClient, keys: Keys, conn: psycopg.Connection, edition: str, lagging: Lagging) -> None:
    hour, start, now = lagging.hour, lagging.start, lagging.now
    windows = [(start, hour), (start, hour - HOUR), (start, hour + HOUR), (start, now),
               (start + timedelta(minutes=13, seconds=5), hour - 2 * HOUR + timedelta(minutes=31)),
               (start + timedelta(hours=2, minutes=59), hour - HOUR + timedelta(minutes=9, seconds=59)),
               (hour - 3 * HOUR, hour), (hour - 4 * HOUR + timedelta(seconds=1), now + HOUR)]
    if edition == "apache":
        assert _built_to(conn) == {}
        assert _open_rows(conn, "meter") == [] and _open_rows(conn, "vehicle") == []
        for window in windows:
            check_fleet(client, keys.read, lagging.store, *window)
        return
    assert _built_to(conn) == {"meter": hour - 3 * HOUR, "vehicle": hour - 3 * HOUR}
    for stream, rows, device in (("meter", lagging.store.meters, lambda r: r.meter_id),
                                 ("vehicle", lagging.store.vehicles, lambda r: r.vehicle_id)):
        stored = _fold(_open_rows(conn, stream))
        want = {k: v for k, v in _raw_hours(rows, device).items() if k[1] >= hour - 3 * HOUR}
        assert stored.keys() == want.keys()
        for key, (kwh, n) in want.items():
            assert stored[key][1] == n and stored[key][0] == pytest.approx(kwh, rel=1e-12), key
    # Whole hours from built_to to the window's last one come from the open-hour sums.
    not_built = [hour - 3 * HOUR, hour - 2 * HOUR, hour - HOUR]
    assert _open_hours_of(conn, start, hour) == not_built
    assert _open_hours_of(conn, start + timedelta(minutes=7), now) == not_built
    assert _open_hours_of(conn, start, hour + HOUR) == not_built + [hour]
    assert _open_hours_of(conn, start, hour - 3 * HOUR) == []  # all built
    assert _open_hours_of(conn, hour - 2 * HOUR, hour) == []  # starts after built_to: the usual levels
    for window in windows:
        check_fleet(client, keys.read, lagging.store, *window)
    # A database that had readings when it was upgraded: its open-hour sums miss those, and are read
    # only from the first hour the ingest kept from the start. The usual levels then count the
    # readings sent into the hour 3 hours back after the job materialized its first ten minutes from
    # the next run on (the open-hour sums count them at once).
    run_refresh_policies(conn)
    conn.execute("UPDATE telemetry.open_hours_kept SET from_hour = %s", (hour - 2 * HOUR,))
    assert _open_hours_of(conn, start, hour) == []
    for window in windows[:4]:
        check_fleet(client, keys.read, lagging.store, *window)


def test_the_refresh_job_folds_the_open_hours_into_one_row_per_device_and_drops_the_built_ones(
        client: TestClient, keys: Keys, conn: psycopg.Connection, edition: str, lagging: Lagging) -> None:
    if edition == "apache":
        pytest.skip("the Apache edition keeps no open-hour sums (its aggregate tables are exact at ingest)")
    hour, start = lagging.hour, lagging.start
    before = {stream: _open_rows(conn, stream) for stream in ("meter", "vehicle")}
    assert len(before["meter"]) > len(_fold(before["meter"]))  # several rows per device and hour
    run_refresh_policies(conn)  # still 3 hours behind: nothing more is built
    assert _built_to(conn)["meter"] == hour - 3 * HOUR
    for stream in ("meter", "vehicle"):
        after = _open_rows(conn, stream)
        folded = _fold(before[stream])
        assert [(d, h, n) for d, h, _, n in after] == [(d, h, n) for (d, h), (_, n) in sorted(folded.items())]
        assert [kwh for _, _, kwh, _ in after] == pytest.approx([kwh for _, (kwh, _) in sorted(folded.items())],
                                                                rel=1e-12)
    check_fleet(client, keys.read, lagging.store, start, hour)
    # With the usual margin the job builds every closed hour and keeps the hours from there on.
    _set_margin(conn, "2 minutes")
    before_run = datetime.now(UTC)
    run_refresh_policies(conn)
    built = _built_to(conn)["meter"]
    assert built == (before_run - timedelta(minutes=2)).replace(minute=0, second=0, microsecond=0) or \
        built == (datetime.now(UTC) - timedelta(minutes=2)).replace(minute=0, second=0, microsecond=0)
    assert {h for _, h, _, _ in _open_rows(conn, "meter")} == {
        h for _, h in _raw_hours(lagging.store.meters, lambda r: r.meter_id) if h >= built}
    check_fleet(client, keys.read, lagging.store, start, hour)
    check_fleet(client, keys.read, lagging.store, start, lagging.now)


def test_a_reading_committed_while_the_job_folds_the_open_hours_counts_once(
        conn: psycopg.Connection, database, edition: str) -> None:
    if edition == "apache":
        pytest.skip("the Apache edition keeps no open-hour sums (its aggregate tables are exact at ingest)")
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    hour = (at - timedelta(seconds=5)).replace(minute=0, second=0)
    at = max(at, hour + timedelta(seconds=5))  # all in one hour
    ingest_rows(conn, meters=[("M-1", at - timedelta(seconds=s), 1.0, 230.0) for s in range(1, 4)])
    ingest_rows(conn, meters=[("M-1", at - timedelta(seconds=s), 2.0, 230.0) for s in range(4, 6)])
    with database.connect() as writer, writer.transaction():  # open while the job folds, committed after
        ingest_rows(writer, meters=[("M-1", at, 4.0, 230.0), ("M-2", at, 8.0, 230.0)])
        assert conn.execute("SELECT telemetry.compact_open_hours('meter')").fetchone()[0] == 1
    assert sorted(_open_rows(conn, "meter")) == [("M-1", hour, 4.0, 1), ("M-1", hour, 7.0, 5), ("M-2", hour, 8.0, 1)]
    assert conn.execute("SELECT telemetry.compact_open_hours('meter')").fetchone()[0] == 2
    assert _open_rows(conn, "meter") == [("M-1", hour, 11.0, 6), ("M-2", hour, 8.0, 1)]
    assert conn.execute("SELECT count(*) FROM telemetry.meter_readings").fetchone()[0] == 7


def test_a_reading_committed_while_the_job_builds_its_hour_counts_late_once_then_exactly(
        client: TestClient, keys: Keys, conn: psycopg.Connection, database, edition: str) -> None:
    """A reading whose transaction began before the refresh job built its hour into the running sums
    (and dropped that hour's open-hour sums) and commits after: not in the sums the job built, its
    open-hour row left behind but not read (the hour is before built_to), its hour recorded dirty. It
    counts after the next run of the job, once, in every window that holds it."""
    if edition == "apache":
        pytest.skip("the Apache edition builds no running sums (its aggregate tables are exact at ingest)")
    # Two hours back: closed, and built by the job whatever the minute (with its 2-minute margin it
    # builds at least to the start of the hour before the current one).
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
    assert client.put("/v1/vehicles/V-1/meter", json={"meterId": "M-1"},
                      headers=Keys.header(keys.ingest)).status_code == 200
    ingest_rows(conn, meters=[("M-1", hour + timedelta(minutes=10), 1.0, 230.0),
                              ("M-1", hour + timedelta(minutes=20), 2.0, 230.0)],
                vehicles=[("V-1", hour + timedelta(minutes=10), 50.0, 0.9, 30.0)])
    windows = {"the hour": (hour, hour + HOUR), "half a day to the current hour": (hour - 10 * HOUR, hour + 2 * HOUR)}

    def consumed() -> dict[str, float]:
        answers = {}
        for name, (start, end) in windows.items():
            response = client.get("/v1/analytics/fleet", params={"from": iso(start), "to": iso(end)},
                                  headers=Keys.header(keys.read))
            assert response.status_code == 200, response.text
            answers[name] = response.json()["acConsumedKwh"]
        return answers

    with database.connect() as writer, writer.transaction():  # begun before the job, committed after it
        ingest_rows(writer, meters=[("M-1", hour + timedelta(minutes=30), 4.0, 230.0)])
        assert run_refresh_policies(conn) == 1
        assert all(built >= hour + HOUR for built in _built_to(conn).values())
        assert _open_rows(conn, "meter") == []
    # Committed: late (the sums and the hourly rows were built without it), never counted twice.
    assert consumed() == {name: pytest.approx(3.0, rel=1e-12) for name in windows}
    assert _open_rows(conn, "meter") == [("M-1", hour, 4.0, 1)]
    assert conn.execute("SELECT array_agg(DISTINCT hour) FROM telemetry.energy_running_dirty"
                        " WHERE stream = 'meter'").fetchone()[0] == [hour]
    assert run_refresh_policies(conn) == 1
    assert consumed() == {name: pytest.approx(7.0, rel=1e-12) for name in windows}
    assert _open_rows(conn, "meter") == []
    assert conn.execute("SELECT count(*) FROM telemetry.energy_running_dirty").fetchone()[0] == 0


def test_before_the_first_build_the_ingest_keeps_a_day_of_hours(conn: psycopg.Connection, edition: str) -> None:
    """No running sums yet: readings more than a day back get no open-hour row, and the fleet reads the
    open-hour sums only where they hold every reading (the same day)."""
    if edition == "apache":
        pytest.skip("the Apache edition keeps no open-hour sums (its aggregate tables are exact at ingest)")
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=1, hours=2), now - timedelta(minutes=5)
    ingest_rows(conn, meters=[("M-1", old, 1.0, 230.0), ("M-1", recent, 2.0, 230.0)])
    assert [(h, n) for _, h, _, n in _open_rows(conn, "meter")] == [
        (recent.replace(minute=0, second=0, microsecond=0), 1)]
    day_back = {(t - timedelta(days=1)).replace(minute=0, second=0, microsecond=0) for t in (now, datetime.now(UTC))}
    assert conn.execute("SELECT telemetry.open_hours_from('meter')").fetchone()[0] in day_back
    # Read an hour inside that: a writer whose clock is ahead of the reader's keeps less.
    assert conn.execute("SELECT telemetry.open_hours_complete_from()").fetchone()[0] in {h + HOUR for h in day_back}


def test_an_upgrade_over_stored_readings_reads_open_hours_from_the_second_hour_after_it(database) -> None:
    """A new database keeps them from the start; one that held readings when the upgrade created them
    has no row for those readings, so they are read only from an hour no such reading can fall in
    (writers still on the previous ingest functions send readings up to 5 minutes ahead)."""
    with database.connect(autocommit=True) as conn:
        assert conn.execute("SELECT from_hour = '-infinity' FROM telemetry.open_hours_kept").fetchall() == [(True,)]
        ingest_rows(conn, meters=[("M-1", datetime.now(UTC) - timedelta(minutes=1), 1.0, 230.0)])
        # The database as it was before the upgrade: readings, no open-hour tables.
        conn.execute("DELETE FROM telemetry.schema_migrations WHERE name = '0017_open_hour_energy.sql'")
        conn.execute("DROP TABLE telemetry.meter_energy_open, telemetry.vehicle_energy_open, telemetry.open_hours_kept")
    before = datetime.now(UTC)
    assert migrate(database.url, SQL_DIR).applied == ("0017_open_hour_energy.sql",)
    after = datetime.now(UTC)
    with database.connect() as conn:
        (kept,) = conn.execute("SELECT from_hour FROM telemetry.open_hours_kept").fetchone()
        assert kept in {(t + timedelta(minutes=15)).replace(minute=0, second=0, microsecond=0) + HOUR
                        for t in (before, after)}
        assert conn.execute("SELECT telemetry.open_hours_complete_from()").fetchone()[0] == kept
        assert _open_rows(conn, "meter") == []  # no copy of the reading stored before
    if database.edition == "community":
        # Once the job has built the running sums, the fleet still counts that reading: it reads the
        # hours after them the usual way, not from open-hour sums that lack it.
        with database.connect(autocommit=True) as conn:
            run_refresh_policies(conn)
            hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            totals = conn.execute("SELECT device_id, readings FROM telemetry.energy_totals('meter', "
                                  "telemetry.window_cuts('meter', %s, %s, true, true))",
                                  (hour - 2 * HOUR, hour + HOUR)).fetchall()
            assert totals == [("M-1", 1)]
