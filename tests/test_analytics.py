"""Analytics over HTTP equal the same computation over the raw readings, for any window, on every
edition; verdicts; answers after retention; query plans."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from pytest_postgresql.janitor import DatabaseJanitor

from api.settings import Settings
from tests.fix_api import Keys
from tests.fix_db import app_url, ingest_rows
from api.ops.maintenance import run_refresh_policies
from tests.fix_reference import LinkPeriod, MeterRow, Store, VehicleRow, dedupe
from tests.fix_readings import iso

HOUR = timedelta(hours=1)
# Three whole days of history ending two hours ago: windows cross hour and day boundaries.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3, hours=2)
SPAN = timedelta(days=3)
NUMBERS = ("acConsumedKwh", "dcDeliveredKwh", "lossKwh", "efficiency", "avgBatteryTemp")


def close(actual: float | None, expected: float | None) -> bool:
    if expected is None or actual is None:
        return actual is expected
    return actual == pytest.approx(expected, rel=1e-9, abs=1e-9)


def send(client: TestClient, key: str, meters: list[MeterRow], vehicles: list[VehicleRow]) -> None:
    body = [{"meterId": m.meter_id, "kwhConsumedAc": m.kwh, "voltage": m.voltage, "timestamp": iso(m.time)}
            for m in meters]
    body += [{"vehicleId": v.vehicle_id, "soc": v.soc, "kwhDeliveredDc": v.kwh, "batteryTemp": v.battery_temp,
              "timestamp": iso(v.time)} for v in vehicles]
    for i in range(0, len(body), 2000):
        response = client.post("/v1/telemetry", json=body[i:i + 2000], headers=Keys.header(key))
        assert response.status_code == 200, response.text


def check_performance(client: TestClient, key: str, store: Store, vehicle: str, start: datetime,
                      end: datetime) -> None:
    response = client.get(f"/v1/analytics/performance/{vehicle}", params={"from": iso(start), "to": iso(end)},
                          headers=Keys.header(key))
    assert response.status_code == 200, response.text
    got, want = response.json(), store.performance(vehicle, start, end)
    for field in NUMBERS:
        assert close(got[field], want[field]), (field, start, end, got, want)
    for field in ("meterId", "meterReadings", "vehicleReadings", "verdict"):
        assert got[field] == want[field], (field, start, end, got, want)


def random_window(rng: random.Random) -> tuple[datetime, datetime]:
    a = T0 - HOUR + timedelta(seconds=rng.randrange(int((SPAN + 2 * HOUR).total_seconds())))
    b = T0 - HOUR + timedelta(seconds=rng.randrange(int((SPAN + 2 * HOUR).total_seconds())))
    if rng.random() < 0.3:  # aligned edges too
        a = a.replace(minute=0, second=0)
    return (min(a, b), max(a, b) + timedelta(seconds=1))


def make_history(rng: random.Random, meters: int = 2, vehicles: int = 2, per_device: int = 300) -> Store:
    def minute() -> datetime:
        return T0 + timedelta(minutes=rng.randrange(int(SPAN.total_seconds() // 60)), seconds=rng.randrange(60))

    meter_rows = dedupe([MeterRow(f"M-{rng.randrange(meters)}", minute(), rng.uniform(0, 2), rng.uniform(200, 250))
                         for _ in range(meters * per_device)], key=lambda r: (r.meter_id, r.time))
    vehicle_rows = dedupe([VehicleRow(f"V-{rng.randrange(vehicles)}", minute(), rng.uniform(0, 100),
                                      rng.uniform(0, 1.9), rng.uniform(-10, 60))
                           for _ in range(vehicles * per_device)], key=lambda r: (r.vehicle_id, r.time))
    switch = T0 + timedelta(hours=rng.randrange(1, 70), minutes=rng.randrange(60))
    # The vehicles swap meters at the switch: a meter feeds one vehicle at a time.
    links = [LinkPeriod("V-0", "M-0", None, switch), LinkPeriod("V-1", "M-1", None, switch),
             LinkPeriod("V-0", "M-1", switch, None), LinkPeriod("V-1", "M-0", switch, None)]
    return Store(meter_rows, vehicle_rows, links)


def load(client: TestClient, keys: Keys, conn: psycopg.Connection, edition: str, store: Store,
         rng: random.Random) -> None:
    """Out of order, with duplicates, and a late share arriving after the aggregates were refreshed."""
    for start in dict.fromkeys(link.start for link in store.links):  # first links, then the swap, in bulk
        body = [{"vehicleId": link.vehicle_id, "meterId": link.meter_id} | ({"validFrom": iso(start)} if start else {})
                for link in store.links if link.start == start]
        response = client.put("/v1/vehicles/meters", json=body, headers=Keys.header(keys.ingest))
        assert response.status_code == 200, response.text
    meters, vehicles = store.meters[:], store.vehicles[:]
    rng.shuffle(meters)
    rng.shuffle(vehicles)
    late_m, late_v = meters[: len(meters) // 5], vehicles[: len(vehicles) // 5]
    send(client, keys.ingest, meters[len(late_m):], vehicles[len(late_v):])
    run_refresh_policies(conn)
    send(client, keys.ingest, late_m + meters[::7], late_v + vehicles[::5])  # late rows and retries
    run_refresh_policies(conn)


@pytest.fixture
def loaded(client: TestClient, keys: Keys, conn: psycopg.Connection, edition: str) -> Store:
    rng = random.Random(20261122)
    store = make_history(rng)
    load(client, keys, conn, edition, store, rng)
    return store


def test_performance_equals_the_raw_computation_for_many_windows(client, keys, loaded: Store) -> None:
    rng = random.Random(1)
    windows = [random_window(rng) for _ in range(60)]
    windows += [(T0, T0 + SPAN), (T0 + timedelta(minutes=30), T0 + timedelta(minutes=50)),
                (T0 + timedelta(hours=5, minutes=1), T0 + timedelta(days=2, hours=3, seconds=7))]
    for start, end in windows:
        for vehicle in ("V-0", "V-1"):
            check_performance(client, keys.read, loaded, vehicle, start, end)


def test_series_equals_the_raw_computation(client, keys, loaded: Store) -> None:
    rng = random.Random(2)
    for bucket, size in (("1h", HOUR), ("1d", timedelta(days=1)), ("1w", timedelta(weeks=1))):
        for start, end in [random_window(rng) for _ in range(6)] + [(T0, T0 + SPAN)]:
            response = client.get("/v1/analytics/vehicles/V-1/series",
                                  params={"from": iso(start), "to": iso(end), "bucket": bucket},
                                  headers=Keys.header(keys.read))
            assert response.status_code == 200, response.text
            got, want = response.json()["points"], loaded.series("V-1", start, end, size)
            assert [datetime.fromisoformat(p["bucket"]) for p in got] == [p["bucket"] for p in want]
            for g, w in zip(got, want, strict=True):
                for field in ("acConsumedKwh", "dcDeliveredKwh", "efficiency", "avgBatteryTemp"):
                    assert close(g[field], w[field]), (bucket, field, g, w)
                assert (g["meterReadings"], g["vehicleReadings"]) == (w["meterReadings"], w["vehicleReadings"])


def check_fleet(client: TestClient, key: str, store: Store, start: datetime, end: datetime) -> None:
    response = client.get("/v1/analytics/fleet", params={"from": iso(start), "to": iso(end), "worst": 5},
                          headers=Keys.header(key))
    assert response.status_code == 200, response.text
    fleet = response.json()
    per_vehicle = {v: store.performance(v, start, end) for v in store.vehicle_ids(start, end)}
    linked = [p for p in per_vehicle.values() if p["meterId"] is not None]
    ac, dc = sum(p["acConsumedKwh"] for p in linked), sum(p["dcDeliveredKwh"] for p in linked)
    assert fleet["vehicles"] == len(per_vehicle) and fleet["linkedVehicles"] == len(linked), (start, end, fleet)
    assert close(fleet["acConsumedKwh"], ac) and close(fleet["dcDeliveredKwh"], dc), (start, end, fleet)
    assert close(fleet["efficiency"], dc / ac if ac > 0 else None)
    assert (fleet["meterReadings"], fleet["vehicleReadings"]) == (
        sum(p["meterReadings"] for p in per_vehicle.values()), sum(p["vehicleReadings"] for p in per_vehicle.values()))
    for verdict_name, count in fleet["verdicts"].items():
        assert count == sum(p["verdict"] == verdict_name for p in per_vehicle.values())
    ranked = sorted((p for p in per_vehicle.values() if p["verdict"] in ("healthy", "degraded", "faulty")),
                    key=lambda p: (round(p["efficiency"] * 1e9), p["vehicleId"]))[:5]
    assert [w["vehicleId"] for w in fleet["worst"]] == [p["vehicleId"] for p in ranked]


def test_fleet_equals_the_raw_computation(client, keys, loaded: Store) -> None:
    rng = random.Random(3)
    for start, end in [random_window(rng) for _ in range(8)] + [(T0, T0 + SPAN)]:
        check_fleet(client, keys.read, loaded, start, end)


def edge_windows(store: Store) -> list[tuple[datetime, datetime]]:
    """Windows whose ends sit on, just before and just after the boundaries where the parts of a window
    change level (ten minutes, the half hour, the hour, three and six hours, noon and midnight), and
    around the relink of the history."""
    day = T0.replace(hour=0) + timedelta(days=1)
    switch = next(link.start for link in store.links if link.start is not None)
    second = timedelta(seconds=1)
    windows = []
    for offset in (timedelta(minutes=10), timedelta(minutes=5), timedelta(minutes=30), timedelta(minutes=35),
                   HOUR, timedelta(hours=3), timedelta(hours=6), timedelta(hours=12)):
        for nudge in (-second, 0 * second, second):
            start = day + offset + nudge
            windows += [(start, start + timedelta(hours=24)), (start, day + timedelta(hours=30) - offset - nudge)]
    windows += [(switch - timedelta(minutes=7), switch + timedelta(hours=3, minutes=2)),
                (switch - timedelta(hours=20, minutes=4), switch + timedelta(hours=4, seconds=3)),
                (switch - timedelta(minutes=3), switch + timedelta(minutes=4)),
                (switch.replace(minute=switch.minute // 10 * 10, second=0), switch + timedelta(hours=24))]
    return windows


def test_windows_with_edges_at_every_level_boundary_equal_the_raw_computation(client, keys, loaded: Store) -> None:
    for start, end in edge_windows(loaded):
        check_fleet(client, keys.read, loaded, start, end)
        for vehicle in ("V-0", "V-1"):
            check_performance(client, keys.read, loaded, vehicle, start, end)


def raw_sums(rows, device, slot_of) -> dict[tuple[str, datetime], list[float]]:
    """Energy and number of readings per device and slot (`slot_of` maps a reading's time to its slot)."""
    sums: dict[tuple[str, datetime], list[float]] = {}
    for r in rows:
        acc = sums.setdefault((device(r), slot_of(r.time)), [0.0, 0])
        acc[0] += r.kwh
        acc[1] += 1
    return sums


def stored_sums(conn: psycopg.Connection, stream: str, level: str) -> dict[tuple[str, datetime], tuple[float, int]]:
    """Energy and readings per device and bucket in the stream's table of that level (10m, running)."""
    energy = "kwh_consumed_ac" if stream == "meter" else "kwh_delivered_dc"
    return {(d, b): (kwh, n) for d, b, kwh, n in conn.execute(
        f"SELECT {stream}_id, bucket, {energy}, readings FROM telemetry.{stream}_energy_{level}")}


def test_ten_minute_aggregates_equal_the_raw_readings(conn, loaded: Store) -> None:
    """The layer that carries the edges of every window holds each device's ten minutes exactly."""
    for stream, rows, device in (("meter", loaded.meters, lambda r: r.meter_id),
                                 ("vehicle", loaded.vehicles, lambda r: r.vehicle_id)):
        want = raw_sums(rows, device, lambda t: t.replace(minute=t.minute // 10 * 10, second=0, microsecond=0))
        got = stored_sums(conn, stream, "10m")
        assert got.keys() == want.keys()
        for slot, (kwh, n) in want.items():
            assert got[slot][1] == n and close(got[slot][0], kwh), slot


def test_running_sums_equal_the_hourly_sums_of_each_day(conn, loaded: Store, edition: str) -> None:
    """Community: after late readings, each device's row at an hour holds exactly the readings of its day
    up to that hour, one row for every hour from its first one to the end of what is built; Apache
    reads its other levels and builds none."""
    built = dict(conn.execute("SELECT stream, built_to FROM telemetry.energy_running_range").fetchall())
    if edition == "apache":
        assert built == {}
        assert conn.execute("SELECT count(*) FROM telemetry.meter_energy_running").fetchone()[0] == 0
        return
    assert conn.execute("SELECT count(*) FROM telemetry.energy_running_dirty").fetchone()[0] == 0
    for stream, rows, device in (("meter", loaded.meters, lambda r: r.meter_id),
                                 ("vehicle", loaded.vehicles, lambda r: r.vehicle_id)):
        assert built[stream] >= T0 + SPAN  # the whole history is materialized hourly
        hours = raw_sums(rows, device, lambda t: t.replace(minute=0, second=0, microsecond=0))
        want: dict[tuple[str, datetime], tuple[float, int]] = {}
        for dev in {d for d, _ in hours}:
            for day in sorted({h.replace(hour=0) for d, h in hours if d == dev}):
                first = min(h for d, h in hours if d == dev and h.replace(hour=0) == day)
                kwh, n, hour = 0.0, 0, first
                while hour < min(day + timedelta(days=1), built[stream]):
                    kwh += hours.get((dev, hour), [0.0, 0])[0]
                    n += hours.get((dev, hour), [0.0, 0])[1]
                    want[(dev, hour)] = (kwh, n)
                    hour += HOUR
        got = stored_sums(conn, stream, "running")
        assert got.keys() == want.keys()
        for key, (kwh, n) in want.items():
            assert got[key][1] == n and close(got[key][0], kwh), key


def test_a_late_reading_reaches_the_running_sums_of_its_day_only(client, keys, conn, loaded: Store,
                                                                 edition: str) -> None:
    if edition == "apache":
        pytest.skip("the Apache edition builds no running sums (its aggregate tables are exact at ingest)")
    hour = (T0 + timedelta(days=1, hours=5)).replace(minute=0)
    before = dict(conn.execute(
        "SELECT bucket, readings FROM telemetry.meter_energy_running WHERE meter_id = 'M-0'").fetchall())
    late = MeterRow("M-0", hour + timedelta(minutes=59, seconds=59, microseconds=123), 0.5, 230.0)
    send(client, keys.ingest, [late], [])
    assert conn.execute("SELECT count(*) FROM telemetry.energy_running_dirty WHERE hour = %s",
                        (hour,)).fetchone()[0] == 1
    run_refresh_policies(conn)
    after = dict(conn.execute(
        "SELECT bucket, readings FROM telemetry.meter_energy_running WHERE meter_id = 'M-0'").fetchall())
    day_end = hour.replace(hour=0) + timedelta(days=1)
    assert {b: n - before.get(b, 0) for b, n in after.items() if n != before.get(b, 0)} == {
        b: 1 for b in after if hour <= b < day_end}
    assert conn.execute("SELECT count(*) FROM telemetry.energy_running_dirty").fetchone()[0] == 0
    store = Store(loaded.meters + [late], loaded.vehicles, loaded.links)
    for start, end in [(hour - timedelta(hours=20), hour + timedelta(hours=4)), (hour, hour + HOUR)]:
        check_fleet(client, keys.read, store, start, end)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), per_device=st.integers(1, 200),
       windows=st.lists(st.tuples(st.integers(-3600, 3 * 86400 + 3600), st.integers(1, 3 * 86400 + 7200)),
                        min_size=1, max_size=8))
def test_property_any_history_any_window(pg_server, edition, seed: int, per_device: int,
                                         windows: list[tuple[int, int]]) -> None:
    """Random histories (duplicates, out of order, late rows, a relink) and random unaligned windows."""
    from api.server.app import create_app

    dbname = f"prop_{seed}_{per_device}_{random.randrange(10**9)}"
    with DatabaseJanitor(user=pg_server.user, host=pg_server.host, port=pg_server.port, dbname=dbname,
                         template_dbname=pg_server.template_dbname, password=pg_server.password):
        url = f"host={pg_server.host} port={pg_server.port} user={pg_server.user} dbname={dbname}"
        settings = Settings.from_env({}, database_url=app_url(url), maintenance_interval_s=0)
        rng = random.Random(seed)
        store = make_history(rng, per_device=per_device)
        with TestClient(create_app(settings)) as client, psycopg.connect(url, autocommit=True) as conn:
            keys = Keys(url)
            load(client, keys, conn, edition, store, rng)
            for offset, length in windows:
                start = T0 + timedelta(seconds=offset)
                for vehicle in ("V-0", "V-1"):
                    check_performance(client, keys.read, store, vehicle, start, start + timedelta(seconds=length))


@pytest.mark.parametrize(("ac", "dc", "expected"), [
    (10.0, 8.5, "healthy"), (10.0, 8.4999, "degraded"), (10.0, 7.5, "degraded"), (10.0, 7.4999, "faulty"),
    (10.0, 10.0, "healthy"), (10.0, 10.0001, "anomaly"), (0.0999, 0.05, "insufficient_data"),
    (0.1, 0.09, "healthy"), (10.0, 0.0, "faulty"),
])
def test_verdict_boundaries(client, keys, conn, ac: float, dc: float, expected: str) -> None:
    at = T0 + timedelta(minutes=17)
    client.put("/v1/vehicles/V-9/meter", json={"meterId": "M-9"}, headers=Keys.header(keys.ingest))
    body = [{"meterId": "M-9", "kwhConsumedAc": ac, "voltage": 230, "timestamp": iso(at)},
            {"vehicleId": "V-9", "soc": 50, "kwhDeliveredDc": dc, "batteryTemp": 30, "timestamp": iso(at)}]
    assert client.post("/v1/telemetry", json=body, headers=Keys.header(keys.ingest)).status_code == 200
    answer = client.get("/v1/analytics/performance/V-9", params={"from": iso(T0), "to": iso(T0 + HOUR)},
                        headers=Keys.header(keys.read)).json()
    assert answer["verdict"] == expected
    assert close(answer["efficiency"], dc / ac)
    assert close(answer["lossKwh"], ac - dc)


def test_a_stream_without_readings_is_insufficient_data(client, keys) -> None:
    client.put("/v1/vehicles/V-8/meter", json={"meterId": "M-8"}, headers=Keys.header(keys.ingest))
    at = iso(T0 + timedelta(minutes=5))
    client.post("/v1/telemetry", json=[{"meterId": "M-8", "kwhConsumedAc": 5, "voltage": 230, "timestamp": at}],
                headers=Keys.header(keys.ingest))
    answer = client.get("/v1/analytics/performance/V-8", params={"from": iso(T0), "to": iso(T0 + HOUR)},
                        headers=Keys.header(keys.read)).json()
    assert answer["verdict"] == "insufficient_data"
    assert (answer["meterReadings"], answer["vehicleReadings"], answer["acConsumedKwh"]) == (1, 0, 5.0)


def test_an_unlinked_vehicle_gets_a_clear_answer(client, keys) -> None:
    at = iso(T0 + timedelta(minutes=5))
    client.post("/v1/telemetry", json=[{"vehicleId": "V-7", "soc": 50, "kwhDeliveredDc": 3, "batteryTemp": 30,
                                        "timestamp": at}], headers=Keys.header(keys.ingest))
    response = client.get("/v1/analytics/performance/V-7", params={"from": iso(T0), "to": iso(T0 + HOUR)},
                          headers=Keys.header(keys.read))
    assert response.status_code == 200
    answer = response.json()
    assert answer["meterId"] is None and answer["verdict"] == "insufficient_data"
    assert answer["dcDeliveredKwh"] == 3.0 and "PUT /v1/vehicles/V-7/meter" in answer["note"]
    unknown = client.get("/v1/analytics/performance/NOPE", headers=Keys.header(keys.read))
    assert unknown.status_code == 404


def test_bad_windows_are_422(client, keys) -> None:
    read = Keys.header(keys.read)
    assert client.get("/v1/analytics/fleet", params={"from": iso(T0 + HOUR), "to": iso(T0)},
                      headers=read).status_code == 422
    assert client.get("/v1/analytics/fleet", params={"from": "2026-11-22T10:00:00"}, headers=read).status_code == 422
    assert client.get("/v1/analytics/vehicles/V-1/series", params={"bucket": "5m"}, headers=read).status_code == 422
    assert client.get("/v1/analytics/fleet", headers=Keys.header(keys.ingest)).status_code == 403


def test_answers_for_old_windows_survive_raw_retention(client, keys, conn, edition: str) -> None:
    old = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=29, hours=12)
    client.put("/v1/vehicles/V-1/meter", json={"meterId": "M-1"}, headers=Keys.header(keys.ingest))
    meters = [MeterRow("M-1", old + timedelta(minutes=m), 0.5 + m / 1000, 230) for m in range(180)]
    vehicles = [VehicleRow("V-1", old + timedelta(minutes=m), 50, 0.45 + m / 2000, 30) for m in range(180)]
    send(client, keys.ingest, meters, vehicles)
    run_refresh_policies(conn)
    window = {"from": iso(old), "to": iso(old + 3 * HOUR)}
    before = client.get("/v1/analytics/performance/V-1", params=window, headers=Keys.header(keys.read)).json()
    series_before = client.get("/v1/analytics/vehicles/V-1/series", params=window,
                               headers=Keys.header(keys.read)).json()["points"]

    # Days later the raw chunks have expired (the three hours may span two daily chunks): drop them
    # as the retention policy / maintenance would.
    conn.execute("SELECT drop_chunks('telemetry.meter_readings', older_than => %s)", (old + timedelta(days=2),))
    conn.execute("SELECT drop_chunks('telemetry.vehicle_readings', older_than => %s)", (old + timedelta(days=2),))
    assert conn.execute("SELECT count(*) FROM telemetry.meter_readings").fetchone()[0] == 0

    after = client.get("/v1/analytics/performance/V-1", params=window, headers=Keys.header(keys.read)).json()
    series_after = client.get("/v1/analytics/vehicles/V-1/series", params=window,
                              headers=Keys.header(keys.read)).json()["points"]
    assert after == before and series_after == series_before
    assert before["meterReadings"] == 180 and close(before["acConsumedKwh"], sum(m.kwh for m in meters))


def _ten_minute_rows(conn: psycopg.Connection, start: datetime, end: datetime) -> int:
    return conn.execute(
        """SELECT (SELECT count(*) FROM telemetry.meter_energy_10m WHERE bucket >= %(s)s AND bucket < %(e)s)
                + (SELECT count(*) FROM telemetry.vehicle_energy_10m WHERE bucket >= %(s)s AND bucket < %(e)s)""",
        {"s": start, "e": end}).fetchone()[0]


def test_retention_drops_ten_minute_rows_with_the_raw_readings_and_keeps_the_hours(
        client, keys, conn, edition: str) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    old, recent = now - timedelta(days=29, hours=12), now - timedelta(days=1)
    client.put("/v1/vehicles/V-1/meter", json={"meterId": "M-1"}, headers=Keys.header(keys.ingest))
    hours = [old, recent]
    send(client, keys.ingest, [MeterRow("M-1", h + timedelta(minutes=m), 0.5, 230) for h in hours for m in range(60)],
         [VehicleRow("V-1", h + timedelta(minutes=m), 50, 0.45, 30) for h in hours for m in range(60)])
    run_refresh_policies(conn)
    assert _ten_minute_rows(conn, old, old + HOUR) == _ten_minute_rows(conn, recent, recent + HOUR) == 12
    window = {"from": iso(old), "to": iso(old + HOUR)}
    before = client.get("/v1/analytics/performance/V-1", params=window, headers=Keys.header(keys.read)).json()

    # Raw readings (and with them the ten-minute rows) kept 15 days: the old hour's go, at the same
    # time (Community: the chunk of ten-minute rows, up to 10 days wide, ends by then).
    conn.execute("SELECT telemetry.set_retention(INTERVAL '15 days')")
    if edition == "community":
        jobs = conn.execute(
            """SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'
               AND hypertable_name IN ('meter_readings', 'vehicle_readings', 'meter_energy_10m', 'vehicle_energy_10m')"""
        ).fetchall()
        assert len(jobs) == 4
        for (job,) in jobs:
            conn.execute("CALL run_job(%s)", (job,))
    else:
        conn.execute("SELECT * FROM telemetry.run_maintenance()")

    assert _ten_minute_rows(conn, old, old + HOUR) == 0
    assert _ten_minute_rows(conn, recent, recent + HOUR) == 12
    after = client.get("/v1/analytics/performance/V-1", params=window, headers=Keys.header(keys.read)).json()
    assert after == before and after["meterReadings"] == 60 and close(after["acConsumedKwh"], 30.0)


def test_an_hour_whose_last_minutes_are_quiet_is_read_whole(conn, edition: str) -> None:
    """TimescaleDB's ten-minute watermark stops at the last slot that held readings; the refresh job
    records how far it refreshed the slots: a window of whole hours ending after such an hour reads
    it as one row, not as ten-minute rows and raw readings."""
    if edition == "apache":
        pytest.skip("the Apache edition reads its aggregate tables, always complete")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
    ingest_rows(conn, meters=[("M-1", hour + timedelta(minutes=m), 0.5, 230.0) for m in range(45)])
    run_refresh_policies(conn)
    marks = conn.execute("SELECT telemetry.aggregate_watermark('telemetry.meter_energy_10m'),"
                         " telemetry.aggregate_watermark('telemetry.meter_energy_hourly')").fetchone()
    assert marks == (hour + timedelta(minutes=50), hour + HOUR)
    day = hour.replace(hour=0)  # the running sums start on that day
    cut = conn.execute("SELECT (c).tail_from, (c).tail_to, (c).run_plus FROM telemetry.window_cuts("
                       "'meter', %s, %s) c", (day, hour + HOUR)).fetchone()
    assert cut[0][:2] == cut[1][:2]  # no raw or ten-minute part
    assert cut[2] == [hour]  # the hour's running sum
    (kwh, readings) = conn.execute("SELECT kwh, readings FROM telemetry.device_energy('meter', 'M-1', %s, %s)",
                                   (day, hour + HOUR)).fetchone()
    assert (kwh, readings) == (pytest.approx(22.5, rel=1e-12), 45)
    # Ten-minute rows refreshed only to 10 minutes before the hour's end (the hourly aggregate was
    # refreshed further, by hand, say): the hour's last slot is read from the raw readings again.
    conn.execute("UPDATE telemetry.ten_minute_refreshed SET refreshed_to = %s", (hour + timedelta(minutes=50),))
    cut = conn.execute("SELECT (c).tail_from, (c).tail_to FROM telemetry.window_cuts('meter', %s, %s) c",
                       (day, hour + HOUR)).fetchone()
    assert (cut[0][0], cut[1][0]) == (hour + timedelta(minutes=50), hour + HOUR)
    assert conn.execute("SELECT kwh, readings FROM telemetry.device_energy('meter', 'M-1', %s, %s)",
                        (day, hour + HOUR)).fetchone() == (pytest.approx(22.5, rel=1e-12), 45)
