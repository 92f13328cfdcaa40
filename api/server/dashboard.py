"""The dashboard: `GET /` and its hand-written files (dashboard/), and the chart library that
`npm ci` installed into dashboard/node_modules. Open (no API key: the page asks for one and calls the
API with it) and left out of the OpenAPI document. Only the files listed here are served."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from litestar import Controller, get
from litestar.exceptions import NotFoundException
from litestar.params import PathParameter
from litestar.response import File

from api.server.dependencies import AppSettings
from api.settings import Settings

PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
ASSETS = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
ASSETS_DIR = Path("node_modules", "uplot", "dist")
FileName = Annotated[str, PathParameter(max_length=64)]
# The page loads nothing from elsewhere and talks only to this API; no frame may embed it.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def dashboard_dir(settings: Settings) -> Path:
    # dashboard/ is deployed beside sql/ (the project tree, or /app in the image), like the SQL files.
    return settings.sql_path.parent / "dashboard"


def _file(path: Path, media_type: str) -> File:
    if not path.is_file():
        raise NotFoundException(f"{path.name} is missing: install the dashboard's assets with `make dashboard`")
    return File(path, media_type=media_type, content_disposition_type="inline", headers=HEADERS)


class DashboardController(Controller):
    path = "/"
    include_in_schema = False

    @get("/", media_type="text/html")
    async def page(self, settings: AppSettings) -> File:
        return _file(dashboard_dir(settings) / "index.html", "text/html")

    @get("/dashboard/{name:str}")
    async def page_file(self, settings: AppSettings, name: FileName) -> File:
        if name not in PAGE_FILES:
            raise NotFoundException(f"no dashboard file {name!r}")
        return _file(dashboard_dir(settings) / name, PAGE_FILES[name])

    @get("/dashboard/assets/{name:str}")
    async def asset(self, settings: AppSettings, name: FileName) -> File:
        if name not in ASSETS:
            raise NotFoundException(f"no dashboard asset {name!r}")
        return _file(dashboard_dir(settings) / ASSETS_DIR / name, ASSETS[name])
