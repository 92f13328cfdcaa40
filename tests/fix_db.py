"""Database fixtures: one PostgreSQL per TimescaleDB edition, a freshly migrated database per test."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from pytest_postgresql import factories
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from api.schema.migrations import ensure_app_login, migrate
from api.settings import PROJECT_ROOT

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SQL_DIR = PROJECT_ROOT / "sql"
EDITIONS = ("community", "apache")
APP_USER = "telemetry_api"
"""The API's login role in tests, as `make run` and Compose set it up: a member of telemetry_app."""

# The scheduler would connect to the template database and break cloning ("being accessed by other
# users"): no background workers in tests; policies are exercised with CALL run_job(...).
_SERVER_OPTIONS = (
    "-c shared_preload_libraries=timescaledb -c timescaledb.max_background_workers=0 "
    "-c timescaledb.telemetry_level=off -c fsync=off -c full_page_writes=off "
    "-c max_connections=200 -c shared_buffers=256MB -c max_locks_per_transaction=256 "
    "-c timezone=UTC -c timescaledb.license="
)


def timescaledb_install() -> tuple[str | None, bool]:
    """(default TimescaleDB version installed for this PostgreSQL, whether its Community module exists)."""
    pg_config = PG_BIN / "pg_config"
    sharedir = subprocess.run([pg_config, "--sharedir"], capture_output=True, text=True, check=True).stdout.strip()
    libdir = subprocess.run([pg_config, "--pkglibdir"], capture_output=True, text=True, check=True).stdout.strip()
    control = Path(sharedir) / "extension" / "timescaledb.control"
    if not control.exists():
        return None, False
    match = re.search(r"default_version\s*=\s*'([^']+)'", control.read_text())
    version = match[1] if match else None
    return version, bool(version) and (Path(libdir) / f"timescaledb-tsl-{version}.so").exists()


def editions_unavailable() -> dict[str, str]:
    """Editions this machine cannot run, with the reason."""
    version, has_community = timescaledb_install()
    if version is None:
        reason = "TimescaleDB is not installed for PostgreSQL (run `make test`, which installs it)"
        return {edition: reason for edition in EDITIONS}
    if not has_community:
        return {
            "community": (
                f"the installed TimescaleDB {version} is the Apache-only build (no timescaledb-tsl-{version}.so): "
                "continuous aggregates, policies and compression cannot run here"
            )
        }
    return {}


UNAVAILABLE = editions_unavailable()
EDITIONS_RUN: dict[str, int] = {}


def _load_schema(*, host: str, port: int, user: str, dbname: str, password: str | None, **_: object) -> None:
    owner = make_conninfo(host=host, port=port, user=user, dbname=dbname, password=password)
    migrate(owner, SQL_DIR)
    ensure_app_login(owner, app_url(owner))


def app_url(owner_url: str) -> str:
    """The same database, as the API's role."""
    return make_conninfo(owner_url, user=APP_USER, password=None)


timescale_community_proc = factories.postgresql_proc(
    executable=str(PROJECT_ROOT / "scripts" / "pg-ctl"),
    postgres_options=_SERVER_OPTIONS + "timescale",
    dbname="telemetry",
    load=[_load_schema],
)
timescale_apache_proc = factories.postgresql_proc(
    executable=str(PROJECT_ROOT / "scripts" / "pg-ctl"),
    postgres_options=_SERVER_OPTIONS + "apache",
    dbname="telemetry",
    load=[_load_schema],
)


@dataclass(frozen=True, slots=True)
class Database:
    url: str
    """As the schema owner (migrations, test set-up and checks)."""
    edition: str
    server: PostgreSQLExecutor

    @property
    def app_url(self) -> str:
        """As the API's role, which reads and writes data and runs DDL never."""
        return app_url(self.url)

    def connect(self, **kwargs: object) -> psycopg.Connection:
        return psycopg.connect(self.url, **kwargs)


@pytest.fixture(scope="session", params=EDITIONS)
def edition(request: pytest.FixtureRequest) -> str:
    reason = UNAVAILABLE.get(request.param)
    if reason:
        pytest.skip(f"{request.param} edition not tested: {reason}")
    return request.param


@pytest.fixture(scope="session")
def pg_server(edition: str, request: pytest.FixtureRequest) -> PostgreSQLExecutor:
    return request.getfixturevalue(f"timescale_{edition}_proc")


def _database(server: PostgreSQLExecutor, edition: str, template: str | None) -> Iterator[Database]:
    dbname = f"test_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=server.user, host=server.host, port=server.port, dbname=dbname,
        template_dbname=template, password=server.password,
    )
    with janitor:
        EDITIONS_RUN[edition] = EDITIONS_RUN.get(edition, 0) + 1
        url = make_conninfo(host=server.host, port=server.port, user=server.user, dbname=dbname,
                            password=server.password)
        yield Database(url, edition, server)


@pytest.fixture
def database(pg_server: PostgreSQLExecutor, edition: str) -> Iterator[Database]:
    """A database holding the full, migrated schema (cloned from the migrated template)."""
    yield from _database(pg_server, edition, pg_server.template_dbname)


@pytest.fixture
def empty_database(pg_server: PostgreSQLExecutor, edition: str) -> Iterator[Database]:
    """A database with nothing in it, for migration tests."""
    yield from _database(pg_server, edition, None)


@pytest.fixture
def conn(database: Database) -> Iterator[psycopg.Connection]:
    with database.connect(autocommit=True) as connection:
        yield connection


def ingest_rows(conn: psycopg.Connection, meters: list[tuple] = (), vehicles: list[tuple] = ()) -> None:
    """Store readings through the SQL write path the API uses (staging, then the ingest functions)."""
    with conn.transaction():
        conn.execute("SELECT telemetry.prepare_staging()")
        if meters:
            with conn.cursor().copy("COPY pg_temp.meter_staging FROM STDIN") as copy:
                for row in meters:
                    copy.write_row(row)
            conn.execute("SELECT * FROM telemetry.ingest_meter_staging()")
        if vehicles:
            with conn.cursor().copy("COPY pg_temp.vehicle_staging FROM STDIN") as copy:
                for row in vehicles:
                    copy.write_row(row)
            conn.execute("SELECT * FROM telemetry.ingest_vehicle_staging()")
