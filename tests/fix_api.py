"""API fixtures: the Litestar app over a test database, and API keys of each scope."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.auth import create_key
from api.settings import Settings, get_settings
from tests.fix_db import Database


@pytest.fixture
def api_settings(database: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("DATABASE_URL", database.url)
    monkeypatch.setenv("MAINTENANCE_INTERVAL_S", "0")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as test_client:
        yield test_client


class Keys:
    def __init__(self, url: str) -> None:
        self.url = url
        self.ingest = create_key(url, ["ingest"])[1]
        self.read = create_key(url, ["read"])[1]
        self.admin = create_key(url, ["admin"])[1]
        self.all = create_key(url, ["ingest", "read", "admin"])[1]

    @staticmethod
    def header(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys(database: Database) -> Keys:
    return Keys(database.url)


def count_rows(conn: psycopg.Connection) -> dict[str, int]:
    """Rows in every table a request can write to."""
    tables = ("meter_readings", "vehicle_readings", "meter_state", "vehicle_state", "vehicle_meter_links")
    return {t: conn.execute(f"SELECT count(*) FROM telemetry.{t}").fetchone()[0] for t in tables}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`python -m api serve` in a subprocess, as users run it."""

    def __init__(self, database_url: str, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api", "serve", "--port", str(self.port)],
            env={**os.environ, "DATABASE_URL": database_url, "MAINTENANCE_INTERVAL_S": "0", **env},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,  # its own process group
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health/live", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the API did not start: {self.output()[-2000:]}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the server and its workers: no graceful shutdown, requests in flight are cut."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is not None:
            self.log.close()
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@pytest.fixture
def live_server_factory(database: Database) -> Iterator:
    servers: list[LiveServer] = []

    def start(port: int | None = None, **env: str) -> LiveServer:
        servers.append(LiveServer(database.url, port, **env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
