"""Read replicas: a real hot standby (pg_basebackup -R from the test primary) serves the analytics and
status reads with the primary's answers once caught up; a paused replay, a replica too far behind or a
stopped replica sends them to the primary, never a 5xx; writes always go to the primary."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from litestar.testing import TestClient

from api.db.replica import ReadRouter
from api.server.app import create_app
from api.settings import PROJECT_ROOT
from tests.fix_api import Keys, settings_for
from tests.fix_db import PG_BIN, Database
from tests.fix_readings import NOW, iso
from tests.fix_replica import REPLAY_WAIT_S, Standby, as_server_account, hand_over

MAX_LAG_S = 1.0
VEHICLES = ("EV-R0", "EV-R1", "EV-R2")
START = NOW.replace(minute=0, second=0) - timedelta(hours=8)
WINDOW = {"from": iso(START - timedelta(minutes=17)), "to": iso(NOW + timedelta(minutes=1))}
READS = [
    *(f"/v1/analytics/performance/{v}" for v in VEHICLES),
    *(f"/v1/analytics/vehicles/{v}/series" for v in VEHICLES),
    "/v1/analytics/fleet",
]
STATUS = [*(f"/v1/vehicles/{v}/status" for v in VEHICLES), *(f"/v1/meters/M-{v}/status" for v in VEHICLES)]


def history(minutes: int, offset: timedelta = timedelta(0), seed: int = 0) -> list[dict]:
    """Readings of three linked vehicle/meter pairs, one a minute from START + offset."""
    body = []
    for n, vehicle_id in enumerate(VEHICLES):
        for i in range(minutes):
            at = iso(START + offset + timedelta(minutes=i, seconds=n))
            ac = 0.2 + ((i * 7 + n + seed) % 11) / 100
            body.append({"meterId": f"M-{vehicle_id}", "kwhConsumedAc": ac, "voltage": 230.0, "timestamp": at})
            body.append({"vehicleId": vehicle_id, "soc": 20 + i % 70, "kwhDeliveredDc": ac * (0.7 + n / 10),
                         "batteryTemp": 25 + i % 9, "timestamp": at})
    return body


def write(client: TestClient, keys: Keys, body: list[dict]) -> None:
    response = client.post("/v1/telemetry", json=body, headers=Keys.header(keys.ingest))
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] == len(body)


def get(client: TestClient, keys: Keys, path: str) -> httpx.Response:
    params = WINDOW if path.startswith("/v1/analytics") else None
    response = client.get(path, params=params, headers=Keys.header(keys.read))
    assert response.status_code == 200, (path, response.status_code, response.text)
    return response


def wait_for(client: TestClient, keys: Keys, served_by: str, path: str = READS[0]) -> httpx.Response:
    """Ask until the answer comes from ``served_by``; every answer on the way is a 200."""
    deadline = time.monotonic() + REPLAY_WAIT_S
    while (response := get(client, keys, path)).headers["X-Served-By"] != served_by:
        assert time.monotonic() < deadline, f"never served by the {served_by}: {dict(response.headers)}"
        time.sleep(0.1)
    return response


@pytest.fixture
def primary_client(database: Database) -> Iterator[TestClient]:
    """The API without a replica: every read on the primary."""
    with TestClient(create_app(settings_for(database)), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def replica_client(database: Database, standby: Standby) -> Iterator[TestClient]:
    """The API with DATABASE_READ_URL on the standby, skipping it when more than MAX_LAG_S behind."""
    settings = settings_for(database, database_read_url=standby.url(database, app=True), max_replica_lag_s=MAX_LAG_S)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def loaded(primary_client: TestClient, keys: Keys, standby: Standby, database: Database) -> Keys:
    """Six hours of three linked pairs on the primary, replayed by the standby."""
    for vehicle_id in VEHICLES:
        response = primary_client.put(f"/v1/vehicles/{vehicle_id}/meter", json={"meterId": f"M-{vehicle_id}"},
                                      headers=Keys.header(keys.ingest))
        assert response.status_code == 200, response.text
    write(primary_client, keys, history(6 * 60))
    standby.wait_until_replayed(database)
    return keys


def answers(client: TestClient, keys: Keys, paths: list[str]) -> dict[str, object]:
    return {path: get(client, keys, path).json() for path in paths}


def test_without_a_replica_every_read_says_primary(primary_client: TestClient, loaded: Keys) -> None:
    for path in [*READS, *STATUS, "/v1/energygrid/devices"]:
        response = get(primary_client, loaded, path)
        assert response.headers["X-Served-By"] == "primary"
        assert "X-Replica-Lag-S" not in response.headers and "X-Replica-Skipped" not in response.headers


def test_replica_answers_equal_the_primary_once_caught_up(primary_client: TestClient, replica_client: TestClient,
                                                          loaded: Keys) -> None:
    wait_for(replica_client, loaded, "replica")
    want = answers(primary_client, loaded, READS + STATUS)
    for path in READS + STATUS + ["/v1/energygrid/devices"]:
        response = get(replica_client, loaded, path)
        assert response.headers["X-Served-By"] == "replica", (path, dict(response.headers))
        assert 0 <= float(response.headers["X-Replica-Lag-S"]) <= MAX_LAG_S
        if path in want:
            assert response.json() == want[path], path
    fleet = want["/v1/analytics/fleet"]
    assert fleet["vehicles"] == len(VEHICLES) and fleet["vehicleReadings"] == len(VEHICLES) * 6 * 60
    # A 404 says who served it too.
    missing = replica_client.get("/v1/vehicles/EV-NONE/status", headers=Keys.header(loaded.read))
    assert missing.status_code == 404 and missing.headers["X-Served-By"] == "replica"


def test_a_paused_replay_falls_back_to_the_primary_and_resuming_brings_the_replica_back(
        primary_client: TestClient, replica_client: TestClient, loaded: Keys, standby: Standby,
        database: Database) -> None:
    performance = READS[0]
    before = wait_for(replica_client, loaded, "replica", performance).json()
    with standby.superuser(database) as replica_db:
        replica_db.execute("SELECT pg_wal_replay_pause()")
        try:
            # Thirty new minutes for every device, written on the primary while the replay stands still.
            write(primary_client, loaded, history(30, offset=timedelta(hours=6), seed=3))
            (stale_count,) = replica_db.execute(
                "SELECT count(*) FROM telemetry.vehicle_readings WHERE vehicle_id = %s", (VEHICLES[0],)).fetchone()
            assert stale_count == 6 * 60  # the replica really lacks them

            fallback = wait_for(replica_client, loaded, "primary", performance)
            assert fallback.headers["X-Replica-Skipped"] in ("paused", "lagging"), dict(fallback.headers)
            assert fallback.json()["vehicleReadings"] == before["vehicleReadings"] + 30
            assert fallback.json() == get(primary_client, loaded, performance).json()
            status = get(replica_client, loaded, STATUS[0])
            assert status.headers["X-Served-By"] == "primary"
            assert status.json() == get(primary_client, loaded, STATUS[0]).json()
        finally:
            replica_db.execute("SELECT pg_wal_replay_resume()")

    back = wait_for(replica_client, loaded, "replica", performance)
    assert back.json() == get(primary_client, loaded, performance).json()
    assert back.json()["vehicleReadings"] == before["vehicleReadings"] + 30


def test_a_stopped_replica_falls_back_to_the_primary_without_errors(
        primary_client: TestClient, replica_client: TestClient, loaded: Keys, standby: Standby,
        database: Database) -> None:
    wait_for(replica_client, loaded, "replica")
    want = answers(primary_client, loaded, READS + STATUS)
    standby.stop()
    try:
        # Every answer while the replica goes away is a 200 with the primary's numbers (get asserts 200).
        fallback = wait_for(replica_client, loaded, "primary")
        assert fallback.headers["X-Replica-Skipped"] in ("unreachable", "failed"), dict(fallback.headers)
        for path in READS + STATUS:
            response = get(replica_client, loaded, path)
            assert response.headers["X-Served-By"] == "primary"
            assert response.json() == want[path], path
        # Writes never needed the replica.
        write(primary_client, loaded, history(5, offset=timedelta(hours=6, minutes=30), seed=5))
    finally:
        standby.start()
    standby.wait_until_replayed(database)
    back = wait_for(replica_client, loaded, "replica")
    assert back.json() == get(primary_client, loaded, READS[0]).json()


def test_every_worker_of_a_served_api_reads_from_the_replica(live_server_factory, loaded: Keys,
                                                            standby: Standby, database: Database) -> None:
    """`python -m api serve` with two workers: each opens its own replica pool and lag watcher."""
    server = live_server_factory(workers=2, DATABASE_READ_URL=standby.url(database, app=True))
    served = []
    deadline = time.monotonic() + REPLAY_WAIT_S
    while served[-20:] != ["replica"] * 20:
        assert time.monotonic() < deadline, served[-40:]
        response = httpx.get(f"{server.url}{STATUS[0]}", headers=Keys.header(loaded.read), timeout=10)
        assert response.status_code == 200, response.text
        served.append(response.headers["X-Served-By"])
    want = httpx.get(f"{server.url}{READS[0]}", params=WINDOW, headers=Keys.header(loaded.read), timeout=10)
    assert want.headers["X-Served-By"] == "replica" and want.json()["vehicleReadings"] == 6 * 60


def test_a_replica_url_on_a_primary_is_never_used(database: Database, keys: Keys) -> None:
    """A DATABASE_READ_URL that is not in recovery (a promoted replica, or a mistake) is skipped."""
    settings = settings_for(database, database_read_url=database.app_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + REPLAY_WAIT_S
        while (response := get(client, keys, "/v1/analytics/fleet")).headers.get("X-Replica-Skipped") == "unmeasured":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert response.headers["X-Served-By"] == "primary"
        assert response.headers["X-Replica-Skipped"] == "not_in_recovery"


@pytest.mark.parametrize(("measured", "served_by", "skipped", "lag"), [
    ((True, False, 0.0, False), "replica", None, "0.00"),
    ((True, False, 0.4, True), "replica", None, "0.40"),
    ((True, False, 7.25, True), "primary", "lagging", "7.25"),
    ((True, True, 0.2, True), "primary", "paused", "0.20"),  # paused with WAL pending never catches up
    ((True, True, 0.0, False), "replica", None, "0.00"),  # paused with nothing pending is current
    ((True, False, None, True), "primary", "unmeasured", None),
    ((False, None, None, None), "primary", "not_in_recovery", None),
])
def test_the_lag_rule(measured: tuple, served_by: str, skipped: str | None, lag: str | None) -> None:
    router = ReadRouter(primary=None, replica=None, max_lag_s=5.0)
    router.observe(*measured)
    headers = router.headers
    assert headers.get("X-Served-By") == served_by
    assert headers.get("X-Replica-Skipped") == skipped
    assert headers.get("X-Replica-Lag-S") == lag


def test_the_replica_refuses_writes_and_the_api_never_sends_it_any(replica_client: TestClient, loaded: Keys,
                                                                   standby: Standby, database: Database) -> None:
    wait_for(replica_client, loaded, "replica")
    write(replica_client, loaded, history(2, offset=timedelta(hours=7), seed=9))
    response = replica_client.put("/v1/vehicles/EV-R9/meter", json={"meterId": "M-R9"},
                                  headers=Keys.header(loaded.ingest))
    assert response.status_code == 200, response.text
    standby.wait_until_replayed(database)
    with standby.superuser(database) as replica_db:
        (readings,) = replica_db.execute("SELECT count(*) FROM telemetry.vehicle_readings").fetchone()
        assert readings == len(VEHICLES) * (6 * 60 + 2)
        assert replica_db.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_the_compose_replica_scripts_make_a_streaming_standby(database: Database, tmp_path: Path) -> None:
    """docker/primary-replication.sh (the primary's init script) and docker/replica-entrypoint.sh (the
    db-replica service), run against the test primary: the standby streams and serves the data."""
    server = database.server
    env = {**os.environ, "PATH": f"{PG_BIN}:{os.environ['PATH']}", "PGHOST": server.host, "PGPORT": str(server.port),
           "POSTGRES_USER": server.user, "PGDATA": server.datadir, "REPLICATION_PASSWORD": "test-replicator"}
    subprocess.run(["sh", str(PROJECT_ROOT / "docker" / "primary-replication.sh")], env=env, check=True,
                   capture_output=True, timeout=60)
    with database.connect(autocommit=True) as conn:
        assert conn.execute("SELECT rolreplication FROM pg_roles WHERE rolname = 'replicator'").fetchone() == (True,)
        conn.execute("INSERT INTO telemetry.meter_state VALUES ('M-COMPOSE', now(), 1.5, 230, now())")
        (target,) = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert "host replication replicator all scram-sha-256" in Path(server.datadir, "pg_hba.conf").read_text()

    standby = Standby(server, tmp_path, slot="unused")
    hand_over(tmp_path)
    entrypoint = ["env", f"PATH={env['PATH']}", f"PGDATA={standby.datadir}", f"PRIMARY_HOST={server.host}",
                  f"PRIMARY_PORT={server.port}", "REPLICATION_PASSWORD=test-replicator",
                  "sh", str(PROJECT_ROOT / "docker" / "replica-entrypoint.sh"),
                  # The test primary's limits, on a port and socket of its own, instead of Compose's.
                  "-p", str(standby.port), "-k", str(standby.socketdir), "-c", "listen_addresses=127.0.0.1",
                  "-c", "shared_buffers=128MB", *shlex.split(server.postgres_options)]
    with open(standby.logfile, "wb") as log:
        # A session of its own: the signal at the end reaches PostgreSQL under runuser.
        process = subprocess.Popen(as_server_account(entrypoint), stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + REPLAY_WAIT_S
        while True:
            try:
                with standby.superuser(database) as conn:
                    if conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:
                        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
                        assert conn.execute("SELECT kwh_consumed_ac FROM telemetry.meter_state "
                                            "WHERE meter_id = 'M-COMPOSE'").fetchone() == (1.5,)
                        break
            except psycopg.OperationalError:
                pass
            assert process.poll() is None, standby.logfile.read_text()
            assert time.monotonic() < deadline, standby.logfile.read_text()
            time.sleep(0.2)
        assert "primary_conninfo" in (standby.datadir / "postgresql.auto.conf").read_text()
    finally:
        os.killpg(process.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        process.wait(timeout=60)
