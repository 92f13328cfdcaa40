"""The load generator's MQTT sender (libmosquitto through ctypes) against a real NATS: a reading counts
accepted only at its PUBACK, a broker restart while publishing delays messages and loses none (the
unacknowledged ones are sent again after the reconnect), and a key the broker refuses ends the run with
the broker's reason."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time

import msgspec
import nats
import psutil
import pytest

from api.settings import Settings
from api.stream.broker import broker_hash, reload_broker
from api.stream.log import ensure_streams_now
from api.stream.process import NatsServer
from loadgen.mqtt import MqttPublisher, encode_messages

KEY = "etk_mqttsender_s3cretsecretsecret"


def allow_mqtt_key(nats_server: NatsServer, key: str) -> None:
    """The broker's users file as `python -m api broker-users` writes it, for one key, without a database."""
    service = (nats_server.dir / "service-password").read_text().strip()
    users = [{"user": "telemetry", "password": service},
             {"user": key.split("_", 2)[1], "password": broker_hash(key), "allowed_connection_types": ["MQTT"],
              "permissions": {"publish": {"allow": ["telemetry.meters.>"]}, "subscribe": {"deny": [">"]}}}]
    nats_server.users_file.write_text(f"authorization {json.dumps({'users': users})}\n")
    assert reload_broker(nats_server.pid_file)
    time.sleep(0.5)


def meter_readings(count: int) -> list[dict]:
    return [{"meterId": f"MTR-{n % 300:05d}", "timestamp": f"2026-11-20T{n // 300 // 60:02d}:{n // 300 % 60:02d}:00Z",
             "kwhConsumedAc": 0.05, "voltage": 230.0} for n in range(count)]


def logged_readings(nats_server: NatsServer) -> list[tuple[str, str]]:
    """(meterId, timestamp) of every message in the log, repeats included."""

    async def read() -> list[tuple[str, str]]:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            state = (await js.stream_info("TELEMETRY")).state
            found = []
            for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
                reading = msgspec.json.decode((await js.get_msg("TELEMETRY", seq)).data)
                found.append((reading["meterId"], reading["timestamp"]))
            return found
        finally:
            await nc.close()

    return asyncio.run(read())


def publish_all(publisher: MqttPublisher, readings: list[dict], pause_s: float = 0.0) -> None:
    """Every reading, one a message, then drain: as `python -m loadgen --transport mqtt` does."""

    async def publish() -> None:
        for chunk, rows in encode_messages(readings):
            await publisher.submit(chunk, rows)
            await asyncio.sleep(pause_s)
        await publisher.drain()

    asyncio.run(publish())


@pytest.fixture
def mqtt_broker(nats_server: NatsServer) -> NatsServer:
    ensure_streams_now(Settings.from_env({}, nats_url=nats_server.url))
    allow_mqtt_key(nats_server, KEY)
    return nats_server


def test_a_broker_restart_while_publishing_delays_readings_and_loses_none(mqtt_broker: NatsServer) -> None:
    readings = meter_readings(12_000)
    publisher = MqttPublisher(f"mqtt://127.0.0.1:{mqtt_broker.mqtt_port}", KEY, connections=2, give_up_s=60)
    restarted = threading.Event()
    stopped_conf: list[str] = []

    def restart_once_publishing() -> None:
        deadline = time.monotonic() + 60
        while publisher.stats.accepted < 2_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        mqtt_broker.stop()
        stopped_conf.append((mqtt_broker.dir / "nats.conf").read_text())
        time.sleep(1.5)
        mqtt_broker.start()
        restarted.set()

    restarter = threading.Thread(target=restart_once_publishing)
    restarter.start()
    publish_all(publisher, readings, pause_s=0.25)  # over about 6 s: the restart falls in the middle
    restarter.join()

    stats = publisher.stats
    assert restarted.is_set()
    assert 'include "service-only.conf"' in stopped_conf[0]  # the stop shut the devices out first
    assert stats.statuses.get("reconnects", 0) >= 1  # every connection lost its broker once ...
    assert stats.failed == 0 and stats.accepted == stats.sent == len(readings)  # ... and nothing was lost
    assert len(stats.latencies) == len(readings)  # one latency a message, taken at its PUBACK
    logged = logged_readings(mqtt_broker)
    assert set(logged) == {(r["meterId"], r["timestamp"]) for r in readings}  # repeats (DUP) allowed
    assert len(logged) >= len(readings)


def test_every_reading_is_accepted_at_its_puback(mqtt_broker: NatsServer) -> None:
    readings = meter_readings(5_000)
    publisher = MqttPublisher(f"mqtt://127.0.0.1:{mqtt_broker.mqtt_port}", KEY, connections=3)
    publish_all(publisher, readings)
    assert publisher.stats.accepted == publisher.stats.requests == len(readings)
    assert publisher.stats.failed == 0 and "reconnects" not in publisher.stats.statuses
    assert len(publisher.stats.latencies) == len(readings) and min(publisher.stats.latencies) > 0
    assert sorted(logged_readings(mqtt_broker)) == sorted((r["meterId"], r["timestamp"]) for r in readings)


def test_the_stop_first_closes_the_devices_connections_and_refuses_them(mqtt_broker: NatsServer) -> None:
    """NATS acknowledges a QoS 1 message once its own $MQTT_msgs copy is stored, and at shutdown stops
    its streams one by one while MQTT connections are open: a device still connected then could have a
    message acknowledged that the telemetry stream, stopped first, never stored. So the stop's first
    step closes the devices' connections and refuses them; the service user (API, writers) goes on."""
    device = subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_broker.mqtt_port), "-q", "1",
                               "-u", KEY.split("_")[1], "-P", KEY, "-t", "telemetry/meters/MTR-00001", "-l"],
                              stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    readings = meter_readings(3)
    try:
        device.stdin.write(json.dumps(readings[0]).encode() + b"\n")
        device.stdin.flush()
        deadline = time.monotonic() + 10
        while not logged_readings(mqtt_broker) and time.monotonic() < deadline:  # connected, published
            time.sleep(0.1)
        connections = lambda: {c.laddr.port for c in psutil.Process(device.pid).net_connections("tcp")  # noqa: E731
                               if c.status == psutil.CONN_ESTABLISHED and c.raddr.port == mqtt_broker.mqtt_port}
        (first,) = connections()
        assert len(logged_readings(mqtt_broker)) == 1

        mqtt_broker.close_mqtt()
        assert first not in connections()  # closed by the broker, before any stop (a reconnect is refused)
        again = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_broker.mqtt_port), "-q", "1",
                                "-u", KEY.split("_")[1], "-P", KEY, "-t", "telemetry/meters/MTR-00001",
                                "-m", json.dumps(readings[1])], capture_output=True, text=True, timeout=10)
        assert again.returncode != 0 and "not authorised" in again.stderr  # a connect is refused

        async def publish_as_service() -> None:  # the API's and the writers' user still works
            nc = await nats.connect(mqtt_broker.url)
            try:
                await nc.jetstream().publish("telemetry.meters.p256.1", json.dumps(readings[2]).encode())
            finally:
                await nc.close()

        asyncio.run(publish_as_service())
        assert sorted(logged_readings(mqtt_broker)) == [(r["meterId"], r["timestamp"])
                                                        for r in (readings[0], readings[2])]
    finally:
        device.kill()
        device.communicate()
    mqtt_broker.start()  # still running: the devices are let in again
    publisher = MqttPublisher(f"mqtt://127.0.0.1:{mqtt_broker.mqtt_port}", KEY, connections=1)
    publish_all(publisher, readings[1:2])
    assert publisher.stats.accepted == 1 and len(logged_readings(mqtt_broker)) == 3


def test_a_broker_that_shuts_the_devices_out_for_good_ends_the_run_with_the_rest_failed(
        mqtt_broker: NatsServer) -> None:
    readings = meter_readings(6_000)
    publisher = MqttPublisher(f"mqtt://127.0.0.1:{mqtt_broker.mqtt_port}", KEY, connections=2, give_up_s=2)

    def shut_out_once_publishing() -> None:
        deadline = time.monotonic() + 60
        while publisher.stats.accepted < 1_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        mqtt_broker.close_mqtt()

    closer = threading.Thread(target=shut_out_once_publishing)
    closer.start()
    started = time.monotonic()
    publish_all(publisher, readings, pause_s=0.25)  # over about 3 s: the broker shuts them out meanwhile
    closer.join()
    stats = publisher.stats
    assert time.monotonic() - started < 30  # no connection waits for ever on a full window
    assert 1_000 <= stats.accepted < len(readings) and stats.accepted + stats.failed == stats.sent == len(readings)
    logged = set(logged_readings(mqtt_broker))  # every acknowledged reading is in the log
    assert len(logged) >= stats.accepted


@pytest.mark.slow
def test_a_key_the_broker_refuses_ends_the_run_with_its_reason(mqtt_broker: NatsServer) -> None:
    """The sender retries a refused connect for 30 s (a new key reaches the broker asynchronously)."""
    publisher = MqttPublisher(f"mqtt://127.0.0.1:{mqtt_broker.mqtt_port}", KEY[:-3] + "xyz", connections=1)
    with pytest.raises(SystemExit, match="MQTT: the MQTT broker refused the connection: .*not authori[sz]ed"):
        publish_all(publisher, meter_readings(100))
    assert publisher.stats.failed == 100 and publisher.stats.accepted == 0
