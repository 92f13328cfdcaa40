"""EnergyGrid readings as the pull connector stored them: the latest per device, and one device's
readings over a window. The queries are SQL functions (sql/repeatable/60_energygrid.sql)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from api.server.analytics import From, To, _window_params
from api.server.devices import READ_HEADERS, PathDeviceId, served
from api.server.errors import ErrorDocumentedOperation, error_responses
from api.server.security import BEARER, requires

_LATEST = "SELECT * FROM telemetry.energygrid_latest()"
_READINGS = "SELECT * FROM telemetry.energygrid_device_readings(%(sn)s, %(from)s, %(to)s, %(limit)s)"
_KNOWN = "SELECT EXISTS (SELECT 1 FROM telemetry.energygrid_readings WHERE serial = %(sn)s)"


class EnergyGridReading(msgspec.Struct, rename="camel"):
    sn: str
    power: Annotated[float, msgspec.Meta(description="kW")]
    status: Literal["Online", "Offline"]
    last_updated: Annotated[datetime, msgspec.Meta(description="When the device reported it (the vendor's clock)")]
    fetched_at: Annotated[datetime, msgspec.Meta(description="When the connector stored it")]


class EnergyGridDevices(msgspec.Struct, rename="camel"):
    devices: list[EnergyGridReading]
    """The latest reading of every device, by serial."""


class EnergyGridReadings(msgspec.Struct, rename="camel"):
    sn: str
    from_: datetime = msgspec.field(name="from")
    to: datetime
    readings: list[EnergyGridReading]
    """Oldest first."""
    next: Annotated[datetime | None, msgspec.Meta(
        description="More readings lie in the window: ask again with this as `from`")] = None


def _reading(row: tuple) -> EnergyGridReading:
    serial, last_updated, power_kw, online, fetched_at = row
    return EnergyGridReading(serial, power_kw, "Online" if online else "Offline", last_updated, fetched_at)


class EnergyGridController(Controller):
    path = "/v1/energygrid"
    tags = ["energygrid"]
    guards = [requires("read")]
    security = BEARER

    @get("/devices", summary="The latest reading of every EnergyGrid device",
         responses=error_responses(401, 403, 503), operation_class=ErrorDocumentedOperation,
         response_headers=READ_HEADERS)
    async def devices(self, state: State) -> Response[EnergyGridDevices]:
        rows, headers = await state.reads.fetch_all(_LATEST)
        return served(EnergyGridDevices([_reading(row) for row in rows]), headers)

    @get("/devices/{sn:str}/readings", summary="One EnergyGrid device's readings over a window",
         responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation,
         response_headers=READ_HEADERS)
    async def readings(self, state: State, sn: PathDeviceId, start: From = None, end: To = None,
                       limit: Annotated[int, Parameter(ge=1, le=100_000, description="Most readings")] = 10_000,
                       ) -> Response[EnergyGridReadings]:
        start, end = _window_params(start, end)
        rows, headers = await state.reads.fetch_all(_READINGS, {"sn": sn, "from": start, "to": end,
                                                                "limit": limit + 1})
        if not rows:
            known, headers = await state.reads.fetch_all(_KNOWN, {"sn": sn})
            if not known[0][0]:
                raise NotFoundException(f"no readings from EnergyGrid device {sn!r}", headers=dict(headers))
        more = rows[limit][1] if len(rows) > limit else None
        return served(EnergyGridReadings(sn, start, end, [_reading(row) for row in rows[:limit]], more), headers)
