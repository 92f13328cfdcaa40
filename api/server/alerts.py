"""Alerts (`read` scope): list them newest first with a keyset cursor, read one, and acknowledge one
(`ingest` or `admin`), and evaluate the rules now (`admin`). The alerts themselves are opened and
resolved by telemetry.evaluate_alerts()."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter, QueryParameter

from api.db.pool import fetch_all
from api.ops.alerts import evaluate_in_pool
from api.readings import DEVICE_ID_PATTERN, BadInput
from api.server.dependencies import AppSettings
from api.server.errors import ErrorDocumentedOperation, error_responses
from api.server.security import BEARER, requires

MAX_ID = 2**63 - 1
# Matched as text, so that a request with no key gets its 401 whatever the path; ids are positive bigints.
ID_PATTERN = "^[1-9][0-9]{0,18}$"
PathAlertId = Annotated[str, Parameter(pattern=ID_PATTERN, description="The alert's id")]
RuleName = Annotated[str, msgspec.Meta(pattern="^[a-z_]{1,64}$", description="An alert rule's name")]

_COLUMNS = """id, rule, device_id, state, opened_at, last_seen_at, resolved_at, value, acknowledged_at,
              acknowledged_by"""
LIST_ALERTS_SQL = f"""
    SELECT {_COLUMNS} FROM telemetry.alerts
    WHERE (%(state)s = 'all' OR state = %(state)s)
      AND (%(rule)s::text IS NULL OR rule = %(rule)s)
      AND (%(device)s::text IS NULL OR device_id = %(device)s::text)
      AND (%(before)s::bigint IS NULL OR id < %(before)s)
    ORDER BY id DESC
    LIMIT %(limit)s"""
GET_ALERT_SQL = f"SELECT {_COLUMNS} FROM telemetry.alerts WHERE id = %s"
# Idempotent: a second acknowledgement keeps the first time and the first key.
ACKNOWLEDGE_SQL = f"""
    UPDATE telemetry.alerts
    SET acknowledged_at = coalesce(acknowledged_at, now()), acknowledged_by = coalesce(acknowledged_by, %(by)s)
    WHERE id = %(id)s
    RETURNING {_COLUMNS}"""
KNOWN_RULE_SQL = "SELECT EXISTS (SELECT FROM telemetry.alert_rules WHERE rule = %s)"


class Alert(msgspec.Struct, rename="camel"):
    id: int
    rule: str
    device_id: str
    state: str
    """open or resolved."""
    opened_at: datetime
    last_seen_at: datetime
    """The last evaluation that found the condition holding."""
    resolved_at: datetime | None
    value: float | None
    """The value that triggered the alert (efficiency, kWh, minutes silent or °C, by rule)."""
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    """The keyId of the API key that acknowledged the alert."""


class AlertPage(msgspec.Struct, rename="camel"):
    alerts: list[Alert]
    next: str | None
    """Pass as `cursor` for the next page; null on the last page."""


def requires_any(*scopes: str) -> Callable[[ASGIConnection, BaseRouteHandler], Awaitable[None]]:
    """A guard passing keys with at least one of `scopes` (`requires` takes one scope); a coroutine, so
    Litestar does not run it in a worker thread."""
    async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if not connection.auth & set(scopes):
            raise PermissionDeniedException(f"this API key lacks the '{' or '.join(scopes)}' scope")

    guard.__name__ = f"requires_{'_or_'.join(scopes)}"
    return guard


def path_id(text: str) -> int:
    """A path id as the bigint it names; 404 past the bigint range, where nothing can be found."""
    if int(text) > MAX_ID:
        raise NotFoundException(f"no such id {text}")
    return int(text)


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"a{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id the next page starts below; 422 for anything this API did not hand out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text[:1] == "a" and text[1:].isdigit() and 0 < int(text[1:]) <= MAX_ID:
            return int(text[1:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise BadInput(422, "invalid cursor: pass the `next` value of the previous page")


class AlertChangeOut(msgspec.Struct, rename="camel"):
    id: int
    rule: str
    device_id: str
    value: float | None


class EvaluationOut(msgspec.Struct, rename="camel"):
    opened: list[AlertChangeOut]
    resolved: list[AlertChangeOut]
    open: int


class AlertController(Controller):
    path = "/v1/alerts"
    tags = ["alerts"]
    security = BEARER

    @get("/", guards=[requires("read")], summary="List alerts, newest first (cursor-paginated)",
         responses=error_responses(401, 403, 422, 503), operation_class=ErrorDocumentedOperation)
    async def list(
        self, state: State,
        alert_state: Annotated[Literal["open", "resolved", "all"], QueryParameter(
            name="state", description="open (default), resolved or all")] = "open",
        rule: Annotated[RuleName | None, QueryParameter(description="Only this rule's alerts")] = None,
        device: Annotated[str | None, QueryParameter(pattern=DEVICE_ID_PATTERN, max_length=64,
                                                     description="Only this device's alerts")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000, description="Alerts per page")] = 100,
        cursor: Annotated[str | None, QueryParameter(max_length=40, description="`next` of the previous page")] = None,
    ) -> AlertPage:
        before = decode_cursor(cursor) if cursor is not None else None
        if rule is not None:
            (known,) = (await fetch_all(state.pool, KNOWN_RULE_SQL, (rule,)))[0]
            if not known:
                raise BadInput(422, f"unknown rule {rule!r}")
        rows = await fetch_all(state.pool, LIST_ALERTS_SQL, {"state": alert_state, "rule": rule, "device": device,
                                                            "before": before, "limit": limit + 1})
        alerts = [Alert(*row) for row in rows[:limit]]
        return AlertPage(alerts, encode_cursor(alerts[-1].id) if len(rows) > limit else None)

    @get("/{alert_id:str}", guards=[requires("read")], summary="One alert",
         responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation)
    async def show(self, state: State, alert_id: PathAlertId) -> Alert:
        rows = await fetch_all(state.pool, GET_ALERT_SQL, (path_id(alert_id),))
        if not rows:
            raise NotFoundException(f"no alert {alert_id}")
        return Alert(*rows[0])

    @post("/{alert_id:str}/acknowledge", status_code=200, guards=[requires_any("ingest", "admin")],
          summary="Acknowledge an alert (idempotent: the first acknowledgement is kept)",
          responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation)
    async def acknowledge(self, state: State, request: Request, alert_id: PathAlertId) -> Alert:
        # The authentication middleware sets the user to the key's id (api/server/security.py).
        rows = await fetch_all(state.pool, ACKNOWLEDGE_SQL, {"id": path_id(alert_id), "by": request.user})
        if not rows:
            raise NotFoundException(f"no alert {alert_id}")
        return Alert(*rows[0])

    @post("/evaluate", status_code=200, guards=[requires("admin")],
          summary="Evaluate the alert rules now (as the platform does every ALERT_INTERVAL_S)",
          responses=error_responses(401, 403, 503), operation_class=ErrorDocumentedOperation)
    async def evaluate(self, state: State, settings: AppSettings) -> EvaluationOut:
        # Waits for an evaluation running elsewhere, then finds what it left to do: the answer is
        # what this pass changed, and how many alerts are open after it.
        evaluation = await evaluate_in_pool(state.pool, settings, wait=True)
        (open_now,) = (await fetch_all(state.pool, "SELECT count(*) FROM telemetry.alerts WHERE state = 'open'"))[0]
        return EvaluationOut([AlertChangeOut(c.alert_id, c.rule, c.device_id, c.value) for c in evaluation.opened],
                             [AlertChangeOut(c.alert_id, c.rule, c.device_id, c.value) for c in evaluation.resolved],
                             open_now)
