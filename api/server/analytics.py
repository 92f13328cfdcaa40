"""Efficiency analytics endpoints. The logic lives in SQL (sql/repeatable/50_analytics.sql); this
module composes the calls with SQLAlchemy Core and serves the answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import Parameter, QueryParameter
from sqlalchemy import Float, Integer, Interval, Text, bindparam, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import DateTime

from api.server.devices import READ_HEADERS, PathDeviceId, served
from api.readings import BadInput
from api.server.errors import ErrorDocumentedOperation, error_responses
from api.server.security import BEARER, requires
from api.settings import Settings
from api.server.dependencies import AppSettings

BUCKETS = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "1w": timedelta(weeks=1)}
MAX_SERIES_BUCKETS = 10_000
_DIALECT = postgresql.psycopg.dialect()

_window = (bindparam("from", type_=DateTime(timezone=True)), bindparam("to", type_=DateTime(timezone=True)))
_thresholds = (bindparam("healthy", type_=Float), bindparam("degraded", type_=Float),
               bindparam("min_ac_kwh", type_=Float))

_performance = func.telemetry.vehicle_performance(
    bindparam("vehicle", type_=Text), *_window, *_thresholds
).table_valued(
    "vehicle_id", "meter_id", "linked", "ac_kwh", "dc_kwh", "loss_kwh", "efficiency", "avg_battery_temp",
    "meter_readings", "vehicle_readings", "verdict",
)
_fleet = func.telemetry.fleet_summary(*_window, bindparam("worst", type_=Integer), *_thresholds).table_valued(
    "vehicles", "linked_vehicles", "ac_kwh", "dc_kwh", "loss_kwh", "efficiency", "unlinked_dc_kwh",
    "meter_readings", "vehicle_readings", "verdicts", "worst",
)
_series = func.telemetry.vehicle_series(
    bindparam("vehicle", type_=Text), *_window, bindparam("bucket", type_=Interval)
).table_valued("bucket", "ac_kwh", "dc_kwh", "efficiency", "avg_battery_temp", "meter_readings", "vehicle_readings")


def _compile(statement: Any) -> str:
    return str(statement.compile(dialect=_DIALECT))


PERFORMANCE_SQL = _compile(select(_performance))
FLEET_SQL = _compile(select(_fleet))
SERIES_SQL = _compile(select(_series))
# Plain SQL for the existence of a vehicle anywhere: readings or links.
VEHICLE_EXISTS_SQL = """
SELECT EXISTS (SELECT 1 FROM telemetry.vehicle_state WHERE vehicle_id = %(vehicle)s)
    OR EXISTS (SELECT 1 FROM telemetry.vehicle_meter_links WHERE vehicle_id = %(vehicle)s)
"""


class VehicleRank(msgspec.Struct, rename="camel"):
    vehicle_id: str
    meter_id: str | None
    ac_consumed_kwh: float
    dc_delivered_kwh: float
    loss_kwh: float
    efficiency: float | None
    avg_battery_temp: float | None
    meter_readings: int
    vehicle_readings: int
    verdict: str


class Performance(VehicleRank, rename="camel", kw_only=True):
    from_: datetime = msgspec.field(name="from")
    to: datetime
    note: str | None = None


class Fleet(msgspec.Struct, rename="camel"):
    from_: datetime = msgspec.field(name="from")
    to: datetime
    vehicles: int
    linked_vehicles: int
    ac_consumed_kwh: float
    dc_delivered_kwh: float
    loss_kwh: float
    efficiency: float | None
    unlinked_dc_delivered_kwh: float
    meter_readings: int
    vehicle_readings: int
    verdicts: dict[str, int]
    worst: list[VehicleRank]


class SeriesPoint(msgspec.Struct, rename="camel"):
    bucket: datetime
    ac_consumed_kwh: float
    dc_delivered_kwh: float
    efficiency: float | None
    avg_battery_temp: float | None
    meter_readings: int
    vehicle_readings: int


class Series(msgspec.Struct, rename="camel"):
    vehicle_id: str
    from_: datetime = msgspec.field(name="from")
    to: datetime
    bucket: str
    points: list[SeriesPoint]


From = Annotated[datetime | None, QueryParameter(name="from", description="Window start (RFC 3339); default: to - 24h")]
To = Annotated[datetime | None, QueryParameter(name="to", description="Window end, exclusive (RFC 3339); default: now")]


def _window_params(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise BadInput(422, f"'{name}' needs a timezone offset, e.g. 2026-11-22T10:00:00Z")
    end = (end or datetime.now(UTC)).astimezone(UTC)  # any RFC 3339 offset, normalised before SQL
    start = (start or end - timedelta(hours=24)).astimezone(UTC)
    if start >= end:
        raise BadInput(422, "'from' must be before 'to'")
    return start, end


def _thresholds_params(settings: Settings) -> dict[str, float]:
    return {"healthy": settings.verdict_healthy, "degraded": settings.verdict_degraded,
            "min_ac_kwh": settings.verdict_min_ac_kwh}


class AnalyticsController(Controller):
    path = "/v1/analytics"
    tags = ["analytics"]
    guards = [requires("read")]
    security = BEARER

    @get("/performance/{vehicle_id:str}", summary="Charging efficiency of one vehicle over a window",
         responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation,
         response_headers=READ_HEADERS)
    async def performance(self, state: State, settings: AppSettings, vehicle_id: PathDeviceId, start: From = None,
                          end: To = None) -> Response[Performance]:
        start, end = _window_params(start, end)
        rows, headers = await state.reads.fetch_all(PERFORMANCE_SQL, {"vehicle": vehicle_id, "from": start,
                                                                      "to": end, **_thresholds_params(settings)})
        if not rows:
            known, headers = await state.reads.fetch_all(VEHICLE_EXISTS_SQL, {"vehicle": vehicle_id})
            if not known[0][0]:
                raise NotFoundException(f"no readings and no meter link for vehicle {vehicle_id!r}",
                                        headers=dict(headers))
            rows = [(vehicle_id, None, False, 0.0, 0.0, 0.0, None, None, 0, 0, "insufficient_data")]
        (vid, meter_id, linked, ac, dc, loss, eff, temp, meter_n, vehicle_n, verdict) = rows[0]
        note = None if linked else (
            f"vehicle {vid!r} has no meter link in this window; link it with PUT /v1/vehicles/{vid}/meter")
        return served(Performance(vid, meter_id, ac, dc, loss, eff, temp, meter_n, vehicle_n, verdict,
                                  from_=start, to=end, note=note), headers)

    @get("/fleet", summary="Fleet totals, vehicles per verdict and the worst chargers",
         responses=error_responses(401, 403, 422, 503), operation_class=ErrorDocumentedOperation,
         response_headers=READ_HEADERS)
    async def fleet(self, state: State, settings: AppSettings, start: From = None, end: To = None,
                    worst: Annotated[int, Parameter(ge=0, le=1000)] = 10) -> Response[Fleet]:
        start, end = _window_params(start, end)
        rows, headers = await state.reads.fetch_all(FLEET_SQL, {"from": start, "to": end, "worst": worst,
                                                                **_thresholds_params(settings)})
        (vehicles, linked, ac, dc, loss, eff, unlinked_dc, meter_n, vehicle_n, verdicts, ranked) = rows[0]
        return served(Fleet(
            start, end, vehicles, linked, ac, dc, loss, eff, unlinked_dc, meter_n, vehicle_n, verdicts,
            [VehicleRank(r["vehicle_id"], r["meter_id"], r["ac_kwh"], r["dc_kwh"], r["loss_kwh"], r["efficiency"],
                         r["avg_battery_temp"], r["meter_readings"], r["vehicle_readings"], r["verdict"])
             for r in ranked],
        ), headers)

    @get("/vehicles/{vehicle_id:str}/series", summary="AC, DC, efficiency and battery temperature per bucket",
         responses=error_responses(401, 403, 422, 503), operation_class=ErrorDocumentedOperation,
         response_headers=READ_HEADERS)
    async def series(self, state: State, vehicle_id: PathDeviceId, start: From = None, end: To = None,
                     bucket: Annotated[str, Parameter(description="1h, 1d or 1w")] = "1h") -> Response[Series]:
        start, end = _window_params(start, end)
        if bucket not in BUCKETS:
            raise BadInput(422, f"bucket must be one of {', '.join(BUCKETS)}")
        if (end - start) / BUCKETS[bucket] > MAX_SERIES_BUCKETS:
            raise BadInput(422, f"more than {MAX_SERIES_BUCKETS} buckets: use a larger bucket or a smaller window")
        rows, headers = await state.reads.fetch_all(SERIES_SQL, {"vehicle": vehicle_id, "from": start, "to": end,
                                                                 "bucket": BUCKETS[bucket]})
        return served(Series(vehicle_id, start, end, bucket, [SeriesPoint(*row) for row in rows]), headers)
