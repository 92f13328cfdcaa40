"""Liveness and readiness: the database is reachable and its schema is current."""

from __future__ import annotations

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.response import Response
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from api.schema import migrations
from api.server.dependencies import AppSettings


class NotReady(msgspec.Struct, omit_defaults=True):
    """Why the API is not ready (the readiness answer is built as a dict; this documents it)."""

    status: str
    """unavailable (the database cannot be reached) or schema_outdated (run the migrations)."""
    reason: str | None = None
    """For unavailable: the kind of error met."""
    problems: list[str] | None = None
    """For schema_outdated: pending, edited or foreign migration files."""


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/live", summary="The process is up")
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="The database is reachable and its schema is current",
         response_description="`{\"status\": \"ok\", \"edition\": ...}`: the TimescaleDB edition the schema is for",
         responses={503: ResponseSpec(NotReady, generate_examples=False,
                                      description="Not ready: retry after the Retry-After header's seconds")})
    async def ready(self, state: State, settings: AppSettings) -> Response[dict[str, object]]:
        retry = {"Retry-After": str(settings.retry_after_s)}
        try:
            async with state.pool.connection() as conn:
                cur = await conn.execute("SELECT to_regclass('telemetry.schema_migrations') IS NOT NULL")
                (has_ledger,) = await cur.fetchone()
                cur = await conn.execute(migrations.LEDGER_QUERY if has_ledger else migrations.LICENSE_QUERY)
                license_, rows = await cur.fetchone()
        except Exception as exc:  # whatever keeps us from the database means "not ready"
            return Response({"status": "unavailable", "reason": type(exc).__name__},
                            status_code=HTTP_503_SERVICE_UNAVAILABLE, headers=retry)
        edition = migrations.edition_of_license(license_)
        problems = migrations.compare(edition, migrations.ledger_from_rows(rows), settings.sql_path)
        if problems:
            return Response({"status": "schema_outdated", "problems": problems},
                            status_code=HTTP_503_SERVICE_UNAVAILABLE, headers=retry)
        return Response({"status": "ok", "edition": edition})
