"""Nothing accepted is lost when the API process dies mid-run or migrations are re-applied during
ingestion: the load generator's verification finds every accepted reading exactly once."""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import datetime, timezone

from pathlib import Path

import httpx
import pytest
from rich.console import Console

from api.schema.migrations import migrate
from loadgen.run import run
from tests.fix_db import SQL_DIR
from tests.fix_loadgen import loadgen_options


def assert_every_reading_stored_once(database, result: dict, readings: int) -> None:
    """Exactly `readings` rows in the database, none failed. A batch whose answer the outage cut may
    have committed: its accepted retry then counts those readings as duplicates, never twice."""
    with database.connect() as conn:
        stored = sum(conn.execute(f"SELECT count(*) FROM telemetry.{table}").fetchone()[0]
                     for table in ("meter_readings", "vehicle_readings"))
    assert stored == readings
    assert result["failed"] == 0
    assert readings - result["ambiguous"] <= result["inserted"] <= readings


@pytest.mark.slow
def test_killing_the_api_mid_run_loses_nothing(database, live_server_factory) -> None:
    server = live_server_factory()
    # 180 simulated minutes paced over 6 s of wall clock, so the run is under way when the API dies.
    options = loadgen_options(server, database, devices=60, mode="simulate", speedup=1800, duration_s=6,
                       batch_size=200, concurrency=2)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run(options, Console(quiet=True))))
    runner.start()
    time.sleep(2.0)
    server.kill()  # requests in flight are cut; the generator retries them
    time.sleep(1.5)
    live_server_factory(port=server.port)
    runner.join(180)

    assert result["verification"]["passed"], result["verification"]["problems"]
    assert_every_reading_stored_once(database, result, 60 * 2 * 180)
    assert result["errors_by_status"].get("connection_error", 0) > 0  # the outage was real


@pytest.mark.slow
def test_migrations_reapplied_during_ingestion_lose_nothing(database, live_server_factory) -> None:
    server = live_server_factory()
    options = loadgen_options(server, database, devices=60, mode="simulate", speedup=1800, duration_s=6, batch_size=200)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run(options, Console(quiet=True))))
    runner.start()
    reports = []
    while runner.is_alive() and len(reports) < 5:
        reports.append(migrate(database.url, SQL_DIR))
    runner.join(180)

    assert len(reports) >= 2 and all(r.applied == () for r in reports)
    # Re-applying the repeatable SQL replaces functions in place: ingests running meanwhile never fail.
    assert "500" not in result["errors_by_status"], result["errors_by_status"]
    assert result["verification"]["passed"], result["verification"]["problems"]
    assert result["failed"] == 0 and result["inserted"] == 60 * 2 * 180


@pytest.mark.slow
def test_a_postgresql_restart_gives_503_then_recovers_and_loses_nothing(database, pg_server,
                                                                          live_server_factory) -> None:
    server = live_server_factory(DB_POOL_TIMEOUT="1")
    options = loadgen_options(server, database, devices=60, mode="simulate", speedup=900, duration_s=12,
                       batch_size=200, concurrency=2)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run(options, Console(quiet=True))))
    runner.start()
    time.sleep(3.0)

    outage_started = time.monotonic()
    pg_server.stop()
    probe_started = time.monotonic()
    # A valid reading (the key was verified before the outage, so it still authenticates): the
    # synchronous path needs the database, and answers 503.
    reading = {"meterId": "PROBE-1", "kwhConsumedAc": 0.1, "voltage": 230.0,
               "timestamp": datetime.now(timezone.utc).isoformat()}
    probe = httpx.post(f"{server.url}/v1/telemetry/meters", json=[reading], timeout=30,
                       headers={"Authorization": f"Bearer {options.api_key}"})
    probe_s = time.monotonic() - probe_started
    time.sleep(2.0)
    pg_server.start()
    outage_s = time.monotonic() - outage_started
    recovered_started = time.monotonic()
    while httpx.get(f"{server.url}/health/ready", timeout=10).status_code != 200:
        assert time.monotonic() - recovered_started < 30, "the API did not recover within 30 s"
        time.sleep(0.1)
    recovery_s = time.monotonic() - recovered_started
    runner.join(180)

    print(f"outage {outage_s:.1f} s, 503 answered in {probe_s:.2f} s, ready again {recovery_s:.2f} s after the "
          f"database; run: {result['errors_by_status']}, {result['retries']} retries")
    assert probe.status_code == 503 and probe.headers["retry-after"] == "1"
    assert probe_s < 10
    assert result["errors_by_status"].get("503", 0) > 0  # the generator did meet the outage
    assert result["verification"]["passed"], result["verification"]["problems"]
    assert_every_reading_stored_once(database, result, 60 * 2 * 180)


def test_errors_and_logs_leak_neither_keys_nor_sql(database, live_server_factory, keys) -> None:
    from api.db.keys import split_key

    server = live_server_factory()
    secret = split_key(keys.all)[1]
    wrong = keys.all[:-4] + "AAAA"
    bodies = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        bodies.append(client.post("/v1/telemetry/meters", json=[{"meterId": "x"}], headers={"Authorization": f"Bearer {wrong}"}))
        bodies.append(client.post("/v1/telemetry/meters", content=b"[{", headers={
            "Authorization": f"Bearer {keys.all}", "Content-Type": "application/json"}))
        bodies.append(client.put("/v1/vehicles/EV-1/meter", json={"meterId": "M-1", "validFrom": "2026-11-22T00:00:00Z"},
                                 headers={"Authorization": f"Bearer {keys.all}"}))
        bodies.append(client.put("/v1/vehicles/EV-1/meter", json={"meterId": "M-2", "validFrom": "2026-11-21T00:00:00Z"},
                                 headers={"Authorization": f"Bearer {keys.all}"}))  # a conflict raised in SQL
        bodies.append(client.get("/v1/analytics/fleet", params={"from": "2026-11-22T00:00:00"},
                                 headers={"Authorization": f"Bearer {keys.all}"}))
    assert [r.status_code for r in bodies] == [401, 422, 200, 409, 422]
    log = server.output()
    for response in bodies:
        text = response.text
        assert secret not in text and "SELECT" not in text and "telemetry." not in text, text
    assert secret not in log and wrong not in log and "SELECT" not in log


def _server_rss_mb(pid: int) -> float:
    """Resident memory of the server and its workers (its process group)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


@pytest.mark.slow
def test_a_flood_of_oversized_and_slow_requests_exhausts_nothing(database, live_server_factory, keys) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.fix_readings import meter

    server = live_server_factory(MAX_BODY_BYTES=str(1024 * 1024), DB_POOL_MAX="4")
    headers = {"Authorization": f"Bearer {keys.ingest}", "Content-Type": "application/json"}
    rss_before = _server_rss_mb(server.process.pid)
    slow = []
    for _ in range(50):  # slowloris: headers promise a large body that trickles in
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /v1/telemetry/meters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + keys.ingest.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n[")
        slow.append(s)
    oversized = b"[" + b",".join([b'{"meterId":"M","kwhConsumedAc":1,"voltage":1,"timestamp":"x"}'] * 80_000) + b"]"
    with ThreadPoolExecutor(8) as pool:
        floods = [pool.submit(httpx.post, f"{server.url}/v1/telemetry/meters", content=oversized, headers=headers,
                              timeout=60) for _ in range(40)]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            normal = [client.post("/v1/telemetry/meters", json=[meter(i)], headers=headers) for i in range(10)]
        answers = []
        for future in floods:
            try:
                answers.append(future.result().status_code)
            except httpx.TransportError:
                answers.append("closed")  # the server may close the connection after the 413
    rss_peak = _server_rss_mb(server.process.pid)
    for s in slow:
        s.close()

    print(f"flood: 40 x {len(oversized) // 1024} KiB bodies -> {sorted(map(str, answers))[:3]}..., 50 slow "
          f"connections held; server memory {rss_before:.0f} -> {rss_peak:.0f} MB; normal requests all 200")
    assert [r.status_code for r in normal] == [200] * 10
    assert set(answers) <= {413, "closed"} and 413 in answers
    assert rss_peak - rss_before < 300, (rss_before, rss_peak)
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM telemetry.meter_readings").fetchone()[0] == 10
