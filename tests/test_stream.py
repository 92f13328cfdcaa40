"""The durable log: asynchronous HTTP and MQTT readings reach the database exactly once through the
writers, whatever fails on the way (a writer killed mid-batch, NATS restarted, a full log), and
invalid messages end in the dead-letter stream with their reason. Real NATS, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import nats
import psycopg
import pytest
from nats.aio.msg import Msg
from prometheus_client import CONTENT_TYPE_LATEST

from api.db.keys import create_key, split_key
from api.readings import Limits
from api.settings import Settings
from api.stream.broker import SET_BROKER_HASH_SQL, broker_hash, reload_broker, write_users_file
from api.stream.log import dead_letter_stream, ensure_streams_now, partition_of
from api.stream.process import NatsServer
from api.stream.writer import Topic, _topic, judge_all
from tests.fix_api import settings_for
from tests.fix_db import Database

ASYNC = {"Prefer": "respond-async"}
BASE = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(hours=6)


def meters(n: int, start: int = 0, devices: int = 10) -> list[dict]:
    """n meter readings, one a minute from each of `devices` meters; kWh = index / 100."""
    return [{"meterId": f"M-{i % devices}", "kwhConsumedAc": i / 100, "voltage": 230.0,
             "timestamp": (BASE + timedelta(minutes=i // devices)).isoformat()} for i in range(start, start + n)]


def vehicles(n: int, start: int = 0) -> list[dict]:
    return [{"vehicleId": f"EV-{i % 10}", "soc": 50.0, "kwhDeliveredDc": i / 200, "batteryTemp": 25.0,
             "timestamp": (BASE + timedelta(minutes=i // 10)).isoformat()} for i in range(start, start + n)]


def stored(database: Database) -> tuple[int, int, float]:
    """(meter rows, vehicle rows, meter kWh in the hourly aggregate)."""
    with database.connect() as conn:
        m = conn.execute("SELECT count(*) FROM telemetry.meter_readings").fetchone()[0]
        v = conn.execute("SELECT count(*) FROM telemetry.vehicle_readings").fetchone()[0]
        kwh = conn.execute("SELECT coalesce(sum(kwh_consumed_ac), 0) FROM telemetry.meter_energy_hourly").fetchone()[0]
    return m, v, float(kwh)


def wait_until(predicate, timeout: float = 60, what: str = "condition") -> None:
    """Polls until the predicate holds; a database still starting up counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except psycopg.OperationalError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def post(server, key: str, path: str, body, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/telemetry/{path}", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})})


def log_settings(database: Database, nats_server: NatsServer, **overrides: object) -> Settings:
    return settings_for(database, nats_url=nats_server.url, **overrides)


def log_state(settings: Settings) -> dict[str, int]:
    """Messages held by the log and its dead-letter stream, and what the writers have not acknowledged."""

    async def read() -> dict[str, int]:
        nc = await nats.connect(settings.nats_url)
        try:
            js = nc.jetstream()
            main = await js.stream_info(settings.stream_name)
            dead = await js.stream_info(dead_letter_stream(settings))
            return {"messages": main.state.messages, "dead_letters": dead.state.messages}
        finally:
            await nc.close()

    return asyncio.run(read())


def dead_letters(settings: Settings) -> list[tuple[str, dict, bytes]]:
    """(subject, headers, payload) of every dead letter."""

    async def read() -> list[tuple[str, dict, bytes]]:
        nc = await nats.connect(settings.nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(dead_letter_stream(settings))
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(dead_letter_stream(settings), seq)
                out.append((msg.subject, dict(msg.headers or {}), msg.data))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def mqtt_key(database: Database, nats_server: NatsServer, scopes: tuple[str, ...] = ("ingest",)) -> tuple[str, str]:
    """A new key as an MQTT device uses it (user name = key id, password = key), known to the broker."""
    key_id, key = create_key(database.url, list(scopes))
    settings = settings_for(database, nats_url=nats_server.url)
    with psycopg.connect(database.url, autocommit=True) as conn:
        if "ingest" in scopes:
            conn.execute(SET_BROKER_HASH_SQL, (broker_hash(key), key_id))
        write_users_file(settings, conn, nats_server.users_file)
    assert reload_broker(nats_server.pid_file)
    time.sleep(0.3)  # the reload is asynchronous
    return key_id, key


def mqtt_publish(nats_server: NatsServer, user: str, password: str, topic: str, payload: str,
                 client_id: str = "device") -> subprocess.CompletedProcess:
    """mosquitto_pub with QoS 1: exit status 0 once the broker has acknowledged (PUBACK)."""
    return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(nats_server.mqtt_port), "-q", "1",
                           "-V", "mqttv311", "-i", client_id, "-u", user, "-P", password, "-t", topic, "-m", payload],
                          capture_output=True, text=True, timeout=30)


def post_backlog(api, key: str, requests: int, per_request: int) -> int:
    """Async meter readings from 100 meters, `per_request` a request, all accepted; returns how many."""
    for request in range(requests):
        body = meters(per_request, start=request * per_request, devices=100)
        assert post(api, key, "meters", body, ASYNC).status_code == 202
    return requests * per_request


def distinct_meter_readings(database: Database) -> int:
    with database.connect() as conn:
        return conn.execute("SELECT count(DISTINCT (meter_id, time)) FROM telemetry.meter_readings").fetchone()[0]


@pytest.fixture
def stream_api(live_server_factory, nats_server: NatsServer, database: Database):
    """The API with the log, and the log's streams created as `python -m api migrate` creates them."""
    ensure_streams_now(log_settings(database, nats_server))
    return live_server_factory(NATS_URL=nats_server.url)


def test_async_http_readings_are_stored_once_by_the_writer(database, nats_server, stream_api, writer_factory,
                                                           keys) -> None:
    settings = log_settings(database, nats_server)
    first = post(stream_api, keys.ingest, "meters", meters(200), ASYNC)
    assert first.status_code == 202, first.text
    assert first.json() == {"accepted": 200}
    assert first.headers["preference-applied"] == "respond-async"
    mixed = post(stream_api, keys.ingest, "", meters(50, start=1000) + vehicles(70), ASYNC)
    assert mixed.status_code == 202 and mixed.json() == {"accepted": 120}
    # Accepted by the log, not yet in the database: no writer runs.
    assert stored(database)[:2] == (0, 0)
    assert log_state(settings)["messages"] == 3  # meters, then meters and vehicles of the mixed request

    # Invalid input: the same 422 as the synchronous path, nothing published.
    bad = post(stream_api, keys.ingest, "meters", [*meters(3), {"meterId": "M-1", "kwhConsumedAc": -1,
                                                               "voltage": 1, "timestamp": BASE.isoformat()}], ASYNC)
    assert bad.status_code == 422 and bad.json()["errors"][0]["index"] == 3
    assert log_state(settings)["messages"] == 3

    writer = writer_factory()
    wait_until(lambda: stored(database)[:2] == (250, 70), what="the writer to store the accepted readings")
    expected_kwh = sum(r["kwhConsumedAc"] for r in meters(200) + meters(50, start=1000))
    assert stored(database)[2] == pytest.approx(expected_kwh, rel=1e-12)

    # The same request again: the log recognises its messages (Nats-Msg-Id) and stores them once.
    assert post(stream_api, keys.ingest, "meters", meters(200), ASYNC).json() == {"accepted": 200}
    # An overlapping request: its known readings are counted as duplicates by the writer, never stored twice.
    assert post(stream_api, keys.ingest, "meters", meters(210), ASYNC).json() == {"accepted": 210}
    wait_until(lambda: stored(database)[0] == 260, what="the new readings")
    wait_until(lambda: writer.metrics().get('telemetry_readings_total{outcome="duplicate",stream="meters"}') == 200,
               what="the duplicates to be counted")
    time.sleep(0.5)
    assert stored(database)[:2] == (260, 70)
    samples = writer.metrics()
    assert samples['telemetry_readings_total{outcome="inserted",stream="meters"}'] == 260
    assert samples["telemetry_stream_lag_seconds_count"] == 4  # one per message, the repeat not among them
    assert log_state(settings)["messages"] == 0  # a work queue: committed messages leave the log
    assert httpx.get(f"{writer.url}/metrics").headers["content-type"] == CONTENT_TYPE_LATEST  # one charset

    # Without the header: the synchronous answer, unchanged.
    sync = post(stream_api, keys.ingest, "meters", meters(5, start=3000))
    assert sync.status_code == 200 and sync.json() == {"inserted": 5, "duplicates": 0}


def test_mqtt_readings_are_stored_once_and_bad_keys_are_refused(database, nats_server, stream_api,
                                                                writer_factory) -> None:
    user, key = mqtt_key(database, nats_server)
    writer = writer_factory()
    one = meters(1, start=3)[0]
    assert mqtt_publish(nats_server, user, key, f"telemetry/meters/{one['meterId']}",
                        json.dumps(one)).returncode == 0
    array = vehicles(10)
    ev0 = [r for r in array if r["vehicleId"] == "EV-0"]
    assert mqtt_publish(nats_server, user, key, "telemetry/vehicles/EV-0", json.dumps(ev0 + ev0),
                        client_id="ev0").returncode == 0
    # The device repeats its message (as after a lost PUBACK): stored once, counted as duplicates.
    assert mqtt_publish(nats_server, user, key, "telemetry/vehicles/EV-0", json.dumps(ev0),
                        client_id="ev0").returncode == 0
    wait_until(lambda: stored(database)[:2] == (1, len(ev0)), what="the MQTT readings")
    wait_until(lambda: writer.metrics().get('telemetry_readings_total{outcome="duplicate",stream="vehicles"}')
               == 2 * len(ev0), what="the duplicates to be counted")
    assert stored(database)[:2] == (1, len(ev0))

    # Refused at connect: a wrong key, a key without the ingest scope, a revoked key.
    refused = mqtt_publish(nats_server, user, key[:-3] + "xyz", "telemetry/meters/M-1", "{}", client_id="x1")
    assert refused.returncode != 0 and "not authori" in (refused.stdout + refused.stderr).lower()
    reader, read_key = mqtt_key(database, nats_server, scopes=("read",))
    assert mqtt_publish(nats_server, reader, read_key, "telemetry/meters/M-1", "{}", client_id="x2").returncode != 0
    with psycopg.connect(database.url) as conn:
        conn.execute("UPDATE telemetry.api_keys SET revoked_at = now() WHERE key_id = %s", (user,))
    mqtt_key(database, nats_server)  # rewrites the users file, as `broker-users --watch` does on the change
    assert mqtt_publish(nats_server, user, key, "telemetry/meters/M-1", "{}", client_id="x3").returncode != 0
    assert stored(database)[:2] == (1, len(ev0))


def test_invalid_mqtt_messages_go_to_the_dead_letter_stream_with_their_reason(database, nats_server, stream_api,
                                                                             writer_factory) -> None:
    settings = log_settings(database, nats_server)
    user, key = mqtt_key(database, nats_server)
    writer = writer_factory()
    good = meters(1)[0]
    bad = {**good, "voltage": 5000}
    cases = {
        "telemetry/meters/M-0": ("{not json", "malformed JSON"),
        "telemetry/meters/M-1": (json.dumps(bad), "voltage"),
        # EV-0's reading on EV-9's topic: partitions 23 and 236 of 256.
        "telemetry/vehicles/EV-9": (json.dumps(vehicles(1)[0]), "reading 0 is of 'EV-0', published to the topic of "
                                                                 "another device (its message is on partition 236"),
        "telemetry/meters/M-2": ("[]", "empty batch"),
    }
    for n, (topic, (payload, _)) in enumerate(cases.items()):
        assert mqtt_publish(nats_server, user, key, topic, payload, client_id=f"d{n}").returncode == 0
    wait_until(lambda: log_state(settings)["dead_letters"] == len(cases), what="the dead letters")
    letters = {payload: (headers["Telemetry-Subject"], headers["Telemetry-Error"])
               for _, headers, payload in dead_letters(settings)}
    for topic, (payload, reason) in cases.items():
        subject, error = letters[payload.encode()]
        # The broker stored the message on its device's partition (the mapping of scripts/local-nats.sh).
        _, stream, device = topic.split("/")
        assert subject == f"telemetry.{stream}.p256.{partition_of(device)}"
        assert reason in error
    assert stored(database)[:2] == (0, 0)
    assert sum(v for k, v in writer.metrics().items() if k.startswith("telemetry_stream_dead_letters_total")) == 4
    wait_until(lambda: log_state(settings)["messages"] == 0, what="the invalid messages to be acknowledged")


def test_partition_subjects_are_the_mappings_own_and_the_hash_is_nats_s() -> None:
    """Only the mapping's own subjects (p256.<0-255>) are read as partitions; any other subject a device
    may publish to by hand names a device, and nothing in one makes the writer raise. The hash is
    FNV-1a 32 (its published test vectors), over the id as NATS 2.10+ writes it ('.' as '//')."""
    assert _topic("telemetry.meters.p256.0") == Topic("meters", partition=0)
    assert _topic("telemetry.vehicles.p256.255") == Topic("vehicles", partition=255)
    for device in ("p256.256", "p256.00", "p1.0", "p256.\u00b2", "p\u00b2.0", "p256.1.2", "p256." + "9" * 5000):
        assert _topic(f"telemetry.meters.{device}") == Topic("meters", device=device)
    assert _topic("telemetry.meters.MTR//7") == Topic("meters", device="MTR.7")
    assert _topic("telemetry.meters") == Topic("meters")
    assert partition_of("a", 2**32) == 0xE40C292C and partition_of("foobar", 2**32) == 0xBF9CF968
    assert partition_of("MTR.7") == partition_of("MTR//7") == 0xD5340F4D % 256  # FNV-1a 32 of "MTR//7"


def test_a_message_the_writer_fails_to_judge_is_a_dead_letter_not_a_stopped_writer(monkeypatch) -> None:
    """A bug met while judging one message (here: validation raising on one body) makes that message a dead
    letter with the error; the other messages of the batch keep their verdicts."""
    import api.stream.writer as writer

    real = writer.validate_batch

    def failing_on_m1(rows, limits):
        if any(getattr(r, "meter_id", None) == "M-1" for r in getattr(rows, "meters", rows)):
            raise RuntimeError("a bug")
        return real(rows, limits)

    monkeypatch.setattr(writer, "validate_batch", failing_on_m1)
    limits = Limits(10_000, timedelta(minutes=5), timedelta(days=3650))
    msgs = [Msg(None, subject=f"telemetry.meters.{r['meterId']}", data=json.dumps(r).encode()) for r in meters(3)]
    verdicts = writer.judge_all_safely(msgs, limits)
    assert [len(v.rows) for v in verdicts] == [1, 0, 1]
    assert verdicts[1].stream == "meters"
    assert verdicts[1].error == "the writer could not judge this message: RuntimeError: a bug"


def test_the_writer_checks_each_reading_against_its_topic_mapped_or_not() -> None:
    """On a partition subject (the broker's mapping) a reading must be of a device of that partition; on a
    device subject (a broker without the mapping) of that very device; on a stream's own subject (the
    API's batches) of any device. One reading alone, or in an array."""
    limits = Limits(10_000, timedelta(minutes=5), timedelta(days=3650))
    m0, m1 = json.dumps(meters(1)[0]), json.dumps(meters(2)[1])  # M-0 (partition 141) and M-1 (250)

    def verdicts(subject: str) -> list[tuple[int, str | None]]:
        msgs = [Msg(None, subject=subject, data=body.encode()) for body in (m0, m1, f"[{m0}, {m1}]")]
        return [(len(v.rows), v.error) for v in judge_all(msgs, limits)]

    on_m0 = verdicts(f"telemetry.meters.p256.{partition_of('M-0')}")
    assert on_m0[0] == (1, None)
    assert on_m0[1][0] == 0 and "reading 0 is of 'M-1', published to the topic of another device" in on_m0[1][1]
    assert on_m0[2][0] == 0 and "reading 1 is of 'M-1'" in on_m0[2][1]
    on_device = verdicts("telemetry.meters.M-1")
    assert on_device[0] == (0, "reading 0 is of 'M-0', published to the topic of 'M-1'")
    assert on_device[1] == (1, None)
    assert verdicts("telemetry.meters") == [(1, None), (1, None), (2, None)]
    # A vehicle reading is no meter reading, whatever the subject.
    assert judge_all([Msg(None, subject="telemetry.meters", data=json.dumps(vehicles(1)[0]).encode())],
                     limits)[0].error


@pytest.mark.parametrize("end, ack_wait_s", [("kill", "3"), ("stop", "120")])
def test_a_writer_ended_mid_backlog_loses_and_doubles_nothing(database, nats_server, stream_api, writer_factory,
                                                              keys, end, ack_wait_s) -> None:
    """SIGKILLed between commits and acks, a writer leaves messages delivered and unacknowledged: the
    next writer gets them after the ack wait (3 s) and counts what was committed as duplicates. Stopped
    (SIGTERM), a writer finishes the batch in hand, committed and acknowledged: the next writer stores
    all the rest at once, long before the ack wait (120 s) would redeliver anything."""
    total = post_backlog(stream_api, keys.ingest, 40, 500)
    # Small batches (one message of 500 readings each), so that the end lands between commits and acks.
    first = writer_factory(WRITER_BATCH="1", WRITER_FLUSH_MS="1", WRITER_ACK_WAIT_S=ack_wait_s)
    wait_until(lambda: stored(database)[0] >= 3000, what="the first batches")
    getattr(first, end)()
    part = stored(database)[0]
    assert 0 < part < total
    writer_factory(WRITER_BATCH="7", WRITER_ACK_WAIT_S=ack_wait_s)
    wait_until(lambda: stored(database)[0] == total, timeout=120 if end == "kill" else 60, what="every reading")
    if end == "kill":
        time.sleep(4)  # past the ack wait: a redelivery would show now
    rows, _, kwh = stored(database)
    assert rows == total
    assert kwh == pytest.approx(sum(r["kwhConsumedAc"] for r in meters(total, devices=100)), rel=1e-12)
    assert distinct_meter_readings(database) == total


def test_a_full_log_answers_503_and_loses_nothing_it_accepted(database, nats_server, live_server_factory,
                                                              writer_factory, keys) -> None:
    small = {"STREAM_MAX_BYTES": str(256 * 1024)}
    ensure_streams_now(log_settings(database, nats_server, stream_max_bytes=256 * 1024))
    api = live_server_factory(NATS_URL=nats_server.url, **small)
    accepted, answers = 0, []
    for request in range(60):
        answer = post(api, keys.ingest, "meters", meters(200, start=request * 200, devices=100), ASYNC)
        answers.append(answer.status_code)
        if answer.status_code == 202:
            accepted += answer.json()["accepted"]
        else:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "1"
            assert "full" in answer.json()["message"]
            break
    assert 503 in answers and accepted > 0
    writer_factory(**small)
    wait_until(lambda: stored(database)[0] == accepted, what="every accepted reading")
    time.sleep(1)
    assert stored(database)[0] == accepted
    # Drained, the log takes readings again.
    assert post(api, keys.ingest, "meters", meters(200, start=15_000, devices=100), ASYNC).status_code == 202


def test_nats_restarted_while_publishing_loses_no_acknowledged_reading(database, nats_server, stream_api,
                                                                       writer_factory, keys) -> None:
    writer_factory()
    user, key = mqtt_key(database, nats_server)
    acknowledged: list[int] = []
    statuses: list[int | str] = []
    mqtt_acknowledged: list[dict] = []
    mqtt_refused = 0
    stop = threading.Event()

    def publish_mqtt() -> None:
        nonlocal mqtt_refused
        n = 0
        while not stop.is_set():
            reading = vehicles(1, start=n)[0] | {"vehicleId": f"EV-{n}"}
            if mqtt_publish(nats_server, user, key, f"telemetry/vehicles/EV-{n}", json.dumps(reading),
                            client_id=f"ev{n}").returncode == 0:
                mqtt_acknowledged.append(reading)
            else:
                mqtt_refused += 1
            n += 1

    def publish() -> None:
        request = 0
        while not stop.is_set():
            try:
                answer = post(stream_api, keys.ingest, "meters", meters(100, start=request * 100, devices=500), ASYNC)
                statuses.append(answer.status_code)
                if answer.status_code == 202:
                    acknowledged.append(request)
            except httpx.TransportError as exc:
                statuses.append(type(exc).__name__)
            request += 1
            time.sleep(0.02)

    publishers = [threading.Thread(target=publish), threading.Thread(target=publish_mqtt)]
    for publisher in publishers:
        publisher.start()
    wait_until(lambda: len(acknowledged) >= 20 and len(mqtt_acknowledged) >= 5, what="publishing")
    nats_server.stop()
    time.sleep(1.5)
    nats_server.start()
    wait_until(lambda: statuses[-5:] == [202] * 5, what="publishing to resume")
    published_after = len(mqtt_acknowledged)
    wait_until(lambda: len(mqtt_acknowledged) >= published_after + 3, what="MQTT publishing to resume")
    stop.set()
    for publisher in publishers:
        publisher.join()
    assert 503 in statuses  # the outage was real; no 5xx other than 503
    assert set(statuses) <= {202, 503}
    assert mqtt_refused > 0  # MQTT devices met it too
    expected = {(r["meterId"], datetime.fromisoformat(r["timestamp"]))
                for request in acknowledged for r in meters(100, start=request * 100, devices=500)}
    expected_mqtt = {(r["vehicleId"], datetime.fromisoformat(r["timestamp"])) for r in mqtt_acknowledged}

    def present(table: str, column: str) -> set:
        with database.connect() as conn:
            return set(conn.execute(f"SELECT {column}, time FROM telemetry.{table}").fetchall())

    wait_until(lambda: expected <= present("meter_readings", "meter_id"), timeout=90,
               what="every acknowledged HTTP reading")
    wait_until(lambda: expected_mqtt <= present("vehicle_readings", "vehicle_id"), timeout=90,
               what="every acknowledged MQTT reading")


def test_while_postgresql_is_down_async_requests_are_accepted_and_stored_after(database, pg_server, nats_server,
                                                                               live_server_factory, writer_factory,
                                                                               keys) -> None:
    ensure_streams_now(log_settings(database, nats_server))
    api = live_server_factory(NATS_URL=nats_server.url, DB_POOL_TIMEOUT="1")
    writer = writer_factory(DB_POOL_TIMEOUT="1")
    assert post(api, keys.ingest, "meters", meters(100, devices=50), ASYNC).status_code == 202  # key verified
    wait_until(lambda: stored(database)[0] == 100, what="the first readings")
    pg_server.stop()
    try:
        answers = [post(api, keys.ingest, "meters", meters(100, start=100 * (n + 1), devices=50), ASYNC)
                   for n in range(5)]
        sync = post(api, keys.ingest, "meters", meters(1, start=9000, devices=50))
        time.sleep(2)  # the writer meets the outage: it acknowledges nothing and backs off
        assert httpx.get(f"{writer.url}/health/ready", timeout=5).json()["database"] == "unavailable"
    finally:
        pg_server.start()
    assert [a.status_code for a in answers] == [202] * 5
    assert sync.status_code == 503 and sync.headers["retry-after"] == "1"
    wait_until(lambda: stored(database)[0] == 600, timeout=90, what="the backlog to be written")
    assert writer.metrics()["telemetry_writer_database_failures_total"] >= 1
