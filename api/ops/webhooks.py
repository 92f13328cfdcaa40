"""The webhook delivery loop: sends the outbox (telemetry.webhook_deliveries, written with each alert
change) to the subscribed URLs, at least once, signed, retried with exponential backoff and jitter
until WEBHOOK_RETRY_FOR has passed. Several API processes share the work: a delivery is claimed with
FOR UPDATE SKIP LOCKED and leased (next_attempt_at pushed forward), so no two send it at once and a
process that dies mid-delivery leaves it to be retried when the lease runs out."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self
from datetime import timedelta

import httpx
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool

from api.settings import Settings

log = logging.getLogger("api.webhooks")

INTERVAL_S = 1.0
"""How often the loop looks for due deliveries."""
MAX_TARGETS = 32
"""Targets (webhooks) sent to at once by one process: each target's deliveries go one after the other,
different targets concurrently, so a slow target holds up only itself."""
PER_TARGET = 10
"""Deliveries claimed per target and round."""
BACKOFF_CAP_S = 3600.0

DELIVERIES = Counter("telemetry_webhook_deliveries_total", "Webhook delivery attempts, by webhook and outcome "
                     "(delivered, failed, given_up)", ["webhook", "outcome"])

# One statement, so one short transaction: lock what is due (skipping what another process holds),
# lease it, and hand it over with what sending needs.
CLAIM_SQL = """
    WITH due AS (
        SELECT d.id FROM telemetry.webhooks w
        CROSS JOIN LATERAL (
            SELECT id FROM telemetry.webhook_deliveries d
            WHERE d.webhook_id = w.id AND d.delivered_at IS NULL AND d.given_up_at IS NULL
              AND d.next_attempt_at <= now()
              -- An alert's events reach a target in order: not its resolution while its opening is pending.
              AND NOT EXISTS (SELECT FROM telemetry.webhook_deliveries e
                              WHERE e.webhook_id = d.webhook_id AND e.alert_id = d.alert_id
                                AND e.delivered_at IS NULL AND e.given_up_at IS NULL AND e.created_at < d.created_at)
            ORDER BY d.next_attempt_at, d.created_at
            LIMIT %(per_target)s
            FOR UPDATE SKIP LOCKED) d
        WHERE w.deleted_at IS NULL AND w.id <> ALL (%(busy)s::bigint[])
        LIMIT %(limit)s)
    UPDATE telemetry.webhook_deliveries d SET next_attempt_at = now() + %(lease)s
    FROM due, telemetry.webhooks w
    WHERE d.id = due.id AND w.id = d.webhook_id
    RETURNING d.id, d.webhook_id, w.url, w.secret, d.event, d.payload::text, d.attempts"""
DELIVERED_SQL = """
    UPDATE telemetry.webhook_deliveries
    SET delivered_at = now(), attempts = attempts + 1, last_status = %(status)s, last_error = NULL
    WHERE id = %(id)s AND delivered_at IS NULL"""
# Given up once the retry window has passed; until then the next attempt is no later than its end,
# so the last try happens at the deadline. Returns whether it was given up.
FAILED_SQL = """
    UPDATE telemetry.webhook_deliveries
    SET attempts = attempts + 1, last_status = %(status)s, last_error = %(error)s,
        given_up_at = CASE WHEN now() >= created_at + %(retry_for)s THEN now() END,
        next_attempt_at = CASE WHEN now() >= created_at + %(retry_for)s THEN now()
                               ELSE least(now() + %(backoff)s, created_at + %(retry_for)s) END
    WHERE id = %(id)s AND delivered_at IS NULL
    RETURNING given_up_at IS NOT NULL"""


def backoff_s(attempts: int) -> float:
    """Exponential backoff with jitter after the `attempts`-th failure: 2^attempts s, capped at an hour,
    half of it random so that many failed deliveries do not come back all at once."""
    delay = min(BACKOFF_CAP_S, 2.0 ** min(attempts, 32))
    return delay / 2 + random.uniform(0, delay / 2)


def signature(secret: str, body: bytes) -> str:
    """X-Telemetry-Signature: sha256=<lowercase hex HMAC-SHA256 of the exact body with the secret>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    webhook_id: int
    url: str
    secret: str
    event: str
    body: bytes
    attempts: int


class WebhookSender:
    """One process's share of the deliveries: `round()` claims what is due for idle targets and starts
    sending; `run()` does it every INTERVAL_S. Use as an async context manager (the HTTP client)."""

    def __init__(self, pool: AsyncConnectionPool, settings: Settings,
                 backoff: Callable[[int], float] = backoff_s) -> None:
        self.pool = pool
        self.timeout_s = settings.webhook_timeout_s
        self.retry_for = settings.webhook_retry_for_td
        self.backoff = backoff
        # Long enough for a whole batch of one target to time out, so a live process keeps its claim.
        self.lease = timedelta(seconds=PER_TARGET * (self.timeout_s + 1) + 30)
        self.busy: dict[int, asyncio.Task] = {}
        self.client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self.client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in self.busy.values():
            task.cancel()
        await asyncio.gather(*self.busy.values(), return_exceptions=True)
        await self.client.aclose()

    async def round(self) -> list[asyncio.Task]:
        """Claim the due deliveries of targets not being sent to by this process; one task per target."""
        free = MAX_TARGETS - len(self.busy)
        if free <= 0:
            return []
        async with self.pool.connection() as conn:
            cur = await conn.execute(CLAIM_SQL, {"per_target": PER_TARGET, "busy": list(self.busy),
                                                 "limit": free * PER_TARGET, "lease": self.lease})
            rows = await cur.fetchall()
        by_target: dict[int, list[Claimed]] = {}
        for id_, webhook_id, url, secret, event, payload, attempts in rows:
            by_target.setdefault(webhook_id, []).append(
                Claimed(str(id_), webhook_id, url, secret, event, payload.encode(), attempts))
        tasks = []
        for webhook_id, batch in list(by_target.items())[:free]:
            task = asyncio.create_task(self._send_batch(batch))
            self.busy[webhook_id] = task
            task.add_done_callback(lambda _, key=webhook_id: self.busy.pop(key, None))
            tasks.append(task)
        return tasks

    async def deliver_due(self) -> None:
        """One round, waiting for its sends to finish (tests and one-off runs)."""
        await asyncio.gather(*await self.round())

    async def run(self, interval_s: float = INTERVAL_S) -> None:
        while True:
            try:
                await self.round()
            except Exception as exc:  # the database may be away; the outbox keeps everything for later
                log.warning("webhook round skipped: %s", type(exc).__name__)
            await asyncio.sleep(interval_s)

    async def _send_batch(self, batch: list[Claimed]) -> None:
        for delivery in sorted(batch, key=lambda d: d.attempts):
            try:
                await self._send(delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # recording the outcome failed: the lease brings it back later
                log.warning("webhook delivery %s not recorded: %s", delivery.id, type(exc).__name__)

    async def _send(self, delivery: Claimed) -> None:
        headers = {"Content-Type": "application/json", "X-Telemetry-Signature": signature(delivery.secret, delivery.body),
                   "X-Telemetry-Delivery": delivery.id, "X-Telemetry-Event": delivery.event}
        status: int | None = None
        try:
            # httpx's timeout bounds each phase; this bounds the whole exchange (a target trickling bytes).
            response = await asyncio.wait_for(self.client.post(delivery.url, content=delivery.body, headers=headers),
                                              self.timeout_s)
            status = response.status_code
            error = None if response.is_success else f"HTTP {status}: {response.text[:200]}"
        except TimeoutError:
            error = f"timed out after {self.timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        webhook = str(delivery.webhook_id)
        async with self.pool.connection() as conn:
            if error is None:
                await conn.execute(DELIVERED_SQL, {"id": delivery.id, "status": status})
                DELIVERIES.labels(webhook, "delivered").inc()
                return
            cur = await conn.execute(FAILED_SQL, {
                "id": delivery.id, "status": status, "error": error.replace("\x00", ""), "retry_for": self.retry_for,
                "backoff": timedelta(seconds=self.backoff(delivery.attempts + 1))})
            row = await cur.fetchone()
        given_up = bool(row and row[0])
        DELIVERIES.labels(webhook, "given_up" if given_up else "failed").inc()
        log.info("webhook %s delivery %s failed (%s)%s", webhook, delivery.id, error, ", given up" if given_up else "")


async def deliver_webhooks_periodically(pool: AsyncConnectionPool, settings: Settings) -> None:
    """The lifespan task of every API process."""
    async with WebhookSender(pool, settings) as sender:
        await sender.run()
