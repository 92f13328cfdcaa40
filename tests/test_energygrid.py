"""The mock EnergyGrid vendor behaves exactly like the protocol; the connector signs correctly,
survives faults, reads power in its unit, skips malformed items, keeps what it fetched through a run
of failures and a database outage, and stores every device exactly once; the API serves the stored
readings."""

from __future__ import annotations

import hashlib
import json
import math
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import uvicorn
from litestar.testing import TestClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.server.process import free_port
from energygrid.connector import PullConfig, poll, pull_once, store
from energygrid.mock import MALFORMED, MockConfig, create_mock_app, dropping_connections
from energygrid.protocol import DeviceReading, MalformedItem, format_power, parse_device, parse_power, serials, sign
from tests.fix_api import Keys
from tests.fix_db import Database

PATH = "/device/real/query"
TOKEN = "interview_token_123"


def signed(token: str = TOKEN, path: str = PATH) -> dict[str, str]:
    timestamp = str(int(time.time() * 1000))
    return {"timestamp": timestamp, "signature": hashlib.md5(f"{path}{token}{timestamp}".encode()).hexdigest()}


@pytest.fixture
def mock() -> TestClient:
    with TestClient(create_mock_app(MockConfig(min_interval_s=1.0))) as client:
        yield client


def test_the_signature_is_md5_of_path_token_and_timestamp() -> None:
    expected = hashlib.md5(b"/device/real/query" + b"interview_token_123" + b"1732270000000").hexdigest()
    assert sign(PATH, TOKEN, "1732270000000") == expected
    assert expected == "" + expected.lower() and len(expected) == 32


def test_a_signed_request_gets_the_devices(mock: TestClient) -> None:
    response = mock.post(PATH, json={"sn_list": ["SN-000", "SN-499", "SN-042"]}, headers=signed())
    assert response.status_code == 200
    data = response.json()["data"]
    assert [d["sn"] for d in data] == ["SN-000", "SN-499", "SN-042"]
    for device in data:
        value, unit = device["power"].split(" ")
        assert unit == "kW" and float(value) >= 0
        assert device["status"] in ("Online", "Offline")
        assert "T" in device["last_updated"]


def test_a_wrong_signature_is_401(mock: TestClient) -> None:
    headers = signed()
    headers["signature"] = "0" * 32
    response = mock.post(PATH, json={"sn_list": ["SN-000"]}, headers=headers)
    assert response.status_code == 401 and "error" in response.json()
    time.sleep(1.05)
    assert mock.post(PATH, json={"sn_list": ["SN-000"]}, headers=signed(token="other")).status_code == 401


@pytest.mark.parametrize("missing", ["timestamp", "signature"])
def test_a_missing_header_is_401(mock: TestClient, missing: str) -> None:
    headers = signed()
    del headers[missing]
    response = mock.post(PATH, json={"sn_list": ["SN-000"]}, headers=headers)
    assert response.status_code == 401 and response.json()["error"]


def test_eleven_serials_or_no_list_is_400(mock: TestClient) -> None:
    response = mock.post(PATH, json={"sn_list": [f"SN-{i:03d}" for i in range(11)]}, headers=signed())
    assert response.status_code == 400 and "10" in response.json()["error"]
    time.sleep(1.05)
    assert mock.post(PATH, json={}, headers=signed()).status_code == 400


def test_a_second_request_within_the_second_is_429_before_authentication(mock: TestClient) -> None:
    assert mock.post(PATH, json={"sn_list": ["SN-000"]}, headers=signed()).status_code == 200
    unsigned = mock.post(PATH, json={"sn_list": ["SN-000"]})
    assert unsigned.status_code == 429
    assert unsigned.json() == {"error": "Too Many Requests. Limit: 1 req/sec."}
    time.sleep(1.05)
    assert mock.post(PATH, json={"sn_list": ["SN-001"]}, headers=signed()).status_code == 200


def test_about_ten_percent_of_devices_are_offline() -> None:
    app = create_mock_app(MockConfig())
    devices = [app.state.mock.device(sn, datetime.now(UTC)) for sn in serials()]
    offline = sum(d["status"] == "Offline" for d in devices)
    assert 25 <= offline <= 80


class MockServer:
    def __init__(self, config: MockConfig) -> None:
        self.port = free_port()
        self.app = create_mock_app(config)
        self.server = uvicorn.Server(uvicorn.Config(dropping_connections(self.app), host="127.0.0.1",
                                                    port=self.port, log_level="error", http="h11"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def faulty_vendor() -> MockServer:
    # A fast limit keeps the test short; the real one-second limit is measured by `make bench`.
    server = MockServer(MockConfig(min_interval_s=0.05, fail_rate=0.15, latency_ms=30, drop_rate=0.05,
                                   report_every_s=3600))
    yield server
    server.stop()


def test_with_faults_every_device_is_fetched_and_stored_exactly_once(database: Database, faulty_vendor,
                                                                       tmp_path: Path) -> None:
    config = PullConfig(url=faulty_vendor.url, min_interval_s=0.08, timeout_s=2, attempts=8,
                        backoff_initial_s=0.05, backoff_max_s=0.5)
    report = pull_once(config, database.url, tmp_path)

    counts = faulty_vendor.app.state.mock.counts
    assert report.missing == [] and len(report.readings) == 500
    assert counts["500"] > 0 and counts["dropped"] > 0
    # Zero 429s at the vendor's real one-second limit is a pacing figure: `make bench` measures it.
    assert report.stats.retries >= counts["500"] + counts["dropped"]
    assert report.inserted == 500
    with database.connect() as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT serial) FROM telemetry.energygrid_readings").fetchone()
        assert rows == (500, 500)
    export = json.loads(next(tmp_path.glob("energygrid-*.json")).read_text())
    assert export["fetched"] == 500 and len(export["devices"]) == 500
    text = next(tmp_path.glob("energygrid-*.txt")).read_text()
    assert "500 fetched, 0 missing" in text and "online:" in text and "peak" in text

    again = pull_once(config, database.url, None)  # the devices have not reported anew
    assert (again.inserted, again.duplicates) == (0, 500)
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM telemetry.energygrid_readings").fetchone()[0] == 500


def test_the_connector_stops_after_a_run_of_failures(database: Database) -> None:
    vendor = MockServer(MockConfig(min_interval_s=0.01, fail_rate=1.0))
    try:
        config = PullConfig(url=vendor.url, devices=50, min_interval_s=0.02,
                            max_consecutive_failures=5, backoff_initial_s=0.01, backoff_max_s=0.05)
        report = pull_once(config, database.url, None)
    finally:
        vendor.stop()
    assert report.aborted and "5 consecutive failures" in report.aborted
    assert len(report.missing) == 50
    assert sum(vendor.app.state.mock.counts.values()) <= 5 + 3  # the workers in flight stop as well


def test_the_pull_command_exits_non_zero_when_devices_are_left_unfetched(database: Database, tmp_path) -> None:
    vendor = MockServer(MockConfig(min_interval_s=0.01, token="another-token"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "api", "energygrid", "pull", "--url", vendor.url, "--out", str(tmp_path),
             "--devices", "20", "--min-interval", "0.02"],
            capture_output=True, text=True, timeout=60, env={**__import__("os").environ, "DATABASE_URL": database.url},
        )
    finally:
        vendor.stop()
    assert result.returncode == 1
    assert "0 fetched, 20 missing" in result.stdout


# Power values and malformed items (energygrid/protocol.py, shared by the connector and the mock).

@pytest.mark.parametrize(("text", "kw"), [
    ("3420 W", 3.42), ("3.42 kW", 3.42), ("0.00342 MW", 3.42), ("3.42kW", 3.42), (" 12 MW ", 12_000.0),
    ("0 W", 0.0), ("0.00 kW", 0.0), ("1e3 W", 1.0),
])
def test_power_is_read_in_its_unit_as_kw(text: str, kw: float) -> None:
    assert parse_power(text) == kw


@pytest.mark.parametrize(("text", "reason"), [
    ("-1.25 kW", "negative"), ("-0.5 W", "negative"), ("NaN kW", "not finite"), ("inf W", "not finite"),
    ("1e400 kW", "not finite"), ("1e306 MW", "not finite"), ("3.42 kWh", "unknown unit"),
    ("3.42 mw", "unknown unit"), ("3.42", "no unit"), ("", "not a number with a unit"),
    ("kW", "not a number with a unit"), ("3,42 kW", "not a number with a unit"), (3.42, "not a number with a unit"),
])
def test_a_bad_power_is_malformed_with_its_reason(text: object, reason: str) -> None:
    with pytest.raises(MalformedItem) as problem:
        parse_power(text)
    assert problem.value.kind == f"power: {reason}"


@pytest.mark.parametrize("unit", ["W", "kW", "MW"])
def test_power_written_in_any_unit_reads_back_to_10_watts(unit: str) -> None:
    for kw in (0.0, 0.004, 3.42, 7.891, 11.5, 2500.0):
        assert math.isclose(parse_power(format_power(kw, unit)), kw, abs_tol=0.005)
    assert format_power(3.42, "W") == "3420 W" and format_power(3.42) == "3.42 kW"


GOOD_ITEM = {"sn": "SN-042", "power": "3420 W", "status": "Online", "last_updated": "2026-11-22T10:00:00Z"}


def test_a_good_item_is_a_reading_in_kw() -> None:
    assert parse_device(GOOD_ITEM) == DeviceReading("SN-042", 3.42, True, datetime(2026, 11, 22, 10, tzinfo=UTC))
    naive = parse_device({**GOOD_ITEM, "last_updated": "2026-11-22T10:00:00", "status": "Offline"})
    assert naive.last_updated == datetime(2026, 11, 22, 10, tzinfo=UTC) and not naive.online


@pytest.mark.parametrize("reason", list(MALFORMED))
def test_each_malformed_item_the_mock_sends_is_rejected_with_its_reason(reason: str) -> None:
    with pytest.raises(MalformedItem) as problem:
        parse_device(MALFORMED[reason](dict(GOOD_ITEM)))
    assert problem.value.kind == reason
    assert problem.value.sn == (None if reason.startswith("sn:") else "SN-042")


@pytest.mark.parametrize(("item", "kind"), [
    ({k: v for k, v in GOOD_ITEM.items() if k != "power"}, "power: missing"),
    ({**GOOD_ITEM, "power": 3.42}, "power: Expected `str`, got `float`"),
    ({**GOOD_ITEM, "sn": "x" * 65}, "sn: not a valid serial"),
    ({**GOOD_ITEM, "sn": "SN-042\n"}, "sn: not a valid serial"),  # the database's rule refuses it
    ({**GOOD_ITEM, "sn": None}, "sn: not a valid serial"),
    ({**GOOD_ITEM, "last_updated": "2026-13-01T00:00:00Z"}, "last_updated: not an ISO 8601 timestamp"),
    ("SN-042 3.42 kW", "item: not an object"),
])
def test_other_malformed_items_are_rejected_with_their_reason(item: object, kind: str) -> None:
    with pytest.raises(MalformedItem) as problem:
        parse_device(item)
    assert problem.value.kind == kind


def test_the_mock_writes_power_in_the_units_asked_for() -> None:
    now = datetime.now(UTC)
    plain = create_mock_app(MockConfig()).state.mock
    assert {plain.device(sn, now)["power"].split(" ")[1] for sn in serials(100)} == {"kW"}
    mixed = create_mock_app(MockConfig(units=("W", "kW", "MW"))).state.mock
    assert {mixed.device(sn, now)["power"].split(" ")[1] for sn in serials(100)} == {"W", "kW", "MW"}
    for sn in serials(100):  # the same devices, the same power, whatever the unit
        assert math.isclose(parse_power(mixed.device(sn, now)["power"]), plain.reading(sn, now)[0], abs_tol=0.005)
    with pytest.raises(ValueError):
        MockConfig(units=("kWh",))


# The connector against the mock, storing into a real database.

def _pull_config(url: str, **overrides: object) -> PullConfig:
    """Fast pacing for tests (the mock's limit is set lower still); the real one is measured by `make bench`."""
    return PullConfig(**{"url": url, "min_interval_s": 0.02, "backoff_initial_s": 0.01, "backoff_max_s": 0.05,
                         "store_timeout_s": 0.3, "store_backoff_initial_s": 0.05, "store_backoff_max_s": 0.1,
                         **overrides})


@pytest.fixture
def vendor_factory():
    servers: list[MockServer] = []

    def start(**config: object) -> MockServer:
        servers.append(MockServer(MockConfig(**{"min_interval_s": 0.01, **config})))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _stored(database: Database) -> dict[str, tuple[float, bool, datetime]]:
    with database.connect() as conn:
        rows = conn.execute("SELECT serial, power_kw, online, last_updated FROM telemetry.energygrid_readings")
        return {serial: (power, online, updated) for serial, power, online, updated in rows}


def test_power_in_w_kw_and_mw_is_stored_and_served_in_kw(database: Database, vendor_factory, client: TestClient,
                                                         keys: Keys) -> None:
    vendor = vendor_factory(units=("W", "kW", "MW"), report_every_s=10**6)
    report = pull_once(_pull_config(vendor.url, devices=40), database.url, None)

    mock, now = vendor.app.state.mock, datetime.now(UTC)
    assert report.missing == [] and report.malformed == 0 and report.inserted == 40
    assert {mock.reading(sn, now)[3] for sn in serials(40)} == {"W", "kW", "MW"}
    stored = _stored(database)
    assert len(stored) == 40
    for sn in serials(40):
        power_kw, online, updated, _ = mock.reading(sn, now)
        assert math.isclose(stored[sn][0], power_kw, abs_tol=0.005), sn
        assert stored[sn][1:] == (online, updated)
        assert stored[sn][0] < 15  # a device of a few kW, never "3420 W" taken as 3420 kW
    answer = client.get("/v1/energygrid/devices", headers=Keys.header(keys.read))
    assert answer.status_code == 200
    served = {d["sn"]: d for d in answer.json()["devices"]}
    assert sorted(served) == serials(40)
    assert all(served[sn]["power"] == stored[sn][0] for sn in served)


def test_malformed_items_are_counted_and_reported_and_the_good_ones_stored(database: Database, vendor_factory,
                                                                           tmp_path: Path) -> None:
    vendor = vendor_factory(malformed_rate=0.2, units=("W", "kW", "MW"), report_every_s=10**6)
    report = pull_once(_pull_config(vendor.url, devices=200), database.url, tmp_path)

    sent = vendor.app.state.mock.malformed
    bad_serials = sorted({sn for sn, _ in sent})
    assert len(sent) >= 10 and len({reason for _, reason in sent}) >= 4
    assert report.malformed == len(sent) and report.aborted is None
    assert dict(report.stats.malformed) == {reason: sum(r == reason for _, r in sent) for _, reason in sent}
    # A device whose item was malformed has no reading this time: it is left unfetched, the others are stored.
    assert report.missing == bad_serials and report.exit_status == 1
    assert sorted(_stored(database)) == sorted(set(serials(200)) - set(bad_serials))
    assert report.inserted == 200 - len(bad_serials)
    export = json.loads(next(tmp_path.glob("energygrid-*.json")).read_text())
    assert export["malformed"] == len(sent) and sum(export["malformed_reasons"].values()) == len(sent)
    assert {(i["sn"] or "?", i["reason"].split(" (")[0]) for i in export["malformed_items"]} <= {
        (sn if not r.startswith("sn:") else "?", r) for sn, r in sent}
    text = next(tmp_path.glob("energygrid-*.txt")).read_text()
    assert f"malformed items: {len(sent)} (" in text
    assert f"{200 - len(bad_serials)} fetched, {len(bad_serials)} missing" in text


def test_readings_fetched_before_a_run_of_failures_are_stored_and_exported(database: Database, vendor_factory,
                                                                           tmp_path: Path) -> None:
    # Three answers, then the vendor fails every request: the breaker stops the fetching.
    vendor = vendor_factory(fail_after=3, report_every_s=10**6)
    report = pull_once(_pull_config(vendor.url, devices=80, max_consecutive_failures=4), database.url, tmp_path)

    assert report.aborted and "4 consecutive failures" in report.aborted
    assert len(report.readings) == 30 and len(report.missing) == 50 and report.exit_status == 1
    assert report.inserted == 30 and len(_stored(database)) == 30
    assert set(_stored(database)) == {r.serial for r in report.readings}
    export = json.loads(next(tmp_path.glob("energygrid-*.json")).read_text())
    assert export["fetched"] == 30 and len(export["devices"]) == 30 and export["aborted"]
    assert "ABORTED: 4 consecutive failures" in next(tmp_path.glob("energygrid-*.txt")).read_text()


def test_a_database_away_for_the_whole_cycle_fails_the_run_but_not_the_export(database: Database, vendor_factory,
                                                                              tmp_path: Path) -> None:
    vendor = vendor_factory(report_every_s=10**6)
    nowhere = make_conninfo(database.url, host="127.0.0.1", port=free_port())  # nothing listens there
    started = time.monotonic()
    report = pull_once(_pull_config(vendor.url, devices=20), nowhere, tmp_path)

    assert time.monotonic() - started < 5  # retried within store_timeout_s, then given up
    assert report.stored.error and report.stored.error.startswith("OperationalError")
    assert report.stored.attempts >= 2 and report.stored.waiting == 20 and report.inserted == 0
    assert report.missing == [] and report.exit_status == 1
    export = json.loads(next(tmp_path.glob("energygrid-*.json")).read_text())
    assert len(export["devices"]) == 20 and export["store_error"] and export["waiting"] == 20
    assert "20 readings kept for the next cycle" in next(tmp_path.glob("energygrid-*.txt")).read_text()


class DatabaseOutage:
    """A TCP proxy in front of the test's PostgreSQL: while `up` is false it hangs up on every
    connection at once, as a database that is restarting or unreachable does; then it forwards."""

    def __init__(self, database: Database) -> None:
        target = conninfo_to_dict(database.url)
        self.target = (target["host"], int(target["port"]))
        self.up = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = make_conninfo(database.url, host="127.0.0.1", port=self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_polling_keeps_going_through_a_database_outage_and_stores_every_reading_once(
        database: Database, vendor_factory, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Devices report anew every 0.25 s, so each cycle fetches readings the next cycles will not see again:
    # those of the cycles the database missed must wait in memory and be stored later, once each.
    vendor = vendor_factory(report_every_s=0.25)
    outage = DatabaseOutage(database)
    statuses: list[int] = []
    config = _pull_config(vendor.url, devices=20)
    poller = threading.Thread(target=lambda: statuses.append(poll(config, outage.url, tmp_path, every_s=0.4,
                                                                  cycles=4)))
    try:
        poller.start()
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("energygrid-*.json")) and time.monotonic() < deadline:
            time.sleep(0.01)
        outage.up = True  # the first cycle has failed to store; the database comes back
        poller.join(20)
    finally:
        outage.close()
    assert not poller.is_alive() and statuses == [0]

    exports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("energygrid-*.json"))]
    assert len(exports) == 4
    assert exports[0]["store_error"].startswith("OperationalError") and exports[0]["inserted"] == 0
    assert exports[-1]["store_error"] is None and exports[-1]["waiting"] == 0
    first_stored = next(e for e in exports if e["store_error"] is None)
    assert first_stored["carried_over"] > 0  # readings of the failed cycle(s), fetched no more since
    fetched = {(d["sn"], datetime.fromisoformat(d["last_updated"])) for e in exports for d in e["devices"]}
    with database.connect() as conn:
        rows = conn.execute("SELECT serial, last_updated FROM telemetry.energygrid_readings").fetchall()
    assert len(rows) == len(set(rows)) and set(rows) == fetched
    assert sum(e["inserted"] for e in exports) == len(fetched)
    assert "kept for the next cycle" in capsys.readouterr().out


# The stored readings over HTTP.

def _reading(sn: str, power_kw: float, at: datetime, online: bool = True) -> DeviceReading:
    return DeviceReading(sn, power_kw, online, at)


@pytest.fixture
def stored_readings(database: Database) -> datetime:
    now = datetime.now(UTC).replace(microsecond=0)
    store(database.url, [
        _reading("SN-001", 9.0, now - timedelta(hours=30)),
        _reading("SN-001", 1.5, now - timedelta(hours=2)),
        _reading("SN-001", 3.42, now - timedelta(minutes=1)),
        _reading("SN-002", 0.0, now - timedelta(hours=50), online=False),
        _reading("SN-003", 7.25, now - timedelta(minutes=3)),
    ])
    return now


def test_the_devices_endpoint_answers_the_latest_reading_of_each_device(client: TestClient, keys: Keys,
                                                                       stored_readings: datetime) -> None:
    now = stored_readings
    answer = client.get("/v1/energygrid/devices", headers=Keys.header(keys.read))
    assert answer.status_code == 200
    devices = answer.json()["devices"]
    assert [(d["sn"], d["power"], d["status"]) for d in devices] == [
        ("SN-001", 3.42, "Online"), ("SN-002", 0.0, "Offline"), ("SN-003", 7.25, "Online")]
    assert datetime.fromisoformat(devices[0]["lastUpdated"]) == now - timedelta(minutes=1)
    assert datetime.fromisoformat(devices[1]["lastUpdated"]) == now - timedelta(hours=50)
    assert all(datetime.fromisoformat(d["fetchedAt"]) <= datetime.now(UTC) for d in devices)


def test_the_devices_endpoint_answers_an_empty_list_before_any_pull(client: TestClient, keys: Keys) -> None:
    answer = client.get("/v1/energygrid/devices", headers=Keys.header(keys.read))
    assert answer.status_code == 200 and answer.json() == {"devices": []}


def test_a_device_s_readings_default_to_the_last_24_hours(client: TestClient, keys: Keys,
                                                          stored_readings: datetime) -> None:
    answer = client.get("/v1/energygrid/devices/SN-001/readings", headers=Keys.header(keys.read))
    assert answer.status_code == 200
    body = answer.json()
    assert body["sn"] == "SN-001" and body["next"] is None
    assert [r["power"] for r in body["readings"]] == [1.5, 3.42]
    window = datetime.fromisoformat(body["to"]) - datetime.fromisoformat(body["from"])
    assert window == timedelta(hours=24)


def test_a_device_s_readings_in_a_window_with_an_offset_and_in_pages(client: TestClient, keys: Keys,
                                                                     stored_readings: datetime) -> None:
    now, header = stored_readings, Keys.header(keys.read)
    start = (now - timedelta(hours=31)).astimezone(timezone(timedelta(hours=2))).isoformat()  # +02:00
    params = {"from": start, "to": now.isoformat()}
    body = client.get("/v1/energygrid/devices/SN-001/readings", params=params, headers=header).json()
    assert [r["power"] for r in body["readings"]] == [9.0, 1.5, 3.42]
    assert datetime.fromisoformat(body["from"]) == now - timedelta(hours=31)

    first = client.get("/v1/energygrid/devices/SN-001/readings", params={**params, "limit": 2}, headers=header).json()
    assert [r["power"] for r in first["readings"]] == [9.0, 1.5]
    assert datetime.fromisoformat(first["next"]) == now - timedelta(minutes=1)
    rest = client.get("/v1/energygrid/devices/SN-001/readings", params={**params, "from": first["next"], "limit": 2},
                      headers=header).json()
    assert [r["power"] for r in rest["readings"]] == [3.42] and rest["next"] is None

    # A known device with nothing in the window: an empty list, not 404.
    old = {"from": (now - timedelta(days=9)).isoformat(), "to": (now - timedelta(days=8)).isoformat()}
    empty = client.get("/v1/energygrid/devices/SN-002/readings", params=old, headers=header)
    assert empty.status_code == 200 and empty.json()["readings"] == []


def test_readings_of_an_unknown_device_are_404(client: TestClient, keys: Keys, stored_readings: datetime) -> None:
    answer = client.get("/v1/energygrid/devices/SN-999/readings", headers=Keys.header(keys.read))
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


@pytest.mark.parametrize("params", [
    {"from": "2026-11-22T10:00:00Z", "to": "2026-11-22T09:00:00Z"},
    {"from": "2026-11-22T10:00:00Z", "to": "2026-11-22T10:00:00Z"},
    {"from": "2026-11-22T10:00:00"},
    {"to": "yesterday"},
    {"limit": "0"},
])
def test_a_bad_window_is_422(client: TestClient, keys: Keys, stored_readings: datetime, params: dict) -> None:
    answer = client.get("/v1/energygrid/devices/SN-001/readings", params=params, headers=Keys.header(keys.read))
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_input"


def test_a_bad_serial_is_422_not_a_query(client: TestClient, keys: Keys) -> None:
    answer = client.get("/v1/energygrid/devices/SN%20000!/readings", headers=Keys.header(keys.read))
    assert answer.status_code == 422


@pytest.mark.parametrize("path", ["/v1/energygrid/devices", "/v1/energygrid/devices/SN-001/readings"])
def test_energygrid_reads_need_the_read_scope(client: TestClient, keys: Keys, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers=Keys.header(keys.ingest)).status_code == 403
    assert client.get(path, headers=Keys.header(keys.admin)).status_code == 403


def test_the_serial_rule_is_the_platforms_device_id_rule() -> None:
    from api.readings import DEVICE_ID_PATTERN
    from energygrid.protocol import SERIAL_PATTERN

    assert SERIAL_PATTERN == DEVICE_ID_PATTERN
