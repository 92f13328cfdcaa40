"""Nothing accepted is lost when the API process dies mid-run or migrations are re-applied during
ingestion: the load generator's verification finds every accepted reading exactly once."""

from __future__ import annotations

import threading
import time

import pytest
from rich.console import Console

from api.migrations import migrate
from loadgen.run import run
from tests.fix_db import SQL_DIR
from tests.test_loadgen import _options


@pytest.mark.slow
def test_killing_the_api_mid_run_loses_nothing(database, live_server_factory) -> None:
    server = live_server_factory()
    # 180 simulated minutes paced over 6 s of wall clock, so the run is under way when the API dies.
    options = _options(server, database, devices=60, mode="simulate", speedup=1800, duration_s=6,
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
    assert result["failed"] == 0 and result["inserted"] == 60 * 2 * 180
    assert result["errors_by_status"].get("connection_error", 0) > 0  # the outage was real


@pytest.mark.slow
def test_migrations_reapplied_during_ingestion_lose_nothing(database, live_server_factory) -> None:
    server = live_server_factory()
    options = _options(server, database, devices=60, mode="simulate", speedup=1800, duration_s=6, batch_size=200)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run(options, Console(quiet=True))))
    runner.start()
    reports = []
    while runner.is_alive() and len(reports) < 5:
        reports.append(migrate(database.url, SQL_DIR))
    runner.join(180)

    assert len(reports) >= 2 and all(r.applied == () for r in reports)
    assert result["verification"]["passed"], result["verification"]["problems"]
    assert result["failed"] == 0 and result["inserted"] == 60 * 2 * 180
