"""Error responses: one JSON shape for every 4xx/503, never a 500 for bad input or a lost database."""

from __future__ import annotations

import logging

import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from psycopg_pool import PoolTimeout

from api.readings import BadInput
from api.settings import get_settings

log = logging.getLogger("api")

# What "the database is away or overloaded" looks like from psycopg: answer 503, never 500.
UNAVAILABLE = (PoolTimeout, psycopg.OperationalError, psycopg.errors.AdminShutdown,
               psycopg.errors.CannotConnectNow, psycopg.errors.QueryCanceled)


def _body(error: str, message: str, errors: list | None = None) -> dict:
    body: dict = {"error": error, "message": message}
    if errors:
        body["errors"] = errors
    return body


def bad_input(_: Request, exc: BadInput) -> Response:
    error = {413: "too_large", 415: "unsupported_media_type"}.get(exc.status, "invalid_input")
    return Response(_body(error, exc.message, exc.errors), status_code=exc.status)


def unavailable(_: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", type(exc).__name__)
    return Response(
        _body("unavailable", "the database is unavailable or overloaded; retry later"),
        status_code=503,
        headers={"Retry-After": str(get_settings().retry_after_s)},
    )


def validation(_: Request, exc: ValidationException) -> Response:
    details = exc.extra if isinstance(exc.extra, list) else None
    return Response(_body("invalid_input", exc.detail, details), status_code=422)


def http_error(_: Request, exc: HTTPException) -> Response:
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
    ValidationException: validation,
    HTTPException: http_error,
    Exception: unexpected,
}
