"""Webhook subscriptions (`admin` scope): create one (its signing secret shown once), list them with
their delivery health (never a secret), delete one, and read its delivery log. The deliveries
themselves are sent by api/ops/webhooks.py."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated
from uuid import UUID

import httpx
import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, Parameter, QueryParameter

from api.db.pool import fetch_all
from api.readings import BadInput
from api.server.alerts import ID_PATTERN, RuleName, path_id
from api.server.errors import ErrorDocumentedOperation, error_responses
from api.server.security import BEARER, requires

PathWebhookId = Annotated[str, Parameter(pattern=ID_PATTERN, description="The webhook's id")]
# No whitespace or control characters: a URL as a target's address, which httpx parses again below.
TargetUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\x00-\x20\x7f]+$", max_length=2000,
                                        description="Where deliveries are POSTed: an http or https URL")]

UNKNOWN_RULES_SQL = """
    SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM unnest(%s::text[]) AS name
    WHERE name NOT IN (SELECT rule FROM telemetry.alert_rules)"""
INSERT_WEBHOOK_SQL = """
    INSERT INTO telemetry.webhooks (url, rules, secret) VALUES (%s, %s, %s) RETURNING id, created_at"""
# Health from the delivery log: what is waiting, what is failing now, what was given up.
LIST_WEBHOOKS_SQL = """
    SELECT w.id, w.url, w.rules, w.created_at,
           count(d.id) FILTER (WHERE d.delivered_at IS NULL AND d.given_up_at IS NULL),
           count(d.id) FILTER (WHERE d.delivered_at IS NULL AND d.given_up_at IS NULL AND d.attempts > 0),
           count(d.id) FILTER (WHERE d.delivered_at IS NOT NULL),
           count(d.id) FILTER (WHERE d.given_up_at IS NOT NULL),
           (array_agg(d.last_error ORDER BY d.created_at DESC) FILTER (WHERE d.last_error IS NOT NULL
                                                                       AND d.delivered_at IS NULL))[1]
    FROM telemetry.webhooks w LEFT JOIN telemetry.webhook_deliveries d ON d.webhook_id = w.id
    WHERE w.deleted_at IS NULL
    GROUP BY w.id ORDER BY w.id"""
# Soft delete: the delivery loop skips the pending deliveries of a deleted webhook; its log stays.
# Its pending deliveries end with it (given up), so none stays due forever.
DELETE_WEBHOOK_SQL = """
    WITH deleted AS (
        UPDATE telemetry.webhooks SET deleted_at = now() WHERE id = %(id)s AND deleted_at IS NULL RETURNING id),
    ended AS (
        UPDATE telemetry.webhook_deliveries SET given_up_at = now(), last_error = 'webhook deleted'
        WHERE webhook_id IN (SELECT id FROM deleted) AND delivered_at IS NULL AND given_up_at IS NULL)
    SELECT count(*) FROM deleted"""
WEBHOOK_EXISTS_SQL = "SELECT EXISTS (SELECT FROM telemetry.webhooks WHERE id = %s AND deleted_at IS NULL)"
LIST_DELIVERIES_SQL = """
    SELECT id, event, alert_id, created_at, attempts, next_attempt_at, delivered_at, given_up_at, last_status,
           last_error
    FROM telemetry.webhook_deliveries
    WHERE webhook_id = %(webhook)s
      AND (%(before_at)s::timestamptz IS NULL OR (created_at, id) < (%(before_at)s, %(before_id)s::uuid))
    ORDER BY created_at DESC, id DESC
    LIMIT %(limit)s"""


class NewWebhook(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    url: TargetUrl
    rules: Annotated[list[RuleName], msgspec.Meta(max_length=50)] | None = None
    """The rules whose alerts are sent; omitted or null: every rule."""


class WebhookInfo(msgspec.Struct, rename="camel"):
    id: int
    url: str
    rules: list[str] | None
    created_at: datetime


class CreatedWebhook(WebhookInfo, rename="camel", kw_only=True):
    secret: str
    """The HMAC-SHA256 signing key of X-Telemetry-Signature: shown in this answer only."""


class WebhookHealth(WebhookInfo, rename="camel", kw_only=True):
    pending: int
    """Deliveries not yet delivered nor given up."""
    failing: int
    """Pending deliveries that failed at least once."""
    delivered: int
    given_up: int
    """Deliveries abandoned after the retry window (WEBHOOK_RETRY_FOR)."""
    last_error: str | None
    """The newest error of an undelivered delivery."""


class WebhookList(msgspec.Struct, rename="camel"):
    webhooks: list[WebhookHealth]


class Delivery(msgspec.Struct, rename="camel"):
    id: UUID
    """Sent as X-Telemetry-Delivery (and deliveryId in the body): the same on every retry."""
    event: str
    alert_id: int
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    given_up_at: datetime | None
    last_status: int | None
    """The target's last HTTP status; null when it gave none (a timeout or a refused connection)."""
    last_error: str | None


class DeliveryPage(msgspec.Struct, rename="camel"):
    deliveries: list[Delivery]
    next: str | None
    """Pass as `cursor` for the next page; null on the last page."""


_CURSOR = msgspec.json.Decoder(tuple[datetime, UUID])


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        return _CURSOR.decode(bytes.fromhex(cursor))
    except (ValueError, msgspec.DecodeError):
        raise BadInput(422, "invalid cursor: pass the `next` value of the previous page") from None


def _check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise BadInput(422, "url must be an absolute http or https URL with a host")


class WebhookController(Controller):
    path = "/v1/webhooks"
    tags = ["webhooks"]
    guards = [requires("admin")]
    security = BEARER

    @post("/", status_code=201, summary="Subscribe a URL to alert events (the signing secret is shown once)",
          responses=error_responses(401, 403, 422, 503), operation_class=ErrorDocumentedOperation)
    async def create(self, state: State, data: JSONBody[NewWebhook]) -> CreatedWebhook:
        _check_url(data.url)
        rules = sorted(set(data.rules)) if data.rules is not None else None
        secret = secrets.token_urlsafe(32)
        async with state.pool.connection() as conn:
            if rules:
                cur = await conn.execute(UNKNOWN_RULES_SQL, (rules,))
                (unknown,) = await cur.fetchone()
                if unknown:
                    raise BadInput(422, f"unknown rules: {', '.join(unknown)}")
            cur = await conn.execute(INSERT_WEBHOOK_SQL, (data.url, rules, secret))
            webhook_id, created_at = await cur.fetchone()
        return CreatedWebhook(webhook_id, data.url, rules, created_at, secret=secret)

    @get("/", summary="List webhooks with their delivery health (never their secrets)",
         responses=error_responses(401, 403, 503), operation_class=ErrorDocumentedOperation)
    async def list(self, state: State) -> WebhookList:
        rows = await fetch_all(state.pool, LIST_WEBHOOKS_SQL)
        return WebhookList([WebhookHealth(*row[:4], pending=row[4], failing=row[5], delivered=row[6],
                                          given_up=row[7], last_error=row[8]) for row in rows])

    @delete("/{webhook_id:str}", status_code=204,
            summary="Delete a webhook (its pending deliveries are no longer attempted)",
            responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation)
    async def remove(self, state: State, webhook_id: PathWebhookId) -> None:
        async with state.pool.connection() as conn:
            cur = await conn.execute(DELETE_WEBHOOK_SQL, {"id": path_id(webhook_id)})
            if (await cur.fetchone())[0] != 1:
                raise NotFoundException(f"no webhook {webhook_id}")

    @get("/{webhook_id:str}/deliveries", summary="A webhook's delivery log, newest first (cursor-paginated)",
         responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation)
    async def deliveries(
        self, state: State, webhook_id: PathWebhookId,
        limit: Annotated[int, QueryParameter(ge=1, le=1000, description="Deliveries per page")] = 100,
        cursor: Annotated[str | None, QueryParameter(max_length=200, description="`next` of the previous page")] = None,
    ) -> DeliveryPage:
        before_at, before_id = _decode_cursor(cursor) if cursor is not None else (None, None)
        async with state.pool.connection() as conn:
            cur = await conn.execute(WEBHOOK_EXISTS_SQL, (path_id(webhook_id),))
            if not (await cur.fetchone())[0]:
                raise NotFoundException(f"no webhook {webhook_id}")
            cur = await conn.execute(LIST_DELIVERIES_SQL, {"webhook": path_id(webhook_id), "before_at": before_at,
                                                           "before_id": before_id, "limit": limit + 1})
            rows = await cur.fetchall()
        page = [Delivery(*row) for row in rows[:limit]]
        next_cursor = msgspec.json.encode((page[-1].created_at, page[-1].id)).hex() if len(rows) > limit else None
        return DeliveryPage(page, next_cursor)
