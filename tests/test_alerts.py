"""Alert rules and their evaluation (telemetry.evaluate_alerts): which alerts open, stay open and
resolve, the webhook outbox written with them, concurrency, and `python -m api alerts evaluate`.
Every evaluation is given its moment explicitly, so nothing depends on the wall clock's progress."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest

from api.cli import main
from api.ops.alerts import evaluate_once
from api.ops.maintenance import run_refresh_policies
from api.settings import Settings
from tests.fix_api import settings_for
from tests.fix_db import Database, ingest_rows

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
EARLIER = NOW - timedelta(hours=7)
"""Planted problems end here; healthy data follows until NOW, more than one alert window later."""

# (meter, vehicle, efficiency): the pairs charging over the two hours before the moment evaluated.
PLANTED_PAIRS = [("MTR-F", "EV-F", 0.6), ("MTR-A", "EV-A", 1.1), ("MTR-H", "EV-H", 0.9), ("MTR-O", "EV-O", 0.9)]
EXPECTED = {("faulty_charger", "EV-F"): 0.6, ("impossible_energy", "EV-A"): 1.1,
            ("device_silent", "MTR-S"): 1200.0, ("battery_overheat", "EV-O"): 60.0}


def plant(conn: psycopg.Connection, end: datetime, healthy: bool = False) -> None:
    """Readings every minute over [end - 2 h, end): the planted pairs (all at 0.9 and 30 °C when
    `healthy`), EV-O's last reading at 60 °C, and MTR-S silent for the last 20 minutes (unless `healthy`)."""
    meters, vehicles = [], []
    minutes = range(1, 121)
    for meter_id, vehicle_id, efficiency in PLANTED_PAIRS:
        efficiency = 0.9 if healthy else efficiency
        for m in minutes:
            t = end - timedelta(minutes=m)
            hot = vehicle_id == "EV-O" and m == 1 and not healthy
            meters.append((meter_id, t, 0.1, 230.0))
            vehicles.append((vehicle_id, t, 50.0, 0.1 * efficiency, 60.0 if hot else 30.0))
    meters += [("MTR-S", end - timedelta(minutes=m), 0.1, 230.0) for m in minutes if healthy or m >= 20]
    ingest_rows(conn, meters=meters, vehicles=vehicles)


@pytest.fixture
def fleet(conn: psycopg.Connection) -> psycopg.Connection:
    for meter_id, vehicle_id, _ in PLANTED_PAIRS:
        conn.execute("SELECT telemetry.link_vehicle(%s, %s)", (vehicle_id, meter_id))
    return conn


@pytest.fixture
def app(database: Database) -> psycopg.Connection:
    """As the API's role: evaluations run with the privileges the platform has."""
    with psycopg.connect(database.app_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def settings(database: Database) -> Settings:
    return settings_for(database)  # alert_interval_s=0: only explicit evaluations here


def webhook(conn: psycopg.Connection, rules: list[str] | None = None, deleted: bool = False) -> int:
    return conn.execute(
        "INSERT INTO telemetry.webhooks (url, rules, secret, deleted_at) VALUES (%s, %s, 's3cret', %s) RETURNING id",
        ("http://127.0.0.1:9/hook", rules, NOW if deleted else None)).fetchone()[0]


def opened_and_resolved(evaluation) -> tuple[dict, dict]:
    return ({(c.rule, c.device_id): c.value for c in evaluation.opened},
            {(c.rule, c.device_id): c.value for c in evaluation.resolved})


def alerts(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("""SELECT rule, device_id, state, opened_at, last_seen_at, resolved_at, value
                           FROM telemetry.alerts ORDER BY rule, device_id, id""").fetchall()


def deliveries(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("""SELECT d.webhook_id, d.event, a.rule, a.device_id, d.id, d.payload
                           FROM telemetry.webhook_deliveries d JOIN telemetry.alerts a ON a.id = d.alert_id
                           ORDER BY d.webhook_id, d.event, a.rule, a.device_id""").fetchall()


def approx(values: dict) -> dict:
    return {key: pytest.approx(value, rel=1e-9) for key, value in values.items()}


@pytest.mark.parametrize("refreshed", [True, False], ids=["refreshed", "real-time"])
def test_planted_problems_open_exactly_their_alerts(fleet, app, settings, refreshed: bool) -> None:
    plant(fleet, EARLIER)
    if refreshed:
        run_refresh_policies(fleet)
    evaluation = evaluate_once(app, settings, now=EARLIER)
    opened, resolved = opened_and_resolved(evaluation)
    assert opened == approx(EXPECTED) and resolved == {}
    assert [(rule, device, state, opened_at, seen) for rule, device, state, opened_at, seen, *_ in alerts(fleet)] == [
        (rule, device, "open", EARLIER, EARLIER) for rule, device in sorted(EXPECTED)]


def test_a_second_evaluation_changes_nothing(fleet, app, settings) -> None:
    hook = webhook(fleet)
    plant(fleet, EARLIER)
    run_refresh_policies(fleet)
    evaluate_once(app, settings, now=EARLIER)
    before, outbox = alerts(fleet), deliveries(fleet)
    assert len(outbox) == 4

    assert opened_and_resolved(evaluate_once(app, settings, now=EARLIER)) == ({}, {})
    assert alerts(fleet) == before and deliveries(fleet) == outbox

    # A minute later: still the same alerts, seen again; MTR-S silent a minute longer.
    later = EARLIER + timedelta(minutes=1)
    assert opened_and_resolved(evaluate_once(app, settings, now=later)) == ({}, {})
    after = alerts(fleet)
    assert [(r, d, s, o) for r, d, s, o, *_ in after] == [(r, d, s, o) for r, d, s, o, *_ in before]
    assert {row[4] for row in after} == {later}
    assert {(r, d): v for r, d, *_, v in after}[("device_silent", "MTR-S")] == 1260.0
    assert deliveries(fleet) == outbox and {row[0] for row in outbox} == {hook}


def test_healthy_data_resolves_them_even_when_acknowledged(fleet, app, settings) -> None:
    hook = webhook(fleet)
    plant(fleet, EARLIER)
    run_refresh_policies(fleet)
    evaluate_once(app, settings, now=EARLIER)
    fleet.execute("""UPDATE telemetry.alerts SET acknowledged_at = %s, acknowledged_by = 'key-1'
                     WHERE rule = 'faulty_charger'""", (EARLIER + timedelta(minutes=5),))

    plant(fleet, NOW, healthy=True)
    run_refresh_policies(fleet)
    opened, resolved = opened_and_resolved(evaluate_once(app, settings, now=NOW))
    assert opened == {} and resolved == approx(EXPECTED)
    assert {(r, d, s, resolved_at) for r, d, s, _, _, resolved_at, _ in alerts(fleet)} == {
        (rule, device, "resolved", NOW) for rule, device in EXPECTED}
    events = [(w, event, rule, device) for w, event, rule, device, *_ in deliveries(fleet)]
    assert sorted(events) == sorted([(hook, "alert.opened", *key) for key in EXPECTED]
                                    + [(hook, "alert.resolved", *key) for key in EXPECTED])
    payload = next(p for _, event, rule, *_, p in deliveries(fleet)
                   if event == "alert.resolved" and rule == "faulty_charger")
    assert payload["alert"]["state"] == "resolved"
    assert payload["alert"]["acknowledgedAt"] == iso(EARLIER + timedelta(minutes=5))
    assert opened_and_resolved(evaluate_once(app, settings, now=NOW)) == ({}, {})


def iso(ts: datetime) -> str:
    """How the API's encoder writes a time."""
    return msgspec.json.encode(ts).decode().strip('"')


def test_outbox_rows_follow_each_webhooks_subscription(fleet, app, settings) -> None:
    every = webhook(fleet)
    faulty = webhook(fleet, ["faulty_charger", "battery_overheat"])
    other = webhook(fleet, ["device_silent"])
    deleted = webhook(fleet, deleted=True)
    plant(fleet, EARLIER)
    run_refresh_policies(fleet)
    evaluate_once(app, settings, now=EARLIER)

    rows = deliveries(fleet)
    by_hook = {hook: sorted((rule, device) for h, _, rule, device, *_ in rows if h == hook)
               for hook in (every, faulty, other, deleted)}
    assert by_hook == {every: sorted(EXPECTED), faulty: [("battery_overheat", "EV-O"), ("faulty_charger", "EV-F")],
                       other: [("device_silent", "MTR-S")], deleted: []}
    (alert_id, opened_at) = fleet.execute(
        "SELECT id, opened_at FROM telemetry.alerts WHERE rule = 'faulty_charger'").fetchone()
    _, event, _, _, delivery_id, payload = next(row for row in rows if row[0] == faulty and row[2] == "faulty_charger")
    assert event == "alert.opened"
    assert payload == {
        "event": "alert.opened", "deliveryId": str(delivery_id),
        "alert": {"id": alert_id, "rule": "faulty_charger", "deviceId": "EV-F", "state": "open",
                  "openedAt": iso(opened_at), "lastSeenAt": iso(opened_at), "resolvedAt": None,
                  "value": pytest.approx(0.6, rel=1e-9), "acknowledgedAt": None}}


@pytest.mark.parametrize("ts", [datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
                                datetime(2026, 11, 23, 10, 0, 0, 120000, tzinfo=UTC),
                                datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)])
def test_payload_times_are_spelled_as_the_api_spells_them(conn, ts: datetime) -> None:
    assert conn.execute("SELECT telemetry.rfc3339(%s)", (ts,)).fetchone()[0] == iso(ts)


def test_parallel_evaluations_open_each_alert_once(fleet, database: Database, settings) -> None:
    webhook(fleet)
    plant(fleet, EARLIER)
    run_refresh_policies(fleet)
    start = threading.Barrier(3)
    results: list = []

    def evaluate() -> None:
        with psycopg.connect(database.app_url) as connection:
            start.wait()
            results.append(evaluate_once(connection, settings, now=EARLIER))

    threads = [threading.Thread(target=evaluate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(result.opened) for result in results) == [0, 0, 4]
    assert len(alerts(fleet)) == 4 and len(deliveries(fleet)) == 4


def test_an_evaluation_that_may_not_wait_skips_while_another_runs(fleet, app, database: Database, settings) -> None:
    plant(fleet, EARLIER)
    with psycopg.connect(database.app_url) as other, other.transaction():
        other.execute("SELECT * FROM telemetry.evaluate_alerts(%s)", (EARLIER,))  # holds the lock
        assert opened_and_resolved(evaluate_once(app, settings, now=EARLIER, wait=False)) == ({}, {})
    assert len(alerts(fleet)) == 4
    assert opened_and_resolved(evaluate_once(app, settings, now=EARLIER, wait=False)) == ({}, {})


def test_cli_prints_what_opened(fleet, database: Database, monkeypatch, capsys) -> None:
    # At the wall clock: the planted problems end now.
    plant(fleet, NOW)
    monkeypatch.setenv("DATABASE_URL", database.app_url)
    assert main(["alerts", "evaluate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    opened = {tuple(line.split()[1:3]) for line in lines if line.startswith("opened")}
    assert opened == set(EXPECTED)
    assert lines[-1] == "alerts evaluated: 4 opened, 0 resolved, 4 open"
