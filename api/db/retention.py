"""Retention as the database states it (telemetry.retention): read by every process that validates
readings, changed only by telemetry.set_retention()."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

RETENTION_SQL = "SELECT raw_readings, hourly_aggregates, late_margin, updated_at FROM telemetry.retention"
SET_RETENTION_SQL = ("SELECT raw_readings, hourly_aggregates, late_margin, updated_at "
                     "FROM telemetry.set_retention(%s, %s, %s)")


class Retention(msgspec.Struct, frozen=True):
    raw_readings: timedelta
    hourly_aggregates: timedelta
    late_margin: timedelta
    updated_at: object = None

    @property
    def accepted_age(self) -> timedelta:
        """The oldest reading ingest accepts: the aggregate refresh must see it before its chunk expires."""
        return self.raw_readings - self.late_margin


# A fresh schema's row (sql/versioned/0008_retention_settings.sql).
DEFAULT_RETENTION = Retention(timedelta(days=30), timedelta(days=730), timedelta(hours=1))


def read_retention(conn: psycopg.Connection) -> Retention:
    return Retention(*conn.execute(RETENTION_SQL).fetchone())


def set_retention(conninfo: str, raw: timedelta | None, hourly: timedelta | None,
                  late_margin: timedelta | None) -> Retention:
    """Change retention (the row and, on Community, the policies) in one transaction; needs the schema owner."""
    with psycopg.connect(conninfo) as conn:
        return Retention(*conn.execute(SET_RETENTION_SQL, (raw, hourly, late_margin)).fetchone())


class RetentionCache:
    """The retention row, read again once it is older than ttl_s (one query per period, not per request)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._value: Retention | None = None
        self._read_at = float("-inf")
        self._refresh: asyncio.Task | None = None

    async def get(self, pool: AsyncConnectionPool) -> Retention:
        if self._value is None or time.monotonic() - self._read_at > self.ttl_s:
            async with pool.connection() as conn:
                cur = await conn.execute(RETENTION_SQL)
                self._value = Retention(*await cur.fetchone())
            self._read_at = time.monotonic()
        return self._value

    async def get_or_last(self, pool: AsyncConnectionPool) -> Retention:
        """For the paths that must answer while the database is down: the row read last (read again in
        the background once stale), or, if it was never read and cannot be read now, a fresh schema's."""
        if self._value is None:
            try:
                return await self.get(pool)
            except (psycopg.Error, PoolTimeout):
                return DEFAULT_RETENTION
        if time.monotonic() - self._read_at > self.ttl_s and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_quietly(pool))
        return self._value

    async def _refresh_quietly(self, pool: AsyncConnectionPool) -> None:
        try:
            await self.get(pool)
        except (psycopg.Error, PoolTimeout):
            pass  # still away: the last row stays in use
