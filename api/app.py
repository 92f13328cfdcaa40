"""The Litestar application: routes, lifespan (database pool), OpenAPI and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from litestar.middleware import DefineMiddleware

from api.analytics import AnalyticsController
from api.db import create_pool
from api.devices import DeviceController
from api.errors import EXCEPTION_HANDLERS
from api.health import HealthController
from api.maintenance import run_maintenance_periodically
from api.security import OPEN_PATHS, ApiKeyAuthentication
from api.settings import Settings, get_settings
from api.telemetry import TelemetryController


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()

    @asynccontextmanager
    async def database(app: Litestar) -> AsyncIterator[None]:
        pool = create_pool(settings)
        # Do not wait: the API starts while the database is away and answers 503 until it is back.
        await pool.open(wait=False)
        app.state.pool = pool
        maintenance = asyncio.create_task(run_maintenance_periodically(pool, settings))
        try:
            yield
        finally:
            maintenance.cancel()
            await pool.close()

    prometheus = PrometheusConfig(app_name="telemetry", group_path=True, exclude=["/metrics", "/health"])
    return Litestar(
        route_handlers=[HealthController, PrometheusController, TelemetryController, DeviceController,
                        AnalyticsController],
        lifespan=[database],
        middleware=[prometheus.middleware, DefineMiddleware(ApiKeyAuthentication, exclude=OPEN_PATHS)],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Energy telemetry platform",
            version="1.0.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        request_max_body_size=settings.max_body_bytes,
    )
