"""Browser fixtures: headless Chromium (Debian's package, installed when missing) driven by Playwright,
and the dashboard's chart library installed with npm. A machine where either cannot be had fails the
browser tests loudly: they never skip."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from api.settings import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def _set_up(script: str, what: str) -> None:
    done = subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / script)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{what} could not be installed (scripts/{script}):\n{done.stdout}{done.stderr}", pytrace=False)


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    """Playwright's Chromium, the system's browser; installed from the Debian packages when missing.
    Per module: Playwright's sync API keeps an event loop running in the main thread while it is open,
    which would refuse asyncio.run() in the modules that follow."""
    from playwright.sync_api import Error, sync_playwright

    if not CHROMIUM.exists():
        _set_up("install-chromium.sh", "Chromium")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing after scripts/install-chromium.sh", pytrace=False)
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        except Error as exc:
            pytest.fail(f"Chromium ({CHROMIUM}) does not start: {exc}", pytrace=False)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def dashboard_assets() -> Path:
    """dashboard/node_modules, as `make dashboard` installs it (npm ci from the lock file)."""
    _set_up("dashboard-assets.sh", "The dashboard's chart library")
    return PROJECT_ROOT / "dashboard" / "node_modules"


@dataclass
class WatchedPage:
    """A page and what went wrong in it: console errors, failed requests and answers >= 400."""

    page: object
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    error_responses: list[tuple[int, str]] = field(default_factory=list)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def browser_page(chromium, dashboard_assets) -> Iterator:
    """A desktop-sized page of a fresh browser context (its own session storage), watched for errors;
    `browser_page(viewport)` opens more, e.g. phone-sized."""
    contexts = []

    def open_page(viewport: dict[str, int] = DESKTOP) -> WatchedPage:
        context = chromium.new_context(viewport=viewport, service_workers="block")
        contexts.append(context)
        watched = WatchedPage(context.new_page())
        watched.page.set_default_timeout(15_000)
        watched.page.on("console", lambda m: m.type == "error" and watched.console_errors.append(m.text))
        watched.page.on("pageerror", lambda e: watched.console_errors.append(f"uncaught: {e}"))
        watched.page.on("requestfailed", lambda r: watched.failed_requests.append(f"{r.method} {r.url}: {r.failure}"))
        watched.page.on("response", lambda r: r.status >= 400 and watched.error_responses.append((r.status, r.url)))
        return watched

    yield open_page
    for context in contexts:
        context.close()
