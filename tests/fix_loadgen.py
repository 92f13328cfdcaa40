"""Load generator runs against a test server and database, for tests."""

from __future__ import annotations

from api.db.keys import create_key
from loadgen.run import RunOptions


def loadgen_options(server, database, **overrides) -> RunOptions:
    """A small, messy backfill verified against the database; overrides change any option."""
    key = create_key(database.url, overrides.pop("scopes", ["ingest", "read"]))[1]
    options = {"url": server.url, "api_key": key, "devices": 40, "mode": "backfill", "hours": 2, "seed": 21,
               "batch_size": 500, "concurrency": 4, "duplicate_rate": 0.05, "out_of_order_rate": 0.1,
               "late_rate": 0.02, "verify": True, "database_url": database.url}
    return RunOptions(**{**options, **overrides})
