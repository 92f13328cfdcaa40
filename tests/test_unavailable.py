"""An unreachable database or a saturated pool gives 503 with Retry-After, quickly, never a hang or a 500."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

import psycopg
from litestar.testing import TestClient

from api.server.app import create_app
from api.settings import Settings
from api.server.process import free_port
from tests.fix_api import Keys
from tests.fix_readings import meter


def test_an_unreachable_database_gives_503_with_retry_after() -> None:
    settings = Settings.from_env({}, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/telemetry",
                                 pool_timeout_s=0.5, maintenance_interval_s=0)
    with TestClient(create_app(settings), timeout=10) as client:
        response = client.post("/v1/telemetry/meters", json=[meter(0)],
                               headers=Keys.header("etk_000000000000_secret"))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"] == "unavailable"
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        assert client.get("/health/live").status_code == 200


def test_a_saturated_pool_gives_503_and_the_held_request_still_succeeds(
    database, keys: Keys, live_server_factory
) -> None:
    server = live_server_factory(DB_POOL_MIN="1", DB_POOL_MAX="1", DB_POOL_TIMEOUT="0.5")
    headers = Keys.header(keys.ingest)
    with httpx.Client(base_url=server.url, headers=headers, timeout=20) as client, \
            ThreadPoolExecutor(1) as executor, psycopg.connect(database.url) as blocker:
        assert client.get("/health/ready").status_code == 200  # the pool's one connection is up
        # Holds up every ingest in its transaction, and with it the pool's only connection.
        blocker.execute("LOCK TABLE telemetry.meter_state IN ACCESS EXCLUSIVE MODE")
        held = executor.submit(client.post, "/v1/telemetry/meters", json=[meter(0)])
        _wait_for_lock_waiter(blocker)
        refused = client.post("/v1/telemetry/meters", json=[meter(1)])
        blocker.rollback()
        assert held.result().status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    with psycopg.connect(database.url) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry.meter_readings").fetchone()[0] == 1


def _wait_for_lock_waiter(blocker: psycopg.Connection) -> None:
    with psycopg.connect(blocker.info.dsn, autocommit=True) as observer:
        for _ in range(200):
            waiting = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()[0]
            if waiting:
                return
            time.sleep(0.05)
    raise AssertionError("the held request never reached the lock")
