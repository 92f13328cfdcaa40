"""The load generator: deterministic physics, mess at the requested rates, and end-to-end runs
against the real API and database whose verification passes, or fails when a reading goes missing."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from rich.console import Console

from api.ops.maintenance import run_refresh_policies
from loadgen.fleet import Fleet, Mess
from loadgen.run import RunOptions, parse_duration, run, send_offset
from loadgen.sender import JITTER_S, Sender, Stats
from loadgen.verify import _diagnose, aggregate_gaps
from tests.fix_api import Keys
from tests.fix_db import ingest_rows
from tests.fix_loadgen import loadgen_options
from tests.fix_readings import iso

START = datetime(2026, 11, 20, tzinfo=UTC)


def test_the_same_seed_gives_the_same_readings() -> None:
    a, b, c = Fleet(20, seed=3), Fleet(20, seed=3), Fleet(20, seed=4)
    first = [a.minute(START, m) for m in range(120)]
    assert first == [b.minute(START, m) for m in range(120)]
    assert first != [c.minute(START, m) for m in range(120)]
    assert len(first[0]) == 40 and {r.get("meterId") for r in first[0][::2]} == {f"MTR-{i:05d}" for i in range(20)}


def test_the_physics_tells_a_story() -> None:
    fleet = Fleet(400, seed=11)
    efficiencies = [c.efficiency for c in fleet.chargers]
    faulty = [c for c in fleet.chargers if c.faulty]
    assert 2 <= len(faulty) <= 20
    assert all(0.55 <= c.efficiency <= 0.70 for c in faulty)
    assert all(0.88 <= e <= 0.95 for c, e in zip(fleet.chargers, efficiencies, strict=True) if not c.faulty)
    minutes = [fleet.minute(START, m) for m in range(240)]
    charging = [(r_m, r_v) for readings in minutes for r_m, r_v in zip(readings[::2], readings[1::2], strict=True)
                if r_v["kwhDeliveredDc"] > 0]
    assert charging, "some vehicles charge within four hours"
    for meter, vehicle in charging:
        assert vehicle["kwhDeliveredDc"] < meter["kwhConsumedAc"]  # DC = AC x efficiency
    soc = [readings[1]["soc"] for readings in minutes]
    assert all(0 <= s <= 100 for s in soc)
    volts = [r["voltage"] for readings in minutes for r in readings[::2]]
    assert 225 < sum(volts) / len(volts) < 235


def test_mess_comes_at_the_requested_rates_and_drops_nothing() -> None:
    fleet = Fleet(500, seed=2)
    mess = Mess(duplicate_rate=0.10, out_of_order_rate=0.20, late_rate=0.05, seed=9)
    sent, originals = [], []
    for m in range(20):
        readings = fleet.minute(START, m)
        originals += readings
        sent += mess.apply(m, readings)
    sent += mess.flush()
    keys = lambda r: (r.get("meterId") or r["vehicleId"], r["timestamp"])  # noqa: E731
    assert {keys(r) for r in sent} == {keys(r) for r in originals}  # nothing lost
    duplicates = len(sent) - len(originals)
    assert 0.08 < duplicates / len(originals) < 0.12
    positions = {keys(r): i for i, r in enumerate(originals)}
    late = sum(1 for i, r in enumerate(sent) if i - positions[keys(r)] > 1000 * 3)
    assert 0.035 < late / len(originals) < 0.065
    inversions = sum(1 for x, y in zip(sent, sent[1:]) if x["timestamp"] > y["timestamp"])
    assert inversions / len(sent) > 0.05


def test_durations_parse() -> None:
    assert (parse_duration("90s"), parse_duration("10m"), parse_duration("1h"), parse_duration("5")) == (
        90, 600, 3600, 5)


@pytest.mark.parametrize("minute_wall", [60.0, 0.6])
def test_a_paced_step_goes_out_within_its_minutes_and_never_ahead_of_the_shifted_clock(minute_wall) -> None:
    """Devices that report every N minutes send a step's readings while its minutes pass: never before
    the step's last minute minus N - 1 (the clock is shifted back that much), and, a short last step
    too, before the run's end."""
    for minutes in (1, 7, 12, 100):
        for per_step in (1, 3, 5, 15):
            steps = -(-minutes // per_step)
            offsets = [send_offset(step, chunk, 4, minutes, per_step, minute_wall)
                       for step in range(steps) for chunk in range(4)]
            assert offsets == sorted(offsets)
            assert offsets[-1] < minutes * minute_wall  # the last chunk within the run
            for step in range(steps):
                last_minute = min(minutes, (step + 1) * per_step) - 1
                first_send = send_offset(step, 0, 4, minutes, per_step, minute_wall)
                assert first_send >= (last_minute - (per_step - 1)) * minute_wall
                assert send_offset(step, 3, 4, minutes, per_step, minute_wall) < (last_minute + 1) * minute_wall


@pytest.mark.parametrize("overrides", [{"transport": "http"}, {"transport": "http-async"},
                                       {"transport": "mqtt", "mode": "backfill"}, {"report_every": 0}])
def test_reporting_every_few_minutes_is_a_simulation_over_mqtt_only(overrides) -> None:
    """--report-every groups a device's minutes into one MQTT message; anywhere else it is refused before
    anything is sent (the options point at no server)."""
    options = {"url": "http://127.0.0.1:9", "api_key": "etk_x_y", "mode": "simulate", "transport": "mqtt",
               "report_every": 5, **overrides}
    with pytest.raises(SystemExit, match="--report-every"):
        run(RunOptions(**options), Console(quiet=True))


@pytest.mark.slow
def test_an_end_to_end_run_verifies(database, live_server_factory, tmp_path) -> None:
    server = live_server_factory()
    report = run(loadgen_options(server, database, report_path=tmp_path / "report.json"), Console(quiet=True))

    assert report["verification"] == {
        "passed": True, "problems": [], "planted_faulty": report["verification"]["planted_faulty"],
        "alerts": {"checked": False, "note": "alerts not verified: the key lacks the admin scope"}}
    assert report["inserted"] == 40 * 2 * 120 and report["failed"] == report["rejected"] == 0
    assert report["duplicates"] == report["sent"] - report["inserted"] > 0
    assert (tmp_path / "report.json").exists()
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM telemetry.meter_readings").fetchone()[0] == 40 * 120
        assert conn.execute("SELECT count(*) FROM telemetry.vehicle_meter_links").fetchone()[0] == 40


@pytest.mark.slow
def test_verification_fails_when_a_stored_reading_disappears(database, live_server_factory) -> None:
    server = live_server_factory()

    def delete_one_reading() -> None:
        with database.connect() as conn:
            deleted = conn.execute(
                "DELETE FROM telemetry.vehicle_readings WHERE (vehicle_id, time) = "
                "(SELECT vehicle_id, time FROM telemetry.vehicle_readings WHERE vehicle_id = 'EV-00007' LIMIT 1)")
            assert deleted.rowcount == 1

    report = run(loadgen_options(server, database, duplicate_rate=0, out_of_order_rate=0, late_rate=0), Console(quiet=True),
                 before_verify=delete_one_reading)
    assert report["verification"]["passed"] is False, report["verification"]
    problems = report["verification"]["problems"]
    assert any(p.startswith("EV-00007: 119 readings stored, 120 accepted") for p in problems), problems


def test_readings_carry_the_minute_and_the_device_offset() -> None:
    fleet = Fleet(4, seed=5)
    readings = fleet.minute(START, 3)
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in readings[::2]]
    assert stamps == [START + timedelta(minutes=3, seconds=15 * i) for i in range(4)]
    assert all(r["timestamp"].endswith("Z") for r in readings)
    with pytest.raises(ValueError, match="whole minute"):
        fleet.minute(START + timedelta(seconds=7), 0)


@pytest.mark.slow
def test_a_paced_simulation_verifies(database, live_server_factory) -> None:
    """simulate: 40 devices for 6 s at 600x (an hour of simulated minutes), paced and verified."""
    server = live_server_factory()
    options = loadgen_options(server, database, mode="simulate", speedup=600, duration_s=6, duplicate_rate=0.02)
    started = time.monotonic()
    report = run(options, Console(quiet=True))
    assert report["verification"]["passed"], report["verification"]
    assert report["minutes"] == 60 and report["inserted"] == 40 * 2 * 60 and report["failed"] == 0
    assert time.monotonic() - started >= 5  # paced over the duration, not sent at once
    window_end = datetime.fromisoformat(report["window"]["to"])
    assert window_end <= datetime.now(UTC)  # nothing was sent from the future


Answer = tuple[int, dict[str, str], bytes] | None  # None: close the connection without answering


@contextmanager
def scripted_server(answers: list[Answer]) -> Iterator[tuple[str, list[float]]]:
    """A server on 127.0.0.1 that gives `answers` in order, one a request (the last one repeats); yields
    its URL and the arrival time of each request."""
    arrivals: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            arrivals.append(time.monotonic())
            answer = answers[min(len(arrivals), len(answers)) - 1]
            if answer is None:
                self.close_connection = True
                return
            status, headers, body = answer
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_PUT = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", arrivals
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def _send_one_batch(url: str, rows: int, **sender_options: int) -> Stats:
    sender = Sender(url, "test-key", concurrency=1, **sender_options)
    await sender.submit(b"[]", rows)
    await sender.close()
    return sender.stats


def test_a_batch_is_retried_after_a_lost_answer_and_after_each_retry_after_then_counted_once() -> None:
    busy = (503, {"Retry-After": "1"}, b'{"detail": "overloaded"}')
    accepted = (200, {"Content-Type": "application/json"}, b'{"inserted": 3, "duplicates": 0}')
    with scripted_server([None, busy, busy, accepted]) as (url, arrivals):
        stats = asyncio.run(_send_one_batch(url, rows=3))

    assert len(arrivals) == 4
    after_lost, *after_busy = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert after_lost < 1.0  # no Retry-After: the exponential backoff's first step, 0.2 s plus jitter
    assert all(1.0 <= wait < 1.0 + JITTER_S + 1.0 for wait in after_busy), after_busy  # Retry-After: 1
    assert (stats.sent, stats.inserted, stats.duplicates, stats.rejected, stats.failed) == (3, 3, 0, 0, 0)
    # The lost answer's attempt may have committed: its readings may rightly come back as duplicates.
    assert stats.ambiguous == 3
    assert (stats.requests, stats.retries) == (3, 3)
    assert stats.report()["errors_by_status"] == {"503": 2, "connection_error": 1}


def test_a_batch_still_refused_after_the_last_attempt_is_counted_failed() -> None:
    busy = (429, {"Retry-After": "0"}, b"{}")
    with scripted_server([busy]) as (url, arrivals):
        stats = asyncio.run(_send_one_batch(url, rows=3, max_attempts=3))

        async def register_links() -> int:
            sender = Sender(url, "test-key", concurrency=1, max_attempts=2)
            response = await sender.request("PUT", "/v1/vehicles/meters", [{"vehicleId": "EV-1", "meterId": "M-1"}])
            await sender.close()
            return response.status_code

        last_answer = asyncio.run(register_links())

    assert len(arrivals) == 3 + 2
    assert (stats.sent, stats.inserted, stats.rejected, stats.failed, stats.ambiguous) == (3, 0, 0, 3, 0)
    assert (stats.requests, stats.retries, stats.statuses) == (3, 2, {429: 3})
    assert last_answer == 429  # request() hands back the final answer for the caller to report


def test_latency_percentiles_interpolate_and_survive_short_runs() -> None:
    stats = Stats(latencies=[0.05, 0.01, 0.04, 0.02, 0.03])
    assert stats.report()["latency_ms"] == {"p50": 30.0, "p95": 48.0, "p99": 49.6}
    assert Stats(latencies=[0.02]).report()["latency_ms"] == {"p50": 20.0, "p95": 20.0, "p99": 20.0}
    assert Stats().report()["latency_ms"] == {"p50": 0.0, "p95": 0.0, "p99": 0.0}


@pytest.mark.slow
def test_planted_faulty_chargers_and_silenced_devices_open_exactly_their_alerts(database, live_server_factory) -> None:
    server = live_server_factory()
    report = run(loadgen_options(server, database, devices=150, seed=5, silent_rate=0.05, duplicate_rate=0,
                                 out_of_order_rate=0, late_rate=0, scopes=["ingest", "read", "admin"]),
                 Console(quiet=True))

    verification = report["verification"]
    assert verification["passed"], verification["problems"]
    alerts = verification["alerts"]
    assert alerts["checked"] and alerts["faulty_charger"] == alerts["planted_faulty_charging"] > 0
    assert alerts["device_silent"] == len(report["silent_devices"]) > 0
    with psycopg.connect(database.url) as conn:
        opened = dict(conn.execute("SELECT rule, count(*) FROM telemetry.alerts WHERE state = 'open' "
                                   "GROUP BY rule").fetchall())
    assert opened["faulty_charger"] == alerts["faulty_charger"]
    assert opened["device_silent"] == len(report["silent_devices"])


def test_the_diagnosis_names_the_rows_that_differ_from_the_raw_readings_and_tells_late_from_lost(
        client, keys, conn, database, edition) -> None:
    """What a failed verification reports about per-vehicle answers that are off: the ten-minute and
    hourly rows that differ from the raw readings, what the refresh job has still to process, and
    whether one more run of it mends the answers. A late reading is mended; a ten-minute row made to
    miss a reading stands for one the aggregates lost."""
    assert client.put("/v1/vehicles/EV-00001/meter", json={"meterId": "MTR-00001"},
                      headers=Keys.header(keys.ingest)).status_code == 200
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    times = [hour + timedelta(minutes=m) for m in range(60)]
    ingest_rows(conn, meters=[("MTR-00001", t, 0.1, 230.0) for t in times],
                vehicles=[("EV-00001", t, 50.0, 0.09, 30.0) for t in times])
    assert run_refresh_policies(conn) == (1 if edition == "community" else 0)
    for level in ("10m", "hourly"):
        assert aggregate_gaps(conn, "vehicle", ["EV-00001"], level) == []
        assert aggregate_gaps(conn, "meter", ["MTR-00001"], level) == []
    with pytest.raises(ValueError):
        aggregate_gaps(conn, "vehicle", ["EV-00001"], "6h")

    slot = hour + timedelta(minutes=30)
    client.headers.update(Keys.header(keys.read))
    window = {"from": iso(slot), "to": iso(slot + timedelta(minutes=10))}
    stamp = f"{slot:%Y-%m-%d %H:%M}Z"
    # A late reading in that slot: the rows hold it after the next refresh (Community), at once (Apache).
    ingest_rows(conn, vehicles=[("EV-00001", slot + timedelta(minutes=4, seconds=30), 50.0, 0.05, 30.0)])
    want = {"EV-00001": (1.0, 0.09 * 10 + 0.05)}
    if edition == "community":
        late = _diagnose(database.url, client, window, want)
        assert late.startswith(
            "diagnosis of the 1 vehicles whose analytics differ: "
            f"1 10m rows differ from the raw readings (EV-00001 {stamp}: 11 raw, 10 in the row); "
            f"1 hourly rows differ from the raw readings (EV-00001 {hour:%Y-%m-%d %H:%M}Z: 61 raw, 60 in the row); "), late
        pending = re.search(r"; (\d+) invalidations and (\d+) hours of the running sums pending; ", late)
        assert pending and int(pending[1]) >= 1 and int(pending[2]) == 1, late
        assert late.endswith("; after one more refresh 1 of 1 answer right (counted late, not lost)"), late
    assert aggregate_gaps(conn, "vehicle", ["EV-00001"]) == []

    rows = "telemetry.vehicle_energy_10m"
    if edition == "community":  # the continuous aggregate's materialized hypertable
        rows = "{}.{}".format(*conn.execute(
            """SELECT h.schema_name, h.table_name FROM _timescaledb_catalog.continuous_agg a
               JOIN _timescaledb_catalog.hypertable h ON h.id = a.mat_hypertable_id
               WHERE a.user_view_schema = 'telemetry' AND a.user_view_name = 'vehicle_energy_10m'""").fetchone())
    lost = conn.execute(f"UPDATE {rows} SET readings = readings - 1, kwh_delivered_dc = kwh_delivered_dc - 0.05 "
                        "WHERE vehicle_id = 'EV-00001' AND bucket = %s", (slot,))
    assert lost.rowcount == 1
    assert aggregate_gaps(conn, "vehicle", ["EV-00001"]) == [("EV-00001", slot, 11, 10)]
    assert aggregate_gaps(conn, "vehicle", ["EV-00001"], "hourly") == []
    assert client.get("/v1/analytics/performance/EV-00001", params=window).json()["vehicleReadings"] == 10
    diagnosis = _diagnose(database.url, client, window, want)
    assert diagnosis.startswith(
        "diagnosis of the 1 vehicles whose analytics differ: "
        f"1 10m rows differ from the raw readings (EV-00001 {stamp}: 11 raw, 10 in the row); "
        "0 hourly rows differ from the raw readings (none); "), diagnosis
    assert diagnosis.endswith(
        "; 0 invalidations and 0 hours of the running sums pending; "
        "after one more refresh 0 of 1 answer right (the aggregates miss readings)" if edition == "community"
        else "; the Apache edition's aggregate tables are written by the ingest: there is no refresh to run"), diagnosis
