"""The Litestar application: routes, lifespan (database pool), OpenAPI and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig

from api.db.pool import create_pool
from api.db.replica import read_replica
from api.db.retention import RetentionCache
from api.ops.alerts import evaluate_periodically
from api.ops.maintenance import run_maintenance_periodically
from api.ops.webhooks import deliver_webhooks_periodically
from api.server.alerts import AlertController
from api.server.analytics import AnalyticsController
from api.server.dashboard import DashboardController
from api.server.devices import DeviceController
from api.server.energygrid import EnergyGridController
from api.server.errors import EXCEPTION_HANDLERS
from api.server.fleetinfo import FleetInfoController
from api.server.health import HealthController
from api.server.keys import KeyController
from api.server.metrics import MetricsController
from api.server.security import OPEN_PATHS, SECURITY_SCHEME, ApiKeyAuthentication
from api.server.telemetry import TelemetryController
from api.server.webhooks import WebhookController
from api.settings import Settings
from api.stream.log import close as stream_close
from api.stream.log import connect as stream_connect


def create_app(settings: Settings | None = None) -> Litestar:
    """The application; without settings (a server's worker process) they are read from the environment."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def database(app: Litestar) -> AsyncIterator[None]:
        pool = create_pool(settings)
        # Do not wait: the API starts while the database is away and answers 503 until it is back.
        await pool.open(wait=False)
        app.state.pool = pool
        maintenance = asyncio.create_task(run_maintenance_periodically(pool, settings))
        webhooks = asyncio.create_task(deliver_webhooks_periodically(pool, settings))
        alerts = asyncio.create_task(evaluate_periodically(pool, settings))
        try:
            yield
        finally:
            maintenance.cancel()
            webhooks.cancel()
            alerts.cancel()
            await pool.close()

    @asynccontextmanager
    async def log(app: Litestar) -> AsyncIterator[None]:
        # Connected in the background: the API serves while NATS is away (asynchronous ingestion answers 503).
        app.state.nats = await stream_connect(settings, name="telemetry-api", wait=False)
        try:
            yield
        finally:
            await stream_close(app.state.nats)

    prometheus = PrometheusConfig(app_name="telemetry", group_path=True, exclude=["/metrics", "/health"])
    app = Litestar(
        route_handlers=[HealthController, MetricsController, TelemetryController, DeviceController,
                        AnalyticsController, KeyController, EnergyGridController, AlertController, WebhookController,
                        FleetInfoController, DashboardController],
        lifespan=[database, log, ApiKeyAuthentication.lifespan(settings), read_replica],
        dependencies={"settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False)},
        middleware=[prometheus.middleware, DefineMiddleware(ApiKeyAuthentication, exclude=OPEN_PATHS)],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Energy telemetry platform",
            version="1.0.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            components=Components(security_schemes={SECURITY_SCHEME: SecurityScheme(
                type="http", scheme="bearer", bearer_format="API key",
                description="An API key (`etk_...`) with the scope the operation names: ingest, read or admin. "
                            "Create one with `python -m api keys create --scope ingest,read`.")}),
        ),
        request_max_body_size=settings.max_body_bytes,
    )
    app.state.settings = settings
    app.state.retention = RetentionCache(settings.retention_cache_s)
    return app
