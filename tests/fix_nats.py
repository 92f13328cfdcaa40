"""NATS fixtures: a project-local nats-server (JetStream and MQTT) on free ports, one per test, and
batch writers (`python -m api writer`) against the test database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from api.stream.process import NatsServer, WriterProcess
from tests.fix_db import Database


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    if shutil.which("nats-server") is None and not (shutil.which("/usr/sbin/nats-server")):
        pytest.fail("nats-server is not installed: `make test` installs it (Debian package nats-server)")
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture
def writer_factory(database: Database, nats_server: NatsServer) -> Iterator:
    """Starts `python -m api writer` processes against the test database and NATS; stops them all."""
    writers: list[WriterProcess] = []

    def start(**env: str) -> WriterProcess:
        writers.append(WriterProcess(database.app_url, nats_server.url, **{"WRITER_ACK_WAIT_S": "3", **env}))
        return writers[-1]

    yield start
    for writer in writers:
        writer.stop()
