"""API fixtures: the Litestar app over a test database, and API keys of each scope."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from litestar.testing import TestClient

from api.db.keys import create_key
from api.server.app import create_app
from api.server.process import ApiProcess
from api.settings import Settings
from tests.fix_db import Database


def settings_for(database: Database, **overrides: object) -> Settings:
    """The API's settings for a test database: connected as the API's role, maintenance and alert evaluation off."""
    return Settings.from_env({}, database_url=database.app_url, migrate_database_url=database.url,
                             maintenance_interval_s=0, alert_interval_s=0,
                             **{"nats_url": os.environ["NATS_URL"], **overrides})  # tests/conftest.py: no NATS


@pytest.fixture
def api_settings(database: Database) -> Settings:
    return settings_for(database)


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


@pytest.fixture
def live_server_factory(database: Database) -> Iterator:
    """Starts `python -m api serve` against the test database; stops every server it started."""
    servers: list[ApiProcess] = []

    def start(port: int | None = None, workers: int = 1, **env: str) -> ApiProcess:
        servers.append(ApiProcess(database.app_url, port, workers=workers, **env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
