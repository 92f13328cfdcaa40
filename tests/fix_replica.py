"""Replica fixtures: a hot standby of the test primary, made with pg_basebackup -R."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql.executors import PostgreSQLExecutor

from api.settings import PROJECT_ROOT
from tests.fix_db import PG_BIN, Database

PG_CTL = str(PROJECT_ROOT / "scripts" / "pg-ctl")
RUN_AS = os.environ.get("PG_RUN_AS", "postgres")
"""PostgreSQL refuses to run as root; scripts/pg-ctl then runs it as this account, and so must
pg_basebackup run, to write a data directory the server may own."""
REPLAY_WAIT_S = 60.0
"""Longest wait for the standby to replay what the primary wrote (a failure, not a measurement)."""


def as_server_account(argv: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *argv] if os.geteuid() == 0 else argv


def hand_over(path: Path) -> None:
    """A directory the server account owns and can reach (it walks down from /)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    shutil.chown(path, RUN_AS)
    path.chmod(0o700)
    for parent in path.parents:
        parent.chmod(parent.stat().st_mode | 0o001)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Standby:
    """A streaming hot standby of one test primary: the whole cluster, every test database included."""

    def __init__(self, primary: PostgreSQLExecutor, root: Path, slot: str) -> None:
        self.primary = primary
        self.datadir = root / "data"
        self.logfile = root / "standby.log"
        # A short socket directory: Unix socket paths are limited to about 100 bytes.
        self.socketdir = Path(tempfile.mkdtemp(prefix="stby-"))
        self.port = _free_port()
        self.slot = slot
        hand_over(self.socketdir)

    def url(self, database: Database, *, app: bool = False) -> str:
        """``database`` (as its owner, or as the API's role) on the standby."""
        primary = conninfo_to_dict(database.app_url if app else database.url)
        return make_conninfo(**{**primary, "host": "127.0.0.1", "port": str(self.port)})

    def base_backup(self) -> None:
        # A replication slot keeps the primary's WAL until the standby has it; fast checkpoint: no
        # wait for a spread one.
        hand_over(self.datadir.parent)
        subprocess.run(as_server_account([
            str(PG_BIN / "pg_basebackup"), "-R", "-X", "stream", "-C", "-S", self.slot, "--checkpoint=fast",
            "-D", str(self.datadir), "-h", self.primary.host, "-p", str(self.primary.port),
            "-U", self.primary.user]), check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        # The primary's options (TimescaleDB preloaded, its license, max_connections and locks at least
        # the primary's, as a hot standby requires).
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{self.socketdir}' "
                   f"-c hot_standby=on {self.primary.postgres_options}")
        subprocess.run([PG_CTL, "start", "-w", "-t", "60", "-D", str(self.datadir), "-l", str(self.logfile),
                        "-o", options], check=True, capture_output=True, timeout=90)

    def stop(self) -> None:
        subprocess.run([PG_CTL, "stop", "-w", "-m", "fast", "-D", str(self.datadir)], check=False,
                       capture_output=True, timeout=90)

    def superuser(self, database: Database) -> psycopg.Connection:
        return psycopg.connect(self.url(database), autocommit=True)

    def wait_until_replayed(self, database: Database) -> None:
        """Until ``database`` exists on the standby and the standby replayed all the primary wrote so far."""
        with database.connect(autocommit=True) as primary:
            (target,) = primary.execute("SELECT pg_current_wal_lsn()").fetchone()
        deadline = time.monotonic() + REPLAY_WAIT_S
        while True:
            try:
                with self.superuser(database) as conn:
                    (done,) = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
                if done:
                    return
            except psycopg.OperationalError:
                pass  # the database is not replayed yet, or the standby is starting
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby did not replay up to {target} in {REPLAY_WAIT_S} s: "
                                     f"see {self.logfile}")
            time.sleep(0.1)

    def drop_slot(self) -> None:
        with psycopg.connect(make_conninfo(host=self.primary.host, port=self.primary.port, user=self.primary.user,
                                           dbname="postgres", password=self.primary.password),
                             autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s", (self.slot,))


@pytest.fixture(scope="session")
def standby(pg_server: PostgreSQLExecutor, edition: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standby]:
    """A hot standby of this edition's test server, streaming from a replication slot; stopped at the end."""
    replica = Standby(pg_server, tmp_path_factory.mktemp(f"standby-{edition}"), f"test_standby_{edition}")
    replica.base_backup()
    try:
        replica.start()
        yield replica
    finally:
        replica.stop()
        replica.drop_slot()
        shutil.rmtree(replica.socketdir, ignore_errors=True)
