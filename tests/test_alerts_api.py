"""The alerts API: filtered listings newest first with a keyset cursor that neither repeats nor skips
an alert, one alert, acknowledgement (who and when, idempotent) and the scopes each operation needs.
Alerts are written with SQL here; their evaluation is tested in test_alerts.py."""

from __future__ import annotations

import psycopg
from litestar.testing import TestClient

from api.db.keys import split_key
from tests.fix_api import Keys


def insert_alert(conn: psycopg.Connection, rule: str = "battery_overheat", device: str = "EV-0001",
                 state: str = "open", value: float | None = 61.5) -> int:
    return conn.execute(
        """INSERT INTO telemetry.alerts (rule, device_id, state, opened_at, last_seen_at, resolved_at, value)
           VALUES (%s, %s, %s, now() - interval '1 hour', now(), CASE WHEN %s = 'resolved' THEN now() END, %s)
           RETURNING id""", (rule, device, state, state, value)).fetchone()[0]


def get_alerts(client: TestClient, key: str, **params: object):
    return client.get("/v1/alerts", params=params, headers=Keys.header(key))


def ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [alert["id"] for alert in response.json()["alerts"]]


def test_alerts_are_listed_newest_first_filtered_by_state_rule_and_device(client: TestClient, keys: Keys,
                                                                          conn: psycopg.Connection) -> None:
    hot = insert_alert(conn, "battery_overheat", "EV-0001")
    silent = insert_alert(conn, "device_silent", "MTR-0001", value=20)
    old = insert_alert(conn, "battery_overheat", "EV-0002", state="resolved")
    faulty = insert_alert(conn, "faulty_charger", "EV-0001", value=0.6)

    assert ids(get_alerts(client, keys.read)) == [faulty, silent, hot]  # default: open only
    assert ids(get_alerts(client, keys.read, state="resolved")) == [old]
    assert ids(get_alerts(client, keys.read, state="all")) == [faulty, old, silent, hot]
    assert ids(get_alerts(client, keys.read, state="all", rule="battery_overheat")) == [old, hot]
    assert ids(get_alerts(client, keys.read, device="EV-0001")) == [faulty, hot]
    assert ids(get_alerts(client, keys.read, device="EV-0001", rule="device_silent")) == []

    body = get_alerts(client, keys.read, state="resolved").json()
    assert body["next"] is None
    (alert,) = body["alerts"]
    assert set(alert) == {"id", "rule", "deviceId", "state", "openedAt", "lastSeenAt", "resolvedAt", "value",
                          "acknowledgedAt", "acknowledgedBy"}
    assert (alert["rule"], alert["deviceId"], alert["state"], alert["value"]) == ("battery_overheat", "EV-0002",
                                                                                  "resolved", 61.5)
    assert alert["resolvedAt"] is not None and alert["acknowledgedAt"] is None


def test_the_cursor_walks_every_alert_once_even_while_new_ones_open(client: TestClient, keys: Keys,
                                                                    conn: psycopg.Connection) -> None:
    created = [insert_alert(conn, "device_silent", f"MTR-{i:04d}", state="open" if i % 3 else "resolved")
               for i in range(23)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params = {"state": "all", "limit": 5, **({"cursor": cursor} if cursor else {})}
        body = get_alerts(client, keys.read, **params).json()
        seen += [alert["id"] for alert in body["alerts"]]
        pages += 1
        if pages == 2:  # an alert opening mid-walk is newer than the cursor: not on later pages
            insert_alert(conn, "device_silent", "MTR-NEW")
        cursor = body["next"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert seen == sorted(created, reverse=True)  # no duplicate, no gap, newest first
    assert pages == 5


def test_bad_query_values_are_refused_with_422(client: TestClient, keys: Keys, conn: psycopg.Connection) -> None:
    insert_alert(conn)
    for params in ({"state": "closed"}, {"limit": 0}, {"limit": 1001}, {"cursor": "not-a-cursor"},
                   {"cursor": "YTA"}, {"rule": "no_such_rule"}, {"rule": "Bad Rule"}, {"device": "EV 1"}):
        response = get_alerts(client, keys.read, **params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"] == "invalid_input"
    for path in ("/v1/alerts/0", "/v1/alerts/abc", f"/v1/alerts/{2**63}"):
        assert client.get(path, headers=Keys.header(keys.read)).status_code in (404, 422), path


def test_one_alert_is_found_by_id_and_an_unknown_one_is_404(client: TestClient, keys: Keys,
                                                           conn: psycopg.Connection) -> None:
    alert_id = insert_alert(conn, "impossible_energy", "EV-0009", value=1.3)
    response = client.get(f"/v1/alerts/{alert_id}", headers=Keys.header(keys.read))
    assert response.status_code == 200
    assert response.json()["id"] == alert_id and response.json()["rule"] == "impossible_energy"
    missing = client.get(f"/v1/alerts/{alert_id + 1}", headers=Keys.header(keys.read))
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_acknowledging_records_the_key_and_the_first_time_only(client: TestClient, keys: Keys,
                                                               conn: psycopg.Connection) -> None:
    alert_id = insert_alert(conn)
    first = client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=Keys.header(keys.ingest))
    assert first.status_code == 200, first.text
    assert first.json()["acknowledgedBy"] == split_key(keys.ingest)[0]
    acknowledged_at, by = conn.execute("SELECT acknowledged_at, acknowledged_by FROM telemetry.alerts WHERE id = %s",
                                       (alert_id,)).fetchone()
    assert acknowledged_at is not None and by == split_key(keys.ingest)[0]

    again = client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=Keys.header(keys.admin))
    assert again.status_code == 200
    assert again.json()["acknowledgedAt"] == first.json()["acknowledgedAt"]
    assert again.json()["acknowledgedBy"] == split_key(keys.ingest)[0]
    assert conn.execute("SELECT acknowledged_at FROM telemetry.alerts WHERE id = %s",
                        (alert_id,)).fetchone()[0] == acknowledged_at
    # Acknowledging does not close the alert: the evaluation resolves it by itself.
    assert client.get(f"/v1/alerts/{alert_id}", headers=Keys.header(keys.read)).json()["state"] == "open"

    unknown = client.post(f"/v1/alerts/{alert_id + 1}/acknowledge", headers=Keys.header(keys.ingest))
    assert unknown.status_code == 404


def test_each_operation_needs_its_scope(client: TestClient, keys: Keys, conn: psycopg.Connection) -> None:
    alert_id = insert_alert(conn)
    acknowledge = f"/v1/alerts/{alert_id}/acknowledge"
    assert get_alerts(client, keys.read).status_code == 200
    assert client.get(f"/v1/alerts/{alert_id}", headers=Keys.header(keys.read)).status_code == 200
    assert get_alerts(client, keys.ingest).status_code == 403
    assert get_alerts(client, keys.admin).status_code == 403
    assert client.post(acknowledge, headers=Keys.header(keys.read)).status_code == 403
    assert conn.execute("SELECT acknowledged_at FROM telemetry.alerts").fetchone()[0] is None
    assert client.post(acknowledge, headers=Keys.header(keys.ingest)).status_code == 200
    assert client.post(acknowledge, headers=Keys.header(keys.admin)).status_code == 200
    assert client.post(acknowledge).status_code == 401
    for key in (keys.read, keys.ingest):
        assert client.get("/v1/webhooks", headers=Keys.header(key)).status_code == 403
        assert client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/"},
                           headers=Keys.header(key)).status_code == 403
        assert client.delete("/v1/webhooks/1", headers=Keys.header(key)).status_code == 403
        assert client.get("/v1/webhooks/1/deliveries", headers=Keys.header(key)).status_code == 403
    assert conn.execute("SELECT count(*) FROM telemetry.webhooks").fetchone()[0] == 0
    assert client.get("/v1/webhooks", headers=Keys.header(keys.admin)).status_code == 200
