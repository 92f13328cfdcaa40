"""The load generator through the log (asynchronous HTTP and MQTT, real NATS and writers): every
accepted reading is stored exactly once, and a 20 s PostgreSQL outage while devices publish over both
ways in costs them nothing: no failed publish, no 5xx, and the backlog drains into the database."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest
from rich.console import Console

from api.db.keys import create_key, split_key
from api.stream.broker import SET_BROKER_HASH_SQL, broker_hash
from loadgen.fleet import Fleet
from loadgen.run import run
from tests.fix_loadgen import loadgen_options


def mqtt_key(database, nats_server) -> str:
    """An ingest key that may also publish over MQTT: its broker hash stored, NATS's users rewritten."""
    key = create_key(database.url, ["ingest", "read"])[1]
    with database.connect() as conn:
        conn.execute(SET_BROKER_HASH_SQL, (broker_hash(key), split_key(key)[0]))
    subprocess.run([sys.executable, "-m", "api", "broker-users", "--file", str(nats_server.users_file),
                    "--pid-file", str(nats_server.pid_file)], check=True, capture_output=True,
                   env={**os.environ, "DATABASE_URL": database.url, "NATS_URL": nats_server.url})
    return key


def stream_options(server, database, nats_server, key: str, transport: str, **overrides):
    return loadgen_options(server, database, api_key=key, transport=transport, nats_url=nats_server.url,
                           mqtt_url=f"mqtt://127.0.0.1:{nats_server.mqtt_port}", drain_timeout_s=120, **overrides)


def stored_readings(database, first: int, devices: int) -> int:
    meters = [f"MTR-{i:05d}" for i in range(first, first + devices)]
    vehicles = [f"EV-{i:05d}" for i in range(first, first + devices)]
    with database.connect() as conn:
        return (conn.execute("SELECT count(*) FROM telemetry.meter_readings WHERE meter_id = ANY(%s)",
                             (meters,)).fetchone()[0]
                + conn.execute("SELECT count(*) FROM telemetry.vehicle_readings WHERE vehicle_id = ANY(%s)",
                               (vehicles,)).fetchone()[0])


@pytest.mark.parametrize(("transport", "mode"), [("http-async", "simulate"), ("mqtt", "simulate"),
                                                 ("mqtt", "simulate every 5 min"), ("mqtt", "backfill")])
def test_readings_sent_through_the_log_are_stored_exactly_once(transport, mode, database, nats_server,
                                                               writer_factory, live_server_factory) -> None:
    """40 + 40 devices with repeats, shuffles and late readings; a backfill over MQTT sends each device's
    readings in arrays of up to 30, and so do devices that report every 5 minutes (arrays of their 5
    minutes, with their repeats and late readings)."""
    server = live_server_factory(NATS_URL=nats_server.url)
    writer_factory()
    key = mqtt_key(database, nats_server)
    shape = {"simulate": {"mode": "simulate", "speedup": 1800, "duration_s": 4},
             "simulate every 5 min": {"mode": "simulate", "speedup": 1800, "duration_s": 4, "report_every": 5},
             "backfill": {"mode": "backfill", "hours": 2, "batch_size": 30}}[mode]
    report = run(stream_options(server, database, nats_server, key, transport, **shape), Console(quiet=True))

    minutes = report["minutes"]
    assert minutes == 120
    assert report["verification"]["passed"], report["verification"]["problems"]
    assert report["failed"] == report["rejected"] == 0
    assert report["accepted"] == report["sent"] > 40 * 2 * minutes  # the repeats were accepted too ...
    assert stored_readings(database, 0, 40) == 40 * 2 * minutes  # ... and stored once
    assert report["drain"]["drained"]
    # MQTT messages: one a reading; a device's 5 minutes; in a backfill, arrays of a device's readings
    if (transport, mode) == ("mqtt", "simulate"):
        assert report["requests"] == report["sent"]
    if mode == "backfill":
        assert report["requests"] < report["sent"] / 10
    if mode == "simulate every 5 min":  # one message a device every 5 minutes: 80 devices, 24 reports each
        assert report["requests"] == 80 * 120 // 5


@pytest.mark.slow
def test_a_20_s_database_outage_under_mqtt_and_async_http_loses_nothing(database, pg_server, nats_server,
                                                                        writer_factory, live_server_factory) -> None:
    server = live_server_factory(NATS_URL=nats_server.url, DB_POOL_TIMEOUT="1")
    writer = writer_factory(DB_POOL_TIMEOUT="1")
    key = mqtt_key(database, nats_server)
    # Two fleets with their own devices publish at the same time, paced over 26 s: the outage starts
    # 3 s in and ends 3 s before they finish.
    runs = {"mqtt": stream_options(server, database, nats_server, key, "mqtt", devices=50, first_device=0,
                                   mode="simulate", speedup=300, duration_s=26, seed=3),
            "http-async": stream_options(server, database, nats_server, key, "http-async", devices=50,
                                         first_device=1000, mode="simulate", speedup=300, duration_s=26, seed=4,
                                         batch_size=100)}
    reports: dict[str, dict] = {}
    threads = [threading.Thread(target=lambda t=t: reports.update({t: run(runs[t], Console(quiet=True))}))
               for t in runs]
    for thread in threads:
        thread.start()
    time.sleep(3)
    pg_server.stop()
    stopped = time.monotonic()
    time.sleep(20)
    outage_s = time.monotonic() - stopped
    failures_during_outage = writer.metrics().get("telemetry_writer_database_failures_total", 0)
    publishing_through_the_outage = all(thread.is_alive() for thread in threads)
    pg_server.start()
    for thread in threads:
        thread.join(300)

    print({t: (r["errors_by_status"], r["drain"], r["elapsed_s"]) for t, r in reports.items()})
    assert outage_s >= 20 and failures_during_outage > 0  # the writer did meet the outage ...
    assert publishing_through_the_outage  # ... and both generators were publishing all along
    for transport, report in reports.items():
        assert report["failed"] == report["rejected"] == 0, (transport, report)
        assert not any(status.startswith("5") or status == "connection_error"
                       for status in report["errors_by_status"]), (transport, report["errors_by_status"])
        assert report["accepted"] == report["sent"]
        assert report["drain"]["drained"], transport
        assert report["verification"]["passed"], (transport, report["verification"]["problems"])
    assert stored_readings(database, 0, 50) == 50 * 2 * reports["mqtt"]["minutes"]
    assert stored_readings(database, 1000, 50) == 50 * 2 * reports["http-async"]["minutes"]


def test_a_run_that_fails_leaves_no_mqtt_connection_behind(database, nats_server, live_server_factory,
                                                           monkeypatch) -> None:
    """The MQTT connections are processes of their own: a run that fails mid-way (here the readings'
    generation) ends them before the error goes on, instead of leaving them connected in its caller; its
    HTTP client is closed too (an unclosed socket would surface as a warning in a later test)."""
    server = live_server_factory(NATS_URL=nats_server.url)
    key = mqtt_key(database, nats_server)

    def broken(*args, **kwargs):
        raise RuntimeError("the generator failed")

    monkeypatch.setattr(Fleet, "minute", broken)
    options = stream_options(server, database, nats_server, key, "mqtt", mode="simulate", speedup=1800, duration_s=4)
    with pytest.raises(RuntimeError, match="the generator failed"):
        run(options, Console(quiet=True))
    assert [p.name for p in multiprocessing.active_children() if p.name.startswith("mqtt-")] == []
