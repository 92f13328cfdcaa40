"""Error responses: one JSON shape for every 4xx/503, never a 500 for bad input or a lost database."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Operation
from psycopg_pool import PoolTimeout

from api.readings import BadInput
from api.stream.log import LogUnavailable

log = logging.getLogger("api")

# What "the database is away or overloaded" looks like from psycopg: answer 503, never 500.
UNAVAILABLE = (PoolTimeout, psycopg.OperationalError, psycopg.errors.AdminShutdown,
               psycopg.errors.CannotConnectNow, psycopg.errors.QueryCanceled)


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    """One failing reading (index, field, reason: api.readings.RowError) or one failing request
    parameter (source, key, message: Litestar's validation)."""

    index: int | None = None
    """The reading's position in the request, from 0 (array element, NDJSON line or CSV data row)."""
    field: str | None = None
    """The reading's failing field, when one field is to blame."""
    reason: str | None = None
    source: str | None = None
    """Where the failing parameter was: query, path, header, cookie or body."""
    key: str | None = None
    """The failing parameter or body field."""
    message: str | None = None


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every 4xx and 503 answer."""

    error: str
    """A stable code: invalid_input, too_large, unsupported_media_type, unauthorized, forbidden,
    not_found, conflict, unavailable."""
    message: str
    """What went wrong, for a person."""
    errors: list[ErrorDetail] | None = None
    """For rejected readings, the first failing ones; for invalid parameters, each of them."""


_MEANING = {
    401: "No API key, or an unknown or revoked one",
    403: "The API key lacks the scope this operation needs",
    404: "Not found",
    409: "Conflicts with the stored state; nothing was changed",
    413: "The body or its number of rows is over the configured limits; nothing was stored",
    415: "Unsupported content type",
    422: "Invalid input: the failing readings (the first ones) or parameters are listed; nothing was stored",
    503: "The database (or, for asynchronous ingestion, the log) is unavailable or overloaded; retry after the "
         "Retry-After header's seconds",
}


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI documentation of the error answers an operation can give."""
    return {code: ResponseSpec(data_container=ErrorBody, description=_MEANING[code], generate_examples=False)
            for code in codes}


@dataclass
class ErrorDocumentedOperation(Operation):
    """An operation documented with `error_responses`, without the 400 Litestar adds to every operation
    that validates parameters: this app answers invalid parameters 422 (see `validation`), never 400."""

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        schema["responses"].pop("400", None)
        return schema


def _body(error: str, message: str, errors: list | None = None) -> dict:
    body: dict = {"error": error, "message": message}
    if errors:
        body["errors"] = errors
    return body


def bad_input(_: Request, exc: BadInput) -> Response:
    error = {409: "conflict", 413: "too_large", 415: "unsupported_media_type"}.get(exc.status, "invalid_input")
    return Response(_body(error, exc.message, exc.errors), status_code=exc.status)


def unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", type(exc).__name__)
    return Response(
        _body("unavailable", "the database is unavailable or overloaded; retry later"),
        status_code=503,
        headers={"Retry-After": str(request.app.state.settings.retry_after_s)},
    )


def log_unavailable(request: Request, exc: LogUnavailable) -> Response:
    log.warning("log unavailable: %s", exc)
    return Response(
        _body("unavailable", f"{exc}; retry later"),
        status_code=503,
        headers={"Retry-After": str(request.app.state.settings.retry_after_s)},
    )


def validation(_: Request, exc: ValidationException) -> Response:
    details = exc.extra if isinstance(exc.extra, list) else None
    return Response(_body("invalid_input", exc.detail, details), status_code=422)


def http_error(_: Request, exc: HTTPException) -> Response:
    if exc.status_code == 400:
        # Litestar's 400s are bad input (a body it cannot decode, such as truncated JSON): 422, as all bad input.
        return Response(_body("invalid_input", exc.detail), status_code=422, headers=exc.headers)
    error = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
             413: "too_large", 415: "unsupported_media_type", 429: "too_many_requests"}.get(exc.status_code, "error")
    return Response(_body(error, exc.detail), status_code=exc.status_code, headers=exc.headers)


def unexpected(_: Request, exc: Exception) -> Response:
    # Never echo internals (SQL, keys) to the client; the log has the traceback.
    log.exception("unhandled error")
    return Response(_body("internal_error", "internal error"), status_code=500)


EXCEPTION_HANDLERS = {
    BadInput: bad_input,
    **{kind: unavailable for kind in UNAVAILABLE},
    LogUnavailable: log_unavailable,
    ValidationException: validation,
    HTTPException: http_error,
    Exception: unexpected,
}
