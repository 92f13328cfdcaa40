"""Telemetry ingestion endpoints: meters, vehicles and mixed batches in JSON, NDJSON or CSV."""

from __future__ import annotations

from litestar import Controller, Request, post
from litestar.datastructures import State

from api.ingest import READINGS, IngestResult, ingest_batch
from api.readings import BadInput, Batch, Limits, parse_body, validate_batch
from api.security import requires
from api.settings import get_settings

_DESCRIPTION = (
    "Body: one reading or a JSON array of them (`application/json`), one reading per line "
    "(`application/x-ndjson`), or `text/csv` with a header row of the field names. The whole request is "
    "one transaction: a rejected request writes nothing. Readings already stored (same device and "
    "timestamp) are counted as duplicates and ignored, so retries are safe."
)


async def _ingest(request: Request, state: State, stream: str | None) -> IngestResult:
    settings = get_settings()
    body = await request.body()
    try:
        rows = parse_body(body, request.headers.get("content-type", ""), stream)
        batch: Batch = validate_batch(
            rows, Limits(settings.max_rows, settings.max_future_skew, settings.raw_retention - settings.late_margin)
        )
    except BadInput:
        READINGS.labels(stream or "mixed", "rejected_request").inc()
        raise
    return await ingest_batch(state.pool, batch, settings.pool_timeout_s)


class TelemetryController(Controller):
    path = "/v1/telemetry"
    tags = ["telemetry"]
    guards = [requires("ingest")]

    @post("/meters", status_code=200, summary="Ingest smart meter readings (AC)", description=_DESCRIPTION,
          response_description="Counts of new and duplicate readings, after commit")
    async def meters(self, request: Request, state: State) -> IngestResult:
        return await _ingest(request, state, "meters")

    @post("/vehicles", status_code=200, summary="Ingest vehicle readings (DC)", description=_DESCRIPTION,
          response_description="Counts of new and duplicate readings, after commit")
    async def vehicles(self, request: Request, state: State) -> IngestResult:
        return await _ingest(request, state, "vehicles")

    @post("/", status_code=200, summary="Ingest a JSON array mixing meter and vehicle readings",
          description="Each element is classified by its id field: `meterId` or `vehicleId` (both or neither "
                      "is an error). " + _DESCRIPTION,
          response_description="Counts of new and duplicate readings, after commit")
    async def mixed(self, request: Request, state: State) -> IngestResult:
        return await _ingest(request, state, None)

