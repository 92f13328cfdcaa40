"""Per-device endpoints: current status of meters and vehicles, and vehicle-to-meter links."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import msgspec
import psycopg
from litestar import Controller, Response, delete, get, put
from litestar.datastructures import ResponseHeader, State
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, Parameter, QueryParameter

from api.db.pool import fetch_all
from api.db.replica import REPLICA_LAG, REPLICA_SKIPPED, SERVED_BY
from api.readings import DEVICE_ID_PATTERN, BadInput, DeviceId, Timestamp
from api.server.errors import ErrorDocumentedOperation, error_responses
from api.server.security import BEARER, requires
from api.server.dependencies import AppSettings

LinkEnd = Annotated[datetime | None, QueryParameter(
    name="at", description="When the link ends (RFC 3339, after its start); default: now")]
PathDeviceId = Annotated[str, Parameter(pattern=DEVICE_ID_PATTERN, max_length=64, description="Device id")]

READ_HEADERS = [
    ResponseHeader(name=SERVED_BY, documentation_only=True, required=True,
                   description="`primary` or `replica`: which database answered (DATABASE_READ_URL)."),
    ResponseHeader(name=REPLICA_LAG, documentation_only=True,
                   description="The replica's replay lag in seconds, as last measured: sent when the replica "
                               "answered, and when it was skipped for lagging more than MAX_REPLICA_LAG_S."),
    ResponseHeader(name=REPLICA_SKIPPED, documentation_only=True,
                   description="Why the configured replica did not answer: `lagging`, `paused`, `unreachable`, "
                               "`failed`, `not_in_recovery` or `unmeasured`."),
]
"""OpenAPI documentation of the headers of every operation that reads through the replica router
(api/db/replica.py): analytics, device status and EnergyGrid reads."""

Body = TypeVar("Body")


def served(body: Body, headers: Mapping[str, str]) -> Response[Body]:
    """An answer of a routed read, with the headers that say which database served it."""
    return Response(body, headers=headers)


class MeterStatus(msgspec.Struct, rename="camel"):
    meter_id: str
    kwh_consumed_ac: float
    voltage: float
    timestamp: datetime
    received_at: datetime


class VehicleStatus(msgspec.Struct, rename="camel"):
    vehicle_id: str
    soc: float
    kwh_delivered_dc: float
    battery_temp: float
    timestamp: datetime
    received_at: datetime


class LinkRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    meter_id: DeviceId
    valid_from: Timestamp | None = None
    """When the vehicle started charging from this meter; default: all history for a first link, now for a relink."""


class BulkLink(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    vehicle_id: DeviceId
    meter_id: DeviceId
    valid_from: Timestamp | None = None


class Link(msgspec.Struct, rename="camel"):
    vehicle_id: str
    meter_id: str
    valid_from: datetime | None
    """None: the link covers all history before valid_to."""
    changed: bool


class LinkPeriod(msgspec.Struct, rename="camel"):
    meter_id: str
    valid_from: datetime | None
    valid_to: datetime | None


class LinkHistory(msgspec.Struct, rename="camel"):
    vehicle_id: str
    meter_id: str | None
    history: list[LinkPeriod]


class EndedLink(msgspec.Struct, rename="camel"):
    vehicle_id: str
    meter_id: str
    valid_from: datetime | None
    """None: the link covered all history before valid_to."""
    valid_to: datetime


class BulkLinkResult(msgspec.Struct, rename="camel"):
    linked: int
    changed: int


# One statement for any number of links: the whole request is checked and written at once, under one
# table lock (sql/repeatable/40_links.sql).
LINK_SQL = """
SELECT vehicle_id, meter_id, CASE WHEN isfinite(valid_from) THEN valid_from END, changed
FROM telemetry.link_vehicles(%s::text[], %s::text[], %s::timestamptz[])
"""
UNLINK_SQL = """
SELECT vehicle_id, meter_id, CASE WHEN isfinite(valid_from) THEN valid_from END, valid_to
FROM telemetry.unlink_vehicle(%s::text, %s::timestamptz)
"""


_METER_STATUS = ("SELECT meter_id, kwh_consumed_ac, voltage, time, received_at FROM telemetry.meter_state "
                 "WHERE meter_id = %s")
_VEHICLE_STATUS = ("SELECT vehicle_id, soc, kwh_delivered_dc, battery_temp, time, received_at "
                   "FROM telemetry.vehicle_state WHERE vehicle_id = %s")


async def _latest(state: State, sql: str, device_id: str, kind: str) -> tuple[tuple, Mapping[str, str]]:
    rows, headers = await state.reads.fetch_all(sql, (device_id,))
    if not rows:
        raise NotFoundException(f"no readings from {kind} {device_id!r}", headers=dict(headers))
    return rows[0], headers


async def _link(state: State, links: list[BulkLink]) -> list[Link]:
    async with state.pool.connection() as conn:
        try:
            # In UTC: RFC 3339 allows offsets PostgreSQL rejects (beyond 15:59) inside a timestamptz[].
            starts = [x.valid_from.astimezone(UTC) if x.valid_from else None for x in links]
            cur = await conn.execute(LINK_SQL, ([x.vehicle_id for x in links], [x.meter_id for x in links], starts))
        except psycopg.errors.InvalidParameterValue as exc:
            raise BadInput(422, exc.diag.message_primary or "invalid links") from None
        except (psycopg.errors.DataException, psycopg.errors.ExclusionViolation) as exc:
            raise BadInput(409, exc.diag.message_primary or "conflicting link") from None
        return [Link(*row) for row in await cur.fetchall()]


class DeviceController(Controller):
    path = "/v1"
    tags = ["devices"]
    security = BEARER

    @get("/meters/{meter_id:str}/status", guards=[requires("read")], summary="Latest reading of a meter",
         responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation,
         response_headers=READ_HEADERS)
    async def meter_status(self, state: State, meter_id: PathDeviceId) -> Response[MeterStatus]:
        row, headers = await _latest(state, _METER_STATUS, meter_id, "meter")
        return served(MeterStatus(*row), headers)

    @get("/vehicles/{vehicle_id:str}/status", guards=[requires("read")], summary="Latest reading of a vehicle",
         responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation,
         response_headers=READ_HEADERS)
    async def vehicle_status(self, state: State, vehicle_id: PathDeviceId) -> Response[VehicleStatus]:
        row, headers = await _latest(state, _VEHICLE_STATUS, vehicle_id, "vehicle")
        return served(VehicleStatus(*row), headers)

    @put("/vehicles/{vehicle_id:str}/meter", guards=[requires("ingest")],
         summary="Link a vehicle to the meter that feeds its charger",
         responses=error_responses(401, 403, 409, 422, 503), operation_class=ErrorDocumentedOperation)
    async def link_vehicle(self, state: State, vehicle_id: PathDeviceId, data: JSONBody[LinkRequest]) -> Link:
        """A meter feeds one vehicle at a time: a link overlapping another vehicle's link of the same meter
        is a 409 naming that vehicle, and nothing changes. To move a meter, end its link first
        (DELETE /v1/vehicles/{vehicleId}/meter)."""
        (link,) = await _link(state, [BulkLink(vehicle_id, data.meter_id, data.valid_from)])
        return link

    @put("/vehicles/meters", guards=[requires("ingest")], summary="Link many vehicles to their meters at once",
         responses=error_responses(401, 403, 409, 413, 422, 503), operation_class=ErrorDocumentedOperation)
    async def link_vehicles(self, state: State, settings: AppSettings, data: JSONBody[list[BulkLink]]) -> BulkLinkResult:
        """All or nothing: any conflict (409) or invalid link (422, such as a vehicle listed twice) changes
        nothing. The changed vehicles' current links are closed before the new ones are stored, so
        vehicles can swap meters in one request."""
        if not data:
            raise BadInput(422, "empty list: send at least one link")
        if len(data) > settings.max_rows:
            raise BadInput(413, f"{len(data)} links in one request; the limit is {settings.max_rows}")
        links = await _link(state, data)
        return BulkLinkResult(linked=len(links), changed=sum(link.changed for link in links))

    @delete("/vehicles/{vehicle_id:str}/meter", guards=[requires("ingest")], status_code=200,
            summary="End a vehicle's current meter link, so the meter can feed another vehicle",
            responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation)
    async def unlink_vehicle(self, state: State, vehicle_id: PathDeviceId, at: LinkEnd = None) -> EndedLink:
        """The link's period is kept, ended at `at`: analytics of past windows still use it. 404: the vehicle
        has no current link; 422: `at` is not after the link's start."""
        if at is not None and at.tzinfo is None:
            raise BadInput(422, "'at' needs a timezone offset, e.g. 2026-11-22T10:00:00Z")
        async with state.pool.connection() as conn:
            try:
                cur = await conn.execute(UNLINK_SQL, (vehicle_id, at.astimezone(UTC) if at else None))
            except psycopg.errors.InvalidParameterValue as exc:
                raise BadInput(422, exc.diag.message_primary or "invalid end") from None
            row = await cur.fetchone()
        if row is None:
            raise NotFoundException(f"vehicle {vehicle_id!r} has no current meter link")
        return EndedLink(*row)

    @get("/vehicles/{vehicle_id:str}/meter", guards=[requires("read")], summary="A vehicle's meter links over time",
         responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation)
    async def vehicle_links(self, state: State, vehicle_id: PathDeviceId) -> LinkHistory:
        rows = await fetch_all(
            state.pool,
            """SELECT meter_id, CASE WHEN isfinite(lower(valid)) THEN lower(valid) END,
                      CASE WHEN NOT upper_inf(valid) THEN upper(valid) END
               FROM telemetry.vehicle_meter_links WHERE vehicle_id = %s ORDER BY lower(valid)""",
            (vehicle_id,))
        periods = [LinkPeriod(*row) for row in rows]
        if not periods:
            raise NotFoundException(f"vehicle {vehicle_id!r} is not linked to a meter")
        current = periods[-1].meter_id if periods[-1].valid_to is None else None
        return LinkHistory(vehicle_id=vehicle_id, meter_id=current, history=periods)
