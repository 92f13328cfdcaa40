"""Alert evaluation: one pass of telemetry.evaluate_alerts() (the rules, the alerts' lifecycle and the
webhook outbox live in SQL), run every ALERT_INTERVAL_S by the API and on demand by
`python -m api alerts evaluate`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg_pool import AsyncConnectionPool

from api.settings import Settings

log = logging.getLogger("api.alerts")

_EVALUATE = """SELECT id, rule, device_id, event, value
               FROM telemetry.evaluate_alerts(coalesce(%s::timestamptz, now()), %s, %s, %s, %s, %s, %s, %s)"""


@dataclass(frozen=True, slots=True)
class AlertChange:
    alert_id: int
    rule: str
    device_id: str
    value: float | None


@dataclass(frozen=True, slots=True)
class Evaluation:
    opened: list[AlertChange] = field(default_factory=list)
    resolved: list[AlertChange] = field(default_factory=list)


def _params(settings: Settings, now: datetime | None, wait: bool) -> tuple:
    return (now, settings.alert_window_td, settings.alert_silence_td, settings.alert_battery_temp,
            settings.verdict_healthy, settings.verdict_degraded, settings.verdict_min_ac_kwh, wait)


def _evaluation(rows: list[tuple]) -> Evaluation:
    result = Evaluation()
    for alert_id, rule, device_id, event, value in rows:
        changes = result.opened if event == "alert.opened" else result.resolved
        changes.append(AlertChange(alert_id, rule, device_id, value))
    return result


def evaluate_once(conn: psycopg.Connection, settings: Settings, *, now: datetime | None = None,
                  wait: bool = True) -> Evaluation:
    """One evaluation at `now` (default: the database's clock), committed with its outbox rows. With
    `wait`, an evaluation running elsewhere is waited for; without, this one is skipped (empty)."""
    with conn.transaction():
        rows = conn.execute(_EVALUATE, _params(settings, now, wait)).fetchall()
    return _evaluation(rows)


async def evaluate_in_pool(pool: AsyncConnectionPool, settings: Settings, *, wait: bool = False) -> Evaluation:
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(_EVALUATE, _params(settings, None, wait))
        rows = await cur.fetchall()
    return _evaluation(rows)


async def evaluate_periodically(pool: AsyncConnectionPool, settings: Settings) -> None:
    """Every ALERT_INTERVAL_S (0: never), starting one interval after start-up. Each API worker runs
    this loop; the one that finds another evaluating skips its turn instead of repeating the pass."""
    if settings.alert_interval_s <= 0:
        return
    while True:
        await asyncio.sleep(settings.alert_interval_s)
        try:
            evaluation = await evaluate_in_pool(pool, settings)
        except Exception as exc:  # the database may be away; try again next period
            log.warning("alert evaluation skipped: %s", type(exc).__name__)
            continue
        for change in evaluation.opened:
            log.info("alert opened: %s %s value=%s", change.rule, change.device_id, change.value)
        for change in evaluation.resolved:
            log.info("alert resolved: %s %s", change.rule, change.device_id)
