"""The dashboard in a real headless Chromium against a real API and a database loaded by the load
generator: it shows the numbers the API gives for the same window, the worst vehicle's charts draw
one point per bucket of the series endpoint, keys are asked for again when refused, and no request
fails. Also the two small reads it needs (data freshness, the key's scopes) and the open routes."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from litestar.testing import TestClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from rich.console import Console

from api.db.keys import create_key
from api.server.app import create_app
from loadgen.run import run
from tests.fix_api import Keys, settings_for
from tests.fix_browser import PHONE, WatchedPage
from tests.fix_loadgen import loadgen_options
from tests.fix_readings import meter, post, vehicle

@dataclass
class Loaded:
    url: str
    planted_faulty: list[str]


@pytest.fixture
def loaded(database, live_server_factory) -> Loaded:
    """20 meters and 20 vehicles over the last 3 hours (seed 15 plants two faulty chargers), verified,
    and one alert evaluation pass."""
    server = live_server_factory()
    options = loadgen_options(server, database, devices=20, hours=3, seed=15)
    # In a thread of its own: Playwright's session runs an event loop in this one.
    with ThreadPoolExecutor(1) as thread:
        report = thread.submit(run, options, Console(quiet=True)).result()
    assert report["verification"]["passed"], report["verification"]
    assert report["verification"]["planted_faulty"], "the fleet has a faulty charger that charged"
    admin = create_key(database.url, ["admin"])[1]
    evaluated = httpx.post(f"{server.url}/v1/alerts/evaluate", headers=Keys.header(admin), timeout=30)
    assert evaluated.status_code == 200 and evaluated.json()["open"] > 0, evaluated.text
    return Loaded(server.url, report["verification"]["planted_faulty"])


def api_get(url: str, key: str, path: str, **params: object) -> dict:
    response = httpx.get(f"{url}{path}", params=params, headers=Keys.header(key), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def log_in(watched: WatchedPage, url: str, key: str) -> None:
    page = watched.page
    page.goto(f"{url}/")
    field = page.locator("#login input[type=password]")
    field.fill(key)
    page.locator("#login button[type=submit]").click()


def wait_for_fleet(watched: WatchedPage) -> None:
    watched.page.wait_for_selector("#fleet[aria-busy=false]")
    watched.page.wait_for_selector("#worst tbody tr")


def shown_number(text: str) -> float:
    return float(re.sub(r"[^0-9.\-]", "", text))


def assert_no_errors(watched: WatchedPage) -> None:
    assert watched.console_errors == []
    assert watched.failed_requests == []
    assert watched.error_responses == []


def test_a_key_shows_the_fleet_numbers_of_the_api_and_the_worst_vehicle_leads_to_its_charts(
        loaded: Loaded, keys: Keys, browser_page, database) -> None:
    watched = browser_page()
    page = watched.page
    log_in(watched, loaded.url, keys.read)
    wait_for_fleet(watched)

    # The fleet numbers are those of GET /v1/analytics/fleet for the window the page shows.
    grid = page.locator("#fleet")
    window = {"from": grid.get_attribute("data-from"), "to": grid.get_attribute("data-to"),
              "worst": grid.get_attribute("data-worst")}
    start, end = datetime.fromisoformat(window["from"]), datetime.fromisoformat(window["to"])
    assert end - start == timedelta(hours=24) and abs(datetime.now(UTC) - end) < timedelta(minutes=2)
    fleet = api_get(loaded.url, keys.read, "/v1/analytics/fleet", **window)
    expected = {name: fleet[name] for name in ("acConsumedKwh", "dcDeliveredKwh", "lossKwh", "efficiency",
                                               "linkedVehicles", "unlinkedDcDeliveredKwh")}
    expected["unlinkedVehicles"] = fleet["vehicles"] - fleet["linkedVehicles"]
    assert fleet["acConsumedKwh"] > 0 and fleet["linkedVehicles"] == 20
    for name, value in expected.items():
        element = grid.locator(f"[data-field={name}]")
        assert float(element.get_attribute("data-value")) == value, name
        text = element.inner_text()
        if name == "efficiency":
            assert shown_number(text) == pytest.approx(value * 100, abs=0.05), (name, text)
        else:
            assert shown_number(text) == pytest.approx(value, abs=0.005), (name, text)
    shown_verdicts = {item.get_attribute("data-verdict"): int(item.locator("strong").get_attribute("data-value"))
                      for item in page.locator("#verdicts li").all()}
    assert shown_verdicts == fleet["verdicts"] and fleet["verdicts"]["faulty"] >= 1
    reporting = page.locator("#freshness tr[data-row=devices] td").all_inner_texts()
    assert reporting == ["20", "20"]

    # The worst vehicles' table is the fleet endpoint's, in its order, and sorts by a column.
    rows = lambda: [row.get_attribute("data-vehicle") for row in page.locator("#worst tbody tr").all()]  # noqa: E731
    api_order = [vehicle["vehicleId"] for vehicle in fleet["worst"]]
    assert rows() == api_order and api_order[0] in loaded.planted_faulty
    page.locator("#worst th[data-key=vehicleId]").click()
    assert rows() == sorted(api_order)
    page.locator("#worst th[data-key=vehicleId]").click()
    assert rows() == sorted(api_order, reverse=True)
    page.locator("#worst th[data-key=efficiency]").click()
    assert rows() == api_order
    watched.screenshot("dashboard-fleet")

    # The worst vehicle's row leads to its view, whose charts drew one point per bucket of the series.
    worst = api_order[0]
    page.locator(f"#worst tbody tr[data-vehicle='{worst}'] a").click()
    page.wait_for_url(f"**/#/vehicle/{worst}")
    charts = ("#chart-efficiency", "#chart-energy", "#chart-temp")
    for chart in charts:
        page.wait_for_selector(f"{chart}[data-state=drawn]")
    first = page.locator(charts[0])
    series = api_get(loaded.url, keys.read, f"/v1/analytics/vehicles/{worst}/series",
                     **{"from": first.get_attribute("data-from"), "to": first.get_attribute("data-to"),
                        "bucket": first.get_attribute("data-bucket")})
    assert first.get_attribute("data-bucket") == "1h" and len(series["points"]) >= 3
    for chart in charts:
        assert int(page.locator(chart).get_attribute("data-points")) == len(series["points"]), chart
        assert page.locator(f"{chart} canvas").count() == 1
    performance = api_get(loaded.url, keys.read, f"/v1/analytics/performance/{worst}", **window)
    summary = page.locator("#vehicle-summary")
    assert float(summary.locator("[data-field=efficiency]").get_attribute("data-value")) == performance["efficiency"]
    assert summary.locator("[data-field=verdict]").get_attribute("data-verdict") == "faulty"
    assert performance["meterId"] in page.locator("#vehicle-links").inner_text()
    status = api_get(loaded.url, keys.read, f"/v1/vehicles/{worst}/status")
    assert f"{status['soc']:.1f} %" in page.locator("#vehicle-status").inner_text()
    watched.screenshot("dashboard-vehicle")

    # Per day: the charts redraw with the daily series' buckets.
    page.locator("#bucket").select_option("1d")
    page.wait_for_selector("#chart-energy[data-bucket='1d'][data-state=drawn]")
    daily = api_get(loaded.url, keys.read, f"/v1/analytics/vehicles/{worst}/series",
                    **{"from": first.get_attribute("data-from"), "to": first.get_attribute("data-to"), "bucket": "1d"})
    assert int(page.locator("#chart-energy").get_attribute("data-points")) == len(daily["points"]) >= 1

    # Open alerts, newest first; a read-only key may not acknowledge them.
    page.locator("#nav a[data-view=alerts]").click()
    page.wait_for_selector("#alerts tbody tr")
    alerts = api_get(loaded.url, keys.read, "/v1/alerts", state="open", limit=50)["alerts"]
    shown = [int(row.get_attribute("data-alert")) for row in page.locator("#alerts tbody tr").all()]
    assert shown == [alert["id"] for alert in alerts] == sorted(shown, reverse=True)
    assert page.locator("#alerts tbody button").first.is_disabled()
    assert "ingest or admin" in page.locator("#ack-note").inner_text()
    watched.screenshot("dashboard-alerts")

    # Another key, with the ingest scope, acknowledges one.
    page.locator("#forget-key").click()
    page.locator("#login input[type=password]").fill(keys.all)
    page.locator("#login button[type=submit]").click()
    page.wait_for_selector("#alerts tbody tr button:enabled")
    page.locator("#alerts tbody tr").first.locator("button").click()
    page.wait_for_selector("#alerts tbody tr >> nth=0 >> text=acknowledged")
    with database.connect() as conn:
        acknowledged = conn.execute("SELECT id FROM telemetry.alerts WHERE acknowledged_at IS NOT NULL").fetchall()
    assert acknowledged == [(shown[0],)]

    # A phone-width screen: one column, nothing wider than the screen.
    phone = browser_page(PHONE)
    log_in(phone, loaded.url, keys.read)
    wait_for_fleet(phone)
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    phone.screenshot("dashboard-phone-fleet")
    phone.page.locator(f"#worst tbody tr[data-vehicle='{worst}'] a").click()
    phone.page.wait_for_selector("#chart-energy[data-state=drawn]")
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    phone.screenshot("dashboard-phone-vehicle")

    assert_no_errors(watched)
    assert_no_errors(phone)


def test_a_wrong_key_shows_the_error_and_a_revoked_key_is_asked_for_again(
        database, live_server_factory, browser_page) -> None:
    server = live_server_factory()
    watched = browser_page()
    page = watched.page
    log_in(watched, server.url, "etk_000000000000_wrongwrongwrongwrong")
    error = page.locator("#login-error")
    error.wait_for(state="visible")
    assert "refused (401" in error.inner_text()
    assert page.locator("#view-fleet").is_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    watched.screenshot("dashboard-wrong-key")
    assert watched.error_responses == [(401, f"{server.url}/v1/me")]
    assert all("401" in message for message in watched.console_errors), watched.console_errors
    assert watched.failed_requests == []

    # A valid key opens the (empty) fleet; revoked, it is refused on the next request and asked for again.
    key_id, key = create_key(database.url, ["read"])[:2]
    page.locator("#login input[type=password]").fill(key)
    page.locator("#login button[type=submit]").click()
    page.wait_for_selector("#fleet[aria-busy=false]")
    assert page.locator("#worst-empty").is_visible()
    assert page.locator("#fleet [data-field=acConsumedKwh]").get_attribute("data-value") == "0"
    assert page.evaluate("Object.keys(sessionStorage)") == ["telemetry.apiKey"]
    assert key not in page.url and page.context.cookies() == []

    # Two dates: from the first day's midnight to the end of the second (UTC).
    page.locator("#window").select_option("dates")
    page.locator("#date-from").fill("2026-11-01")
    page.locator("#date-to").fill("2026-11-03")
    page.locator("#apply-dates").click()
    page.wait_for_selector("#fleet[aria-busy=false][data-from='2026-11-01T00:00:00.000Z']")
    assert page.locator("#fleet").get_attribute("data-to") == "2026-11-04T00:00:00.000Z"
    assert page.locator("#fleet [data-field=linkedVehicles]").get_attribute("data-value") == "0"

    admin = create_key(database.url, ["admin"])[1]
    assert httpx.delete(f"{server.url}/v1/keys/{key_id}", headers=Keys.header(admin)).status_code == 204
    page.locator("#window").select_option("7d")
    error.wait_for(state="visible")
    assert "refused (401" in error.inner_text() and page.evaluate("sessionStorage.length") == 0


def set_connections(database, allowed: bool) -> None:
    """Let the database take connections, or refuse them and cut the ones it has (the API's pool included)."""
    dbname = conninfo_to_dict(database.url)["dbname"]
    with psycopg.connect(make_conninfo(database.url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS {str(allowed).lower()}")
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s", (dbname,))


def test_an_unavailable_database_is_said_so_and_the_page_recovers(database, live_server_factory, browser_page,
                                                                   keys: Keys) -> None:
    server = live_server_factory()
    watched = browser_page()
    page = watched.page
    log_in(watched, server.url, keys.read)
    page.wait_for_selector("#fleet[aria-busy=false]")

    set_connections(database, allowed=False)
    try:
        page.locator("#window").select_option("7d")  # the next requests meet the outage
        banner = page.locator("#banner")
        banner.wait_for(state="visible")
        assert "database is unavailable (503)" in banner.inner_text() and banner.locator("button").is_visible()
        assert page.locator("#login").is_hidden()  # a 503 keeps the key
        watched.screenshot("dashboard-unavailable")
    finally:
        set_connections(database, allowed=True)
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while httpx.get(f"{server.url}/health/ready").status_code != 200:
        assert datetime.now(UTC) < deadline, "the API did not reconnect"
        time.sleep(0.2)
    banner.locator("button").click()
    page.wait_for_selector("#fleet[aria-busy=false] [data-field=acConsumedKwh][data-value='0']")
    assert banner.is_hidden() and page.locator("#fleet").get_attribute("data-from").startswith(
        (datetime.now(UTC) - timedelta(days=7)).date().isoformat())
    assert watched.error_responses and {status for status, _ in watched.error_responses} == {503}
    assert watched.failed_requests == []


def test_the_page_and_its_assets_are_served_without_a_key_and_stay_out_of_the_schema(
        client: TestClient, dashboard_assets) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="password"' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for path, kind in (("/dashboard/app.js", "javascript"), ("/dashboard/style.css", "css"),
                       ("/dashboard/assets/uPlot.iife.min.js", "javascript"), ("/dashboard/assets/uPlot.min.css", "css")):
        answer = client.get(path)
        assert answer.status_code == 200 and kind in answer.headers["content-type"], path
        assert len(answer.content) > 1000, path
    assert client.get("/dashboard/assets/package.json").status_code == 404
    assert client.get("/dashboard/../pyproject.toml").status_code == 404
    paths = client.get("/schema/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/dashboard") for path in paths)
    assert {"/v1/fleet/freshness", "/v1/me"} <= set(paths)


def test_the_dashboard_is_served_from_beside_the_sql_directory(database, tmp_path) -> None:
    """As in the image, where SQL_DIR is /app/sql and the dashboard /app/dashboard."""
    (tmp_path / "dashboard").mkdir()
    (tmp_path / "dashboard" / "index.html").write_text("<!doctype html><title>deployed</title>")
    settings = settings_for(database, sql_dir=str(tmp_path / "sql"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as deployed:
        assert deployed.get("/").text == "<!doctype html><title>deployed</title>"
        missing = deployed.get("/dashboard/assets/uPlot.iife.min.js")
        assert missing.status_code == 404 and "make dashboard" in missing.json()["message"]


def test_freshness_gives_the_newest_readings_and_the_silent_devices_per_stream(client: TestClient, keys: Keys) -> None:
    # A meter that reported 1 and 2 minutes ago; a vehicle silent for an hour (ALERT_SILENCE is 15 min).
    assert post(client, "/v1/telemetry/meters", [meter(0, minutes_ago=1), meter(1, minutes_ago=1)], keys.ingest).status_code == 200
    assert post(client, "/v1/telemetry/vehicles", [vehicle(0, minutes_ago=60)], keys.ingest).status_code == 200
    answer = client.get("/v1/fleet/freshness", headers=Keys.header(keys.read))
    assert answer.status_code == 200 and answer.headers["X-Served-By"] == "primary", answer.text
    body = answer.json()
    assert body["silentAfterS"] == 900
    assert body["meters"]["devices"] == 1 and body["meters"]["silent"] == 0
    assert body["meters"]["newestReading"] == meter(0, minutes_ago=1)["timestamp"]
    assert body["meters"]["oldestLatestReading"] == body["meters"]["newestReading"]
    assert body["vehicles"] == {**body["vehicles"], "devices": 1, "silent": 1,
                                "newestReading": vehicle(0, minutes_ago=60)["timestamp"]}
    received = datetime.fromisoformat(body["vehicles"]["newestReceivedAt"])
    assert abs(datetime.fromisoformat(body["now"]) - received) < timedelta(minutes=1)
    assert client.get("/v1/fleet/freshness", headers=Keys.header(keys.ingest)).status_code == 403


def test_freshness_of_an_empty_platform_has_no_times(client: TestClient, keys: Keys) -> None:
    body = client.get("/v1/fleet/freshness", headers=Keys.header(keys.read)).json()
    assert body["meters"] == body["vehicles"] == {"devices": 0, "newestReading": None, "oldestLatestReading": None,
                                                  "newestReceivedAt": None, "silent": 0}


def test_me_names_the_calling_key_and_its_scopes(client: TestClient, keys: Keys, database) -> None:
    key_id, key = create_key(database.url, ["read", "ingest"])[:2]
    assert client.get("/v1/me", headers=Keys.header(key)).json() == {"keyId": key_id, "scopes": ["ingest", "read"]}
    assert client.get("/v1/me", headers=Keys.header(keys.ingest)).status_code == 403
    assert client.get("/v1/me").status_code == 401
