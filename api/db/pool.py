"""The database pool: one per process, created closed and opened in the app's lifespan."""

from __future__ import annotations

from typing import Any

import psycopg

from psycopg_pool import AsyncConnectionPool

from api.settings import Settings


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # Each connection gets its own staging tables for the COPY write path.
    await conn.execute("SELECT telemetry.prepare_staging()")
    await conn.commit()


def session_options(settings: Settings) -> str:
    # The analytics functions choose their own plan mode (sql/repeatable/50_analytics.sql).
    return f"-c statement_timeout={settings.statement_timeout_ms}"


def create_pool(settings: Settings) -> AsyncConnectionPool:
    """The primary's pool: every write, and the reads that must see them."""
    return _pool(settings, settings.database_url, name="telemetry", application_name="telemetry-api",
                 configure=_configure)


def create_read_pool(settings: Settings, url: str) -> AsyncConnectionPool:
    """The replica's pool (DATABASE_READ_URL), with the primary pool's options but no staging tables:
    a hot standby refuses to create even temporary tables, and nothing is written there."""
    return _pool(settings, url, name="telemetry-replica", application_name="telemetry-api-read", configure=None)


def _pool(settings: Settings, url: str, *, name: str, application_name: str, configure: Any) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_s,
        kwargs={
            # Reads are single statements: autocommit spares them a BEGIN and a ROLLBACK round trip.
            # Every write that needs more than one statement opens conn.transaction() itself.
            "autocommit": True,
            "options": session_options(settings),
            "application_name": application_name,
            "connect_timeout": max(1, int(settings.pool_timeout_s)),
        },
        configure=configure,
        # No check on checkout: it costs a round trip per request. A connection broken by a server
        # restart fails its one request with 503 (api/errors.py) and the pool discards it.
        reconnect_timeout=0,  # keep trying to reconnect for as long as the database is away
        open=False,
        name=name,
    )


async def fetch_all(pool: AsyncConnectionPool, sql: str, params: Any = None) -> list[tuple]:
    """Run one read query on a pooled connection; waits at most the pool's timeout for a connection."""
    async with pool.connection() as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()
