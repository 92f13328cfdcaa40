"""Per-device endpoints: current status of meters and vehicles, and vehicle-to-meter links."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec
import psycopg
from litestar import Controller, get, put
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, Parameter

from api.db.pool import fetch_all
from api.readings import DEVICE_ID_PATTERN, BadInput, DeviceId, Timestamp
from api.server.security import BEARER, requires
from api.server.dependencies import AppSettings

PathDeviceId = Annotated[str, Parameter(pattern=DEVICE_ID_PATTERN, max_length=64, description="Device id")]


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


class BulkLinkResult(msgspec.Struct, rename="camel"):
    linked: int
    changed: int


_LINK = """
SELECT l.vehicle_id, l.meter_id, CASE WHEN isfinite(l.valid_from) THEN l.valid_from END, l.changed
FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) WITH ORDINALITY AS t(vehicle_id, meter_id, valid_from, n)
CROSS JOIN LATERAL telemetry.link_vehicle(t.vehicle_id, t.meter_id, t.valid_from) AS l
ORDER BY t.n
"""


_METER_STATUS = ("SELECT meter_id, kwh_consumed_ac, voltage, time, received_at FROM telemetry.meter_state "
                 "WHERE meter_id = %s")
_VEHICLE_STATUS = ("SELECT vehicle_id, soc, kwh_delivered_dc, battery_temp, time, received_at "
                   "FROM telemetry.vehicle_state WHERE vehicle_id = %s")


async def _latest(state: State, sql: str, device_id: str, kind: str) -> tuple:
    rows = await fetch_all(state.pool, sql, (device_id,))
    if not rows:
        raise NotFoundException(f"no readings from {kind} {device_id!r}")
    return rows[0]


async def _link(state: State, links: list[BulkLink]) -> list[Link]:
    # Lock order by vehicle id, so concurrent bulk requests cannot deadlock on each other.
    ordered = sorted(links, key=lambda link: link.vehicle_id)
    async with state.pool.connection() as conn:
        try:
            # In UTC: RFC 3339 allows offsets PostgreSQL rejects (beyond 15:59) inside a timestamptz[].
            starts = [x.valid_from.astimezone(UTC) if x.valid_from else None for x in ordered]
            cur = await conn.execute(_LINK, ([x.vehicle_id for x in ordered], [x.meter_id for x in ordered], starts))
        except (psycopg.errors.DataException, psycopg.errors.ExclusionViolation) as exc:
            raise BadInput(409, exc.diag.message_primary or "conflicting link") from None
        return [Link(*row) for row in await cur.fetchall()]


class DeviceController(Controller):
    path = "/v1"
    tags = ["devices"]
    security = BEARER

    @get("/meters/{meter_id:str}/status", guards=[requires("read")], summary="Latest reading of a meter")
    async def meter_status(self, state: State, meter_id: PathDeviceId) -> MeterStatus:
        return MeterStatus(*await _latest(state, _METER_STATUS, meter_id, "meter"))

    @get("/vehicles/{vehicle_id:str}/status", guards=[requires("read")], summary="Latest reading of a vehicle")
    async def vehicle_status(self, state: State, vehicle_id: PathDeviceId) -> VehicleStatus:
        return VehicleStatus(*await _latest(state, _VEHICLE_STATUS, vehicle_id, "vehicle"))

    @put("/vehicles/{vehicle_id:str}/meter", guards=[requires("ingest")],
         summary="Link a vehicle to the meter that feeds its charger")
    async def link_vehicle(self, state: State, vehicle_id: PathDeviceId, data: JSONBody[LinkRequest]) -> Link:
        (link,) = await _link(state, [BulkLink(vehicle_id, data.meter_id, data.valid_from)])
        return link

    @put("/vehicles/meters", guards=[requires("ingest")], summary="Link many vehicles to their meters at once")
    async def link_vehicles(self, state: State, settings: AppSettings, data: JSONBody[list[BulkLink]]) -> BulkLinkResult:
        if not data:
            raise BadInput(422, "empty list: send at least one link")
        if len(data) > settings.max_rows:
            raise BadInput(413, f"{len(data)} links in one request; the limit is {settings.max_rows}")
        links = await _link(state, data)
        return BulkLinkResult(linked=len(links), changed=sum(link.changed for link in links))

    @get("/vehicles/{vehicle_id:str}/meter", guards=[requires("read")], summary="A vehicle's meter links over time")
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
