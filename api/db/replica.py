"""Read routing: analytics and status reads go to the streaming replica (DATABASE_READ_URL) while it is
reachable, in recovery and at most MAX_REPLICA_LAG_S behind; to the primary otherwise. Every routed
answer says which served it (X-Served-By, X-Replica-Lag-S, X-Replica-Skipped)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api.db.pool import create_read_pool, fetch_all
from api.settings import Settings

if TYPE_CHECKING:
    from litestar import Litestar

log = logging.getLogger("api.replica")

CHECK_INTERVAL_S = 0.5
"""How often each process measures the replica's lag (one query on its own connection)."""
CHECK_TIMEOUT_S = 2.0
"""A check (connect and query) slower than this counts as an unreachable replica."""
STALE_AFTER_S = 3.0
"""A measurement older than this is not trusted (the watcher is stuck): reads go to the primary."""

# Lag in seconds, robust to an idle primary: a standby that has replayed all the WAL it received is
# caught up (0), whatever the age of its last replayed transaction. Only with WAL pending does the age
# of the last replayed transaction measure the lag. (The received position may start below the replayed
# one after a restart: nothing pending. Before anything is received it is NULL: the age decides, and no
# transaction replayed yet means unmeasured.) A paused replay is reported apart: it will not catch up.
LAG_SQL = """
SELECT recovering,
       CASE WHEN recovering THEN pg_is_wal_replay_paused() END,
       CASE WHEN NOT recovering THEN NULL
            WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,
       CASE WHEN recovering THEN coalesce(pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(), false) END
FROM pg_is_in_recovery() AS recovering
"""

SERVED_BY = "X-Served-By"
REPLICA_LAG = "X-Replica-Lag-S"
REPLICA_SKIPPED = "X-Replica-Skipped"

# What a read on the replica can fail with where the primary would answer: the replica stopped or
# restarted (connection errors, pool timeout), or a query cancelled by a conflict with recovery.
REPLICA_FAILURES = (PoolTimeout, psycopg.OperationalError, psycopg.errors.SerializationFailure)

PRIMARY: Mapping[str, str] = {SERVED_BY: "primary"}


class ReadRouter:
    """Chooses the database of each read from the last lag measurement: no round trip per request."""

    def __init__(self, primary: AsyncConnectionPool, replica: AsyncConnectionPool | None = None,
                 max_lag_s: float = 5.0) -> None:
        self.primary = primary
        self.replica = replica
        self.max_lag_s = max_lag_s
        self._use_replica = False
        self._measured_at = -math.inf
        self._pool_suspect = False  # the replica failed: its pooled connections may be broken
        self._replica_headers: Mapping[str, str] = {SERVED_BY: "replica"}
        self._primary_headers: Mapping[str, str] = (
            PRIMARY if replica is None else {SERVED_BY: "primary", REPLICA_SKIPPED: "unmeasured"})

    def observe(self, recovering: bool, paused: bool | None, lag_s: float | None, behind: bool | None) -> None:
        """Record one lag measurement of the replica."""
        lag = None if lag_s is None else f"{max(lag_s, 0.0):.2f}"
        if not recovering:
            self._skip("not_in_recovery")
        elif paused and behind:
            self._skip("paused", lag)  # replay will not catch up until someone resumes it
        elif lag_s is None:
            self._skip("unmeasured")
        elif lag_s > self.max_lag_s:
            self._skip("lagging", lag)
        else:
            if not self._use_replica:
                log.info("read replica in use (lag %s s)", lag)
            self._replica_headers = {SERVED_BY: "replica", REPLICA_LAG: lag}
            self._use_replica = True
        self._measured_at = time.monotonic()

    def mark_down(self, reason: str) -> None:
        """The replica failed a check or a read: the primary serves until a check succeeds again."""
        self._skip(reason)
        self._measured_at = time.monotonic()
        self._pool_suspect = True

    def _skip(self, reason: str, lag: str | None = None) -> None:
        if self._use_replica or self._primary_headers.get(REPLICA_SKIPPED) != reason:
            log.warning("read replica skipped: %s%s", reason, f" (lag {lag} s)" if lag else "")
        self._use_replica = False
        self._primary_headers = {SERVED_BY: "primary", REPLICA_SKIPPED: reason, **({REPLICA_LAG: lag} if lag else {})}

    @property
    def headers(self) -> Mapping[str, str]:
        """What the next read's answer will say, from the last measurement."""
        return self._replica_headers if self._use_replica else self._primary_headers

    async def fetch_all(self, sql: str, params: Any = None) -> tuple[list[tuple], Mapping[str, str]]:
        """Rows of one read query, and the headers that say which database served them."""
        if self._use_replica and time.monotonic() - self._measured_at < STALE_AFTER_S:
            headers = self._replica_headers
            try:
                return await fetch_all(self.replica, sql, params), headers
            except REPLICA_FAILURES as exc:
                log.warning("read failed on the replica, retried on the primary: %s", type(exc).__name__)
                self.mark_down("failed")
        elif self._use_replica:
            self._skip("unmeasured")
        return await fetch_all(self.primary, sql, params), self._primary_headers

    async def watch(self, conninfo: str) -> None:
        """Measure the replica's lag every CHECK_INTERVAL_S on a connection of its own, until cancelled."""
        conn: psycopg.AsyncConnection | None = None
        try:
            while True:
                try:
                    async with asyncio.timeout(CHECK_TIMEOUT_S):
                        if conn is None:
                            conn = await psycopg.AsyncConnection.connect(
                                conninfo, autocommit=True, application_name="telemetry-replica-lag",
                                connect_timeout=max(1, math.ceil(CHECK_TIMEOUT_S)))
                        cur = await conn.execute(LAG_SQL)
                        measured = await cur.fetchone()
                        if self._pool_suspect and self.replica is not None:
                            # Back after a failure (a restart, say): replace the pool's broken connections
                            # here, before reads are sent there again.
                            await self.replica.check()
                            self._pool_suspect = False
                        self.observe(*measured)
                except (psycopg.Error, OSError, TimeoutError):
                    self.mark_down("unreachable")
                    if conn is not None:
                        await conn.close()
                        conn = None
                await asyncio.sleep(CHECK_INTERVAL_S)
        finally:
            if conn is not None:
                await conn.close()


@contextlib.asynccontextmanager
async def read_replica(app: Litestar) -> AsyncIterator[None]:
    """Lifespan after the primary pool's: app.state.reads routes reads; with DATABASE_READ_URL set, it
    opens the replica's pool and measures the replica's lag in the background."""
    settings: Settings = app.state.settings
    url = settings.database_read_url
    replica = create_read_pool(settings, url) if url else None
    app.state.reads = ReadRouter(app.state.pool, replica, settings.max_replica_lag_s)
    if replica is None:
        yield
        return
    # Do not wait: a replica that is away leaves the primary serving every read.
    await replica.open(wait=False)
    watcher = asyncio.create_task(app.state.reads.watch(url))
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await replica.close()
