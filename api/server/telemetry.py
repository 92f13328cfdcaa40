"""Telemetry ingestion endpoints: meters, vehicles and mixed batches in JSON, NDJSON or CSV."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.datastructures import State

from api.db.ingest import READINGS, IngestResult, ingest_batch
from api.readings import STREAMS, BadInput, Batch, Limits, MeterReading, VehicleReading, parse_body, validate_batch
from api.server.dependencies import AppSettings
from litestar.openapi import ResponseSpec

from api.server.errors import ErrorDocumentedOperation, error_responses
from api.server.security import BEARER, requires
from api.settings import Settings
from api.stream.log import LogUnavailable, batch_messages, publish

_DESCRIPTION = (
    "Body: one reading or a JSON array of them (`application/json`), one reading per line "
    "(`application/x-ndjson`), or `text/csv` with a header row of the field names. The whole request is "
    "one transaction: a rejected request writes nothing. Readings already stored (same device and "
    "timestamp) are counted as duplicates and ignored, so retries are safe.\n\n"
    "With `Prefer: respond-async` (RFC 7240) the validated readings are written to the durable log "
    "(NATS JetStream) instead, and the answer is `202 {\"accepted\": N}` once the log has stored them; the "
    "writers commit them to the database shortly after (also while the database is down). Validation and "
    "the `4xx` answers are the same; a full or unreachable log answers `503` with `Retry-After`."
)


def _reading_schema(kind: type) -> dict[str, Any]:
    """The JSON Schema of one reading, inlined (readings nest no other type)."""
    schema = msgspec.json.schema(kind)
    return schema["$defs"][kind.__name__]


def _body_schemas(stream: str | None) -> dict[str, Any]:
    if stream is None:
        one = {"oneOf": [_reading_schema(MeterReading), _reading_schema(VehicleReading)]}
        return {"application/json": {"schema": {"oneOf": [one, {"type": "array", "minItems": 1, "items": one}]}}}
    one = _reading_schema(STREAMS[stream])
    fields = ",".join(f.encode_name for f in msgspec.structs.fields(STREAMS[stream]))
    return {
        "application/json": {"schema": {"oneOf": [one, {"type": "array", "minItems": 1, "items": one}]}},
        "application/x-ndjson": {"schema": {"type": "string", "description": "One JSON reading (as above) a line"}},
        "text/csv": {"schema": {"type": "string", "description": f"A header row `{fields}`, then one reading a row"}},
    }


def _operation(stream: str | None) -> type[ErrorDocumentedOperation]:
    """An OpenAPI operation that documents the body the handler decodes itself (to keep one fast path
    for three media types, the handlers read the raw body)."""
    content = _body_schemas(stream)

    @dataclass
    class IngestOperation(ErrorDocumentedOperation):
        def to_schema(self) -> dict[str, Any]:
            schema = super().to_schema()
            schema["requestBody"] = {"required": True, "content": content}
            return schema

    return IngestOperation


class Accepted(msgspec.Struct):
    accepted: int
    """Readings the log has stored; the writers commit them to the database."""


def wants_async(request: Request) -> bool:
    """RFC 7240: ``Prefer: respond-async`` (among other preferences, any case)."""
    return any(part.split("=")[0].strip().lower() == "respond-async"
               for value in request.headers.getall("prefer", []) for part in value.split(","))


async def _ingest(request: Request, state: State, settings: Settings,
                  stream: str | None) -> Response[IngestResult]:
    body = await request.body()
    asynchronous = wants_async(request)
    # The asynchronous path must answer while the database is down: it validates with the retention it
    # read last (the writers check again against the current one).
    retention = await (state.retention.get_or_last(state.pool) if asynchronous else state.retention.get(state.pool))
    try:
        rows = parse_body(body, request.headers.get("content-type", ""), stream)
        batch: Batch = validate_batch(rows, Limits(settings.max_rows, settings.max_future_skew, retention.accepted_age))
    except BadInput:
        READINGS.labels(stream or "mixed", "rejected_request").inc()
        raise
    if asynchronous:
        await publish(state.nats, batch_messages(batch), settings.publish_timeout_s)
        return Response(Accepted(len(batch)), status_code=202,  # type: ignore[return-value]
                        headers={"Preference-Applied": "respond-async"})
    return Response(await ingest_batch(state.pool, batch), status_code=200)


_RESPONSES = {**error_responses(401, 403, 413, 415, 422, 503),
              202: ResponseSpec(data_container=Accepted, description="With `Prefer: respond-async`: the readings are "
                                "stored in the durable log; the writers commit them to the database")}


class TelemetryController(Controller):
    path = "/v1/telemetry"
    tags = ["telemetry"]
    guards = [requires("ingest")]
    security = BEARER

    @post("/meters", status_code=200, summary="Ingest smart meter readings (AC)", description=_DESCRIPTION,
          response_description="Counts of new and duplicate readings, after commit",
          operation_class=_operation("meters"), responses=_RESPONSES)
    async def meters(self, request: Request, state: State, settings: AppSettings) -> Response[IngestResult]:
        return await _ingest(request, state, settings, "meters")

    @post("/vehicles", status_code=200, summary="Ingest vehicle readings (DC)", description=_DESCRIPTION,
          response_description="Counts of new and duplicate readings, after commit",
          operation_class=_operation("vehicles"), responses=_RESPONSES)
    async def vehicles(self, request: Request, state: State, settings: AppSettings) -> Response[IngestResult]:
        return await _ingest(request, state, settings, "vehicles")

    @post("/", status_code=200, summary="Ingest a JSON array mixing meter and vehicle readings",
          description="Each element is classified by its id field: `meterId` or `vehicleId` (both or neither "
                      "is an error). " + _DESCRIPTION,
          response_description="Counts of new and duplicate readings, after commit",
          operation_class=_operation(None), responses=_RESPONSES)
    async def mixed(self, request: Request, state: State, settings: AppSettings) -> Response[IngestResult]:
        return await _ingest(request, state, settings, None)
