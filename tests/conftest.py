"""Test configuration: fixtures come from the fix_*.py plugin modules."""

from __future__ import annotations

import pytest

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
