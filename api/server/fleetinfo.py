"""Small reads the dashboard needs beside the analytics (`read` scope): how fresh the fleet's data is,
and which scopes the calling API key holds (so a page can offer only what the key may do)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.response import Response

from api.server.dependencies import AppSettings
from api.server.devices import READ_HEADERS, served
from api.server.errors import ErrorDocumentedOperation, error_responses
from api.server.security import BEARER, requires

# One row per stream from its current-state table (one row per device): a scan of 10,000 rows, not of
# the readings.
FRESHNESS_SQL = """
SELECT now(), 'meters', count(*), max(time), min(time), max(received_at),
       count(*) FILTER (WHERE time < now() - %(silent_after)s)
FROM telemetry.meter_state
UNION ALL
SELECT now(), 'vehicles', count(*), max(time), min(time), max(received_at),
       count(*) FILTER (WHERE time < now() - %(silent_after)s)
FROM telemetry.vehicle_state
"""


class StreamFreshness(msgspec.Struct, rename="camel"):
    devices: int
    """Devices of this stream that ever reported."""
    newest_reading: datetime | None
    """The newest reading's timestamp, over all devices."""
    oldest_latest_reading: datetime | None
    """The stalest device's latest reading."""
    newest_received_at: datetime | None
    """When the server last stored a reading of this stream."""
    silent: int
    """Devices whose latest reading is older than `silentAfterS` (the ALERT_SILENCE setting)."""


class Freshness(msgspec.Struct, rename="camel"):
    now: datetime
    """The database's clock, against which the ages are to be read."""
    silent_after_s: float
    meters: StreamFreshness
    vehicles: StreamFreshness


class KeyInfo(msgspec.Struct, rename="camel"):
    key_id: str
    scopes: list[str]


class FleetInfoController(Controller):
    path = "/v1"
    tags = ["fleet"]
    guards = [requires("read")]
    security = BEARER

    @get("/fleet/freshness", summary="How fresh the fleet's data is: newest readings and silent devices per stream",
         responses=error_responses(401, 403, 503), operation_class=ErrorDocumentedOperation,
         response_headers=READ_HEADERS)
    async def freshness(self, state: State, settings: AppSettings) -> Response[Freshness]:
        # A status read: through the replica router, like the devices' status (DATABASE_READ_URL).
        silent_after = settings.alert_silence_td
        rows, headers = await state.reads.fetch_all(FRESHNESS_SQL, {"silent_after": silent_after})
        streams = {stream: StreamFreshness(*numbers) for _, stream, *numbers in rows}
        return served(Freshness(rows[0][0], silent_after.total_seconds(), streams["meters"], streams["vehicles"]),
                      headers)

    @get("/me", summary="The calling API key: its id and scopes",
         responses=error_responses(401, 403, 503), operation_class=ErrorDocumentedOperation)
    async def me(self, request: Request) -> KeyInfo:
        # The authentication middleware sets the user to the key's id and auth to its scopes (api/server/security.py).
        return KeyInfo(request.user, sorted(request.auth))
