"""The mock EnergyGrid vendor behaves exactly like the protocol; the connector signs correctly,
survives faults and stores every device exactly once."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from litestar.testing import TestClient

from api.energygrid import PullConfig, default_serials, pull_once, sign
from loadgen.energygrid_mock import MockConfig, create_mock_app, dropping_connections
from api.server.process import free_port
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
    from datetime import UTC, datetime

    devices = [app.state.mock.device(sn, datetime.now(UTC)) for sn in default_serials()]
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
        config = PullConfig(url=vendor.url, serials=tuple(default_serials(50)), min_interval_s=0.02,
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
