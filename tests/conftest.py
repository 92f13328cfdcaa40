"""Test configuration: fixtures come from the fix_*.py plugin modules."""

from __future__ import annotations

import os
import socket

import pytest

# No test talks to a NATS it did not start (the stream tests start their own and pass its URL). Every
# other API, in this process (tests/fix_api.py: settings_for) or a child, is pointed at a port this
# session holds bound and never listens on, so that its background connection attempts are refused at
# once, whatever runs on the machine (a developer's `make run` NATS on the default port would refuse
# the tests' credentials instead, and nats-py leaves each refused attempt's socket to the collector).
_NO_NATS = socket.socket()
_NO_NATS.bind(("127.0.0.1", 0))
os.environ["NATS_URL"] = f"nats://127.0.0.1:{_NO_NATS.getsockname()[1]}"

pytest_plugins = ["tests.fix_db", "tests.fix_api", "tests.fix_readings", "tests.fix_reference", "tests.fix_loadgen",
                  "tests.fix_nats", "tests.fix_browser", "tests.fix_replica"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.fix_db import EDITIONS, EDITIONS_RUN, UNAVAILABLE

    terminalreporter.section("TimescaleDB editions")
    for edition in EDITIONS:
        if edition in EDITIONS_RUN:
            terminalreporter.write_line(f"{edition}: RAN ({EDITIONS_RUN[edition]} database-backed tests)")
        elif edition in UNAVAILABLE:
            terminalreporter.write_line(f"{edition}: SKIPPED: {UNAVAILABLE[edition]}", yellow=True, bold=True)
        else:
            terminalreporter.write_line(f"{edition}: not used by the selected tests")


def pytest_unconfigure(config: pytest.Config) -> None:
    _NO_NATS.close()
