"""Liveness and readiness: the database is reachable and its schema is current."""

from __future__ import annotations

from litestar import Controller, get
from litestar.datastructures import State
from litestar.response import Response
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from api.schema import migrations
from api.server.dependencies import AppSettings


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/live", summary="The process is up")
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="The database is reachable and its schema is current")
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
