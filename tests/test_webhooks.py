"""Webhooks: subscriptions (admin), and the delivery of the outbox to receivers on localhost — each
event once with a valid signature and its delivery id, retried after failures, given up after the
retry window, never lost to a restart of the platform, and a slow or failing target neither hidden
(delivery log, /metrics) nor slowing the others. Outbox rows are written with SQL here, as
telemetry.evaluate_alerts() writes them, so these tests do not depend on the rules."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.db.pool import create_pool
from api.ops.alerts import evaluate_once
from api.ops.webhooks import WebhookSender, backoff_s
from api.settings import Settings
from tests.fix_api import Keys, settings_for
from tests.fix_db import Database
from tests.fix_readings import post, vehicle


class Receiver:
    """A webhook target on 127.0.0.1: answers each request with the next of `statuses` (then 200), after
    `delay` seconds, and records every request with whether its signature verified."""

    def __init__(self, statuses: list[int] = (), delay: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.delay = delay
        self.secret = ""
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.release.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest()
                with lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append({
                        "body": body, "status": status, "delivery": self.headers["X-Telemetry-Delivery"],
                        "event": self.headers["X-Telemetry-Event"], "type": self.headers["Content-Type"],
                        "signed": hmac.compare_digest(self.headers.get("X-Telemetry-Signature", ""), expected)})
                receiver.release.wait(30)
                time.sleep(receiver.delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the sender gave up waiting
                    pass

            def log_message(self, *_: object) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[dict]:
        """The requests answered 2xx: what the receiver processed."""
        return [r for r in self.requests if r["status"] < 300]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(statuses: list[int] = (), delay: float = 0.0) -> Receiver:
        started.append(Receiver(statuses, delay))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


def add_webhook(conn: psycopg.Connection, receiver: Receiver, rules: list[str] | None = None) -> int:
    receiver.secret = f"secret-{uuid.uuid4()}"
    return conn.execute("INSERT INTO telemetry.webhooks (url, rules, secret) VALUES (%s, %s, %s) RETURNING id",
                        (receiver.url, rules, receiver.secret)).fetchone()[0]


def add_alert(conn: psycopg.Connection, device: str = "EV-0001", rule: str = "battery_overheat") -> int:
    return conn.execute(
        """INSERT INTO telemetry.alerts (rule, device_id, opened_at, last_seen_at, value)
           VALUES (%s, %s, now(), now(), 61.5) RETURNING id""", (rule, device)).fetchone()[0]


def add_delivery(conn: psycopg.Connection, webhook_id: int, alert_id: int, event: str = "alert.opened",
                 age: timedelta = timedelta(0)) -> str:
    """An outbox row as telemetry.evaluate_alerts() writes it (its payload contract), created `age` ago."""
    delivery_id = str(uuid.uuid4())
    conn.execute(
        """INSERT INTO telemetry.webhook_deliveries (id, webhook_id, alert_id, event, payload, created_at,
                                                     next_attempt_at)
           SELECT %(id)s::uuid, %(webhook)s, a.id, %(event)s,
                  jsonb_build_object('event', %(event)s::text, 'deliveryId', %(id)s::text, 'alert', jsonb_build_object(
                      'id', a.id, 'rule', a.rule, 'deviceId', a.device_id, 'state', a.state,
                      'openedAt', a.opened_at, 'lastSeenAt', a.last_seen_at, 'resolvedAt', a.resolved_at,
                      'value', a.value, 'acknowledgedAt', a.acknowledged_at)),
                  now() - %(age)s, now() - %(age)s
           FROM telemetry.alerts a WHERE a.id = %(alert)s""",
        {"id": delivery_id, "webhook": webhook_id, "alert": alert_id, "event": event, "age": age})
    return delivery_id


def delivery_row(conn: psycopg.Connection, delivery_id: str) -> dict:
    cur = conn.execute("""SELECT attempts, delivered_at, given_up_at, last_status, last_error, created_at,
                                 next_attempt_at, now() AS now, payload::text AS payload
                          FROM telemetry.webhook_deliveries WHERE id = %s""", (delivery_id,))
    return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def run_rounds(settings: Settings, rounds: int = 1, backoff: Callable[[int], float] = lambda _: 0.0) -> None:
    """`rounds` delivery rounds, each waiting for its sends; backoff 0: a failed delivery is due again at once."""
    async def main() -> None:
        pool = create_pool(settings)
        await pool.open(wait=True)
        try:
            async with WebhookSender(pool, settings, backoff=backoff) as sender:
                for _ in range(rounds):
                    await sender.deliver_due()
        finally:
            await pool.close()

    asyncio.run(main())


def wait_for(condition: Callable[[], object], timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def metric(text: str, name: str, **labels: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def test_a_webhook_is_created_with_a_secret_shown_once_and_validated(client: TestClient, keys: Keys,
                                                                     conn: psycopg.Connection) -> None:
    admin = Keys.header(keys.admin)
    created = client.post("/v1/webhooks", json={"url": "https://example.test/hook", "rules": ["device_silent"]},
                          headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "url", "rules", "secret", "createdAt"}
    assert body["rules"] == ["device_silent"] and len(body["secret"]) >= 40
    assert conn.execute("SELECT secret FROM telemetry.webhooks WHERE id = %s", (body["id"],)).fetchone()[0] == \
        body["secret"]
    every_rule = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}, headers=admin).json()
    assert every_rule["rules"] is None and every_rule["secret"] != body["secret"]

    listed = client.get("/v1/webhooks", headers=admin).json()["webhooks"]
    assert [w["id"] for w in listed] == [body["id"], every_rule["id"]]
    assert not any("secret" in w or body["secret"] in json.dumps(w) for w in listed)
    assert listed[0]["pending"] == listed[0]["failing"] == listed[0]["givenUp"] == 0

    for bad in ({"url": "ftp://example.test/"}, {"url": "http://"}, {"url": "example.test"},
                {"url": "http://a b/"}, {"url": "https://example.test", "rules": ["no_such_rule"]},
                {"url": "https://example.test", "rules": ["Bad"]}, {"url": "https://example.test", "extra": 1}, {}):
        response = client.post("/v1/webhooks", json=bad, headers=admin)
        assert response.status_code == 422, (bad, response.text)
    assert conn.execute("SELECT count(*) FROM telemetry.webhooks").fetchone()[0] == 2


def test_each_event_is_delivered_once_signed_with_its_delivery_id(client: TestClient, keys: Keys, receivers,
                                                                  conn: psycopg.Connection) -> None:
    """Through the API's own lifespan loop: subscribe over the API, write the outbox, wait."""
    receiver = receivers()
    created = client.post("/v1/webhooks", json={"url": receiver.url}, headers=Keys.header(keys.admin)).json()
    receiver.secret = created["secret"]
    alert_id = add_alert(conn)
    opened = add_delivery(conn, created["id"], alert_id, "alert.opened")
    resolved = add_delivery(conn, created["id"], alert_id, "alert.resolved")

    wait_for(lambda: len(receiver.requests) >= 2)
    time.sleep(1.5)  # a further round of the loop sends nothing again
    assert sorted(r["delivery"] for r in receiver.requests) == sorted([opened, resolved])
    for request in receiver.requests:
        assert request["signed"] and request["type"] == "application/json"
        row = delivery_row(conn, request["delivery"])
        assert request["body"] == row["payload"].encode()  # exactly the stored payload's text
        payload = json.loads(request["body"])
        assert payload["event"] == request["event"] and payload["deliveryId"] == request["delivery"]
        assert payload["alert"]["id"] == alert_id
        assert row["delivered_at"] is not None and row["attempts"] == 1 and row["last_status"] == 200
    log = client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=Keys.header(keys.admin)).json()
    assert [d["id"] for d in log["deliveries"]] == [resolved, opened]  # newest first
    assert all(d["deliveredAt"] and d["lastStatus"] == 200 for d in log["deliveries"])


def test_a_receiver_failing_twice_then_recovering_gets_every_event_once(database: Database, receivers,
                                                                        conn: psycopg.Connection) -> None:
    receiver = receivers(statuses=[500, 503])
    webhook = add_webhook(conn, receiver)
    alert_id = add_alert(conn)
    # Two alerts: one alert's events are sent in order (test_an_alerts_resolution_waits_for_its_pending_opening).
    events = [add_delivery(conn, webhook, alert_id, "alert.opened"),
              add_delivery(conn, webhook, add_alert(conn, "EV-0002"), "alert.opened")]
    settings = settings_for(database)

    run_rounds(settings, rounds=1)  # both fail: 500, then 503
    assert [r["status"] for r in receiver.requests] == [500, 503]
    for delivery in events:
        row = delivery_row(conn, delivery)
        assert row["attempts"] == 1 and row["delivered_at"] is None and row["given_up_at"] is None
        assert row["last_status"] in (500, 503) and row["last_error"].startswith("HTTP 5")
    run_rounds(settings, rounds=3)
    assert sorted(r["delivery"] for r in receiver.accepted()) == sorted(events)  # each once
    assert all(r["signed"] for r in receiver.requests)
    for delivery in events:
        row = delivery_row(conn, delivery)
        assert row["attempts"] == 2 and row["delivered_at"] is not None and row["last_error"] is None


def test_a_failed_delivery_backs_off_exponentially_with_jitter(database: Database, receivers,
                                                               conn: psycopg.Connection) -> None:
    receiver = receivers(statuses=[500] * 10)
    webhook = add_webhook(conn, receiver)
    delivery = add_delivery(conn, webhook, add_alert(conn))
    settings = settings_for(database)
    waits = []
    for attempt in range(1, 4):
        run_rounds(settings, backoff=backoff_s)
        row = delivery_row(conn, delivery)
        assert row["attempts"] == attempt
        waits.append((row["next_attempt_at"] - row["now"]).total_seconds())
        conn.execute("UPDATE telemetry.webhook_deliveries SET next_attempt_at = now() WHERE id = %s", (delivery,))
    # 2^n s after the n-th failure, the upper half of it random.
    for attempt, wait in enumerate(waits, start=1):
        assert 2**attempt / 2 - 0.5 <= wait <= 2**attempt + 0.5, waits


def test_a_delivery_is_given_up_once_the_retry_window_has_passed(database: Database, receivers,
                                                                 conn: psycopg.Connection) -> None:
    receiver = receivers(statuses=[500] * 10)
    webhook = add_webhook(conn, receiver)
    alert_id = add_alert(conn)
    old = add_delivery(conn, webhook, alert_id, age=timedelta(hours=25))
    recent = add_delivery(conn, webhook, add_alert(conn, "EV-0002"), age=timedelta(hours=23, minutes=59))

    run_rounds(settings_for(database), backoff=lambda _: 3600.0)
    old_row, recent_row = delivery_row(conn, old), delivery_row(conn, recent)
    assert old_row["given_up_at"] is not None and old_row["attempts"] == 1 and old_row["last_status"] == 500
    # Still inside its window: retried, at the latest when the window ends.
    assert recent_row["given_up_at"] is None
    assert recent_row["next_attempt_at"] <= recent_row["created_at"] + timedelta(hours=24)

    conn.execute("UPDATE telemetry.webhook_deliveries SET next_attempt_at = now()")
    run_rounds(settings_for(database, webhook_retry_for="1m"))
    assert [r["delivery"] for r in receiver.requests] == [old, recent, recent]  # a given-up one is not retried
    assert delivery_row(conn, recent)["given_up_at"] is not None


def test_a_failing_target_shows_in_its_delivery_log_and_in_metrics(client: TestClient, keys: Keys, receivers,
                                                                   conn: psycopg.Connection) -> None:
    receiver = receivers(statuses=[500] * 100)
    admin = Keys.header(keys.admin)
    webhook = client.post("/v1/webhooks", json={"url": receiver.url}, headers=admin).json()["id"]
    failed_before = metric(client.get("/metrics").text, "telemetry_webhook_deliveries_total",
                           webhook=str(webhook), outcome="failed")
    delivery = add_delivery(conn, webhook, add_alert(conn))

    log = wait_for(lambda: (page := client.get(f"/v1/webhooks/{webhook}/deliveries", headers=admin).json())
                   ["deliveries"][0]["attempts"] >= 1 and page)
    (entry,) = log["deliveries"]
    assert entry["id"] == delivery and entry["lastStatus"] == 500 and entry["lastError"].startswith("HTTP 500")
    assert entry["deliveredAt"] is None and entry["givenUpAt"] is None and log["next"] is None
    (health,) = client.get("/v1/webhooks", headers=admin).json()["webhooks"]
    assert (health["pending"], health["failing"], health["delivered"]) == (1, 1, 0)
    assert health["lastError"].startswith("HTTP 500")
    metrics = client.get("/metrics").text
    assert metric(metrics, "telemetry_webhook_deliveries_total", webhook=str(webhook),
                  outcome="failed") >= failed_before + 1
    assert client.get("/v1/webhooks/999/deliveries", headers=admin).status_code == 404


def test_the_delivery_log_pages_with_a_cursor(client: TestClient, keys: Keys, conn: psycopg.Connection) -> None:
    webhook = conn.execute("""INSERT INTO telemetry.webhooks (url, secret, deleted_at)
                              VALUES ('http://127.0.0.1:9/', 's', NULL) RETURNING id""").fetchone()[0]
    alert_id = add_alert(conn)
    # Not due for an hour: the API's loop leaves them alone.
    created = [add_delivery(conn, webhook, alert_id, age=timedelta(minutes=i)) for i in range(7)]
    conn.execute("UPDATE telemetry.webhook_deliveries SET next_attempt_at = now() + interval '1 hour'")
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/webhooks/{webhook}/deliveries", params=params, headers=Keys.header(keys.admin))
        assert page.status_code == 200, page.text
        seen += [d["id"] for d in page.json()["deliveries"]]
        if not (cursor := page.json()["next"]):
            break
    assert seen == created  # newest first: created i minutes ago
    bad = client.get(f"/v1/webhooks/{webhook}/deliveries", params={"cursor": "zz"}, headers=Keys.header(keys.admin))
    assert bad.status_code == 422


def test_a_deleted_webhook_is_no_longer_delivered_to(client: TestClient, keys: Keys, database: Database,
                                                     receivers, conn: psycopg.Connection) -> None:
    receiver = receivers()
    admin = Keys.header(keys.admin)
    webhook = client.post("/v1/webhooks", json={"url": receiver.url}, headers=admin).json()["id"]
    pending = add_delivery(conn, webhook, add_alert(conn, "EV-0002"), age=timedelta(minutes=1))
    conn.execute("UPDATE telemetry.webhook_deliveries SET next_attempt_at = now() + interval '1 hour'")
    assert client.delete(f"/v1/webhooks/{webhook}", headers=admin).status_code == 204
    # Its pending deliveries end with it: none stays due for ever.
    ended = delivery_row(conn, pending)
    assert ended["given_up_at"] is not None and ended["last_error"] == "webhook deleted"
    delivery = add_delivery(conn, webhook, add_alert(conn))

    run_rounds(settings_for(database))
    time.sleep(1.5)  # and a round of the API's own loop
    assert receiver.requests == []
    assert delivery_row(conn, delivery)["attempts"] == 0
    assert client.get("/v1/webhooks", headers=admin).json()["webhooks"] == []
    assert client.delete(f"/v1/webhooks/{webhook}", headers=admin).status_code == 404
    assert client.delete("/v1/webhooks/12345", headers=admin).status_code == 404
    assert conn.execute("SELECT deleted_at IS NOT NULL FROM telemetry.webhooks").fetchone()[0]  # kept, marked


def test_a_slow_target_does_not_hold_up_a_healthy_one(database: Database, receivers,
                                                      conn: psycopg.Connection) -> None:
    slow, healthy = receivers(delay=3.0), receivers()
    slow_hook, healthy_hook = add_webhook(conn, slow), add_webhook(conn, healthy)
    alert_ids = [add_alert(conn, f"EV-{i:04d}") for i in range(3)]
    slow_deliveries = [add_delivery(conn, slow_hook, alert_id) for alert_id in alert_ids]
    settings = settings_for(database, webhook_timeout_s=1.0)
    latencies = []

    async def main() -> None:
        pool = create_pool(settings)
        await pool.open(wait=True)
        async with WebhookSender(pool, settings) as sender:
            loop = asyncio.create_task(sender.run(interval_s=0.1))
            await asyncio.sleep(0.3)  # the slow target's batch (3 x 1 s timeouts) is under way
            for alert_id in alert_ids[:2]:
                start = time.monotonic()
                delivery = await asyncio.to_thread(add_delivery, conn, healthy_hook, alert_id)
                while not any(r["delivery"] == delivery for r in healthy.requests):
                    await asyncio.sleep(0.02)
                latencies.append(time.monotonic() - start)
                await asyncio.sleep(0.5)
            loop.cancel()
            await asyncio.gather(*sender.busy.values())  # the slow target's batch, to its end
        await pool.close()

    asyncio.run(main())
    assert all(latency < 0.75 for latency in latencies), latencies
    for delivery in slow_deliveries:
        row = delivery_row(conn, delivery)
        assert row["attempts"] == 1 and row["delivered_at"] is None and "timed out" in row["last_error"]


@pytest.mark.slow
def test_a_restart_of_the_platform_loses_no_event(live_server_factory, database: Database, receivers,
                                                  conn: psycopg.Connection) -> None:
    """SIGKILL while a delivery is in flight, a second event written while the platform is down: after
    the restart both arrive (the first again, under the same delivery id: at least once)."""
    receiver = receivers()
    receiver.release.clear()  # hold the first request until the server is dead
    webhook = add_webhook(conn, receiver)
    env = {"ALERT_INTERVAL_S": "0", "WEBHOOK_TIMEOUT_S": "30"}
    server = live_server_factory(**env)
    in_flight = add_delivery(conn, webhook, add_alert(conn, "EV-0001"))
    wait_for(lambda: receiver.requests)
    server.kill()
    row = delivery_row(conn, in_flight)
    assert row["delivered_at"] is None and row["next_attempt_at"] > row["now"]  # leased, not lost
    written_while_down = add_delivery(conn, webhook, add_alert(conn, "EV-0002"))
    receiver.release.set()
    # The lease outlives a dead process by design; end it as time would.
    conn.execute("UPDATE telemetry.webhook_deliveries SET next_attempt_at = now() WHERE id = %s", (in_flight,))

    live_server_factory(**env)
    wait_for(lambda: all(delivery_row(conn, d)["delivered_at"] for d in (in_flight, written_while_down)))
    delivered = [r["delivery"] for r in receiver.requests]
    assert sorted(set(delivered)) == sorted([in_flight, written_while_down])
    assert delivered.count(written_while_down) == 1 and delivered.count(in_flight) == 2
    assert all(r["signed"] for r in receiver.requests)


def test_an_alert_opened_by_the_evaluation_reaches_the_webhook(client: TestClient, keys: Keys, database: Database,
                                                               receivers, conn: psycopg.Connection) -> None:
    """End to end: a reading, the rules in SQL, the outbox, the API's loop, the receiver."""
    receiver = receivers()
    created = client.post("/v1/webhooks", json={"url": receiver.url, "rules": ["battery_overheat"]},
                          headers=Keys.header(keys.admin)).json()
    receiver.secret = created["secret"]
    hot = {**vehicle(0, minutes_ago=2, vehicle_id="EV-HOT"), "batteryTemp": 70.0}
    assert post(client, "/v1/telemetry/vehicles", [hot], keys.ingest).status_code == 200
    evaluation = evaluate_once(conn, settings_for(database))
    (opened,) = [change for change in evaluation.opened if change.rule == "battery_overheat"]

    wait_for(lambda: receiver.requests)
    (request,) = receiver.requests
    payload = json.loads(request["body"])
    assert request["signed"] and payload["event"] == "alert.opened" == request["event"]
    assert payload["alert"]["id"] == opened.alert_id and payload["alert"]["deviceId"] == "EV-HOT"
    assert payload["deliveryId"] == request["delivery"]
    alert = client.get(f"/v1/alerts/{opened.alert_id}", headers=Keys.header(keys.read)).json()
    assert {k: payload["alert"][k] for k in ("id", "rule", "deviceId", "state", "value")} == \
        {k: alert[k] for k in ("id", "rule", "deviceId", "state", "value")}


def test_an_alerts_resolution_waits_for_its_pending_opening(database: Database, receivers,
                                                           conn: psycopg.Connection) -> None:
    receiver = receivers()
    webhook = add_webhook(conn, receiver)
    alert = add_alert(conn)
    opened = add_delivery(conn, webhook, alert, "alert.opened", age=timedelta(minutes=2))
    # The opening failed once and waits for its retry; the resolution is due now.
    conn.execute("UPDATE telemetry.webhook_deliveries SET attempts = 1, next_attempt_at = now() + interval '1 hour' "
                 "WHERE id = %s", (opened,))
    resolved = add_delivery(conn, webhook, alert, "alert.resolved", age=timedelta(minutes=1))
    run_rounds(settings_for(database))
    assert receiver.requests == [] and delivery_row(conn, resolved)["attempts"] == 0

    conn.execute("UPDATE telemetry.webhook_deliveries SET next_attempt_at = now() WHERE id = %s", (opened,))
    run_rounds(settings_for(database), rounds=2)
    assert [(r["delivery"], r["event"], r["signed"]) for r in receiver.requests] == [
        (opened, "alert.opened", True), (resolved, "alert.resolved", True)]
