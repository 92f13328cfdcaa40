"""Retention on the Apache edition: no policies there, so the API runs telemetry.run_maintenance()
periodically (it reads telemetry.retention); an advisory lock keeps several API processes from doing
it at once. Also the refresh of the continuous aggregates on demand (Community)."""

from __future__ import annotations

import asyncio
import logging

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from api.settings import Settings

log = logging.getLogger("api.maintenance")
_LOCK_KEY = 0x7E1E_3E72_0002


async def run_maintenance_once(pool: AsyncConnectionPool) -> int | None:
    """Drop expired chunks; None when another process holds the lock or the edition has policies."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("SELECT current_setting('timescaledb.license', true), pg_try_advisory_xact_lock(%s)",
                                 (_LOCK_KEY,))
        license_, locked = await cur.fetchone()
        if license_ == "timescale" or not locked:
            return None
        cur = await conn.execute("SELECT count(*) FROM telemetry.run_maintenance()")
        (dropped,) = await cur.fetchone()
    if dropped:
        log.info("maintenance dropped %d expired chunks", dropped)
    return dropped


async def run_maintenance_periodically(pool: AsyncConnectionPool, settings: Settings) -> None:
    if settings.maintenance_interval_s <= 0:
        return
    while True:
        try:
            await run_maintenance_once(pool)
        except Exception as exc:  # the database may be away; try again next period
            log.warning("maintenance skipped: %s", type(exc).__name__)
        await asyncio.sleep(settings.maintenance_interval_s)


def refresh_jobs(conn: psycopg.Connection) -> list[dict]:
    """The platform's refresh job of the continuous aggregates (one on the Community edition, none on
    Apache): its job_id, schedule_interval and config (the margin a slot must be closed by)."""
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT job_id, schedule_interval, config FROM timescaledb_information.jobs
           WHERE proc_schema = 'telemetry' AND proc_name = 'refresh_energy_aggregates' ORDER BY job_id"""
    ).fetchall()


def run_refresh_policies(conn: psycopg.Connection) -> int:
    """Run the continuous-aggregate refresh job now, as the scheduler would (hourly aggregates first,
    then the six-hour and daily ones built on them). Returns how many jobs ran (0 on the Apache
    edition, whose aggregate tables the ingest keeps exact). `conn` must be in autocommit mode."""
    jobs = refresh_jobs(conn)
    for job in jobs:
        conn.execute("CALL run_job(%s)", (job["job_id"],))
    return len(jobs)
