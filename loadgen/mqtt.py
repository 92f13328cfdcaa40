"""Publishes readings over MQTT 3.1.1 with QoS 1, as devices do: each reading (or, in a backfill, an
array of one device's readings) to its device's topic, over several connections, each in a process of
its own (one paho client tops out at a few thousand messages a second on one core). A reading counts
as accepted when the broker's PUBACK for its message arrived; paho keeps every unacknowledged message
and sends it again (DUP) after a reconnect, so a lost connection delays messages and loses none. What
is still unacknowledged when the run gives up is counted failed."""

from __future__ import annotations

import array
import asyncio
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec

from loadgen.sender import Stats

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:51883"
# Messages a connection may have published and not yet seen acknowledged: bounds memory and the resend
# after a reconnect (paho's own limit is left off: its bookkeeping for it is linear in the window).
WINDOW = 2000
# Messages per chunk handed to a connection's process: amortizes the inter-process queue.
CHUNK_MESSAGES = 500
# Shared counters per connection: readings published, readings acknowledged, readings failed, reconnects.
_PUBLISHED, _ACKED, _FAILED, _RECONNECTS = range(4)
_FIELDS = 4
# NATS (2.9) refuses '.' and ' ' in an MQTT topic; '+', '#' and '/' would change the topic's meaning.
_NOT_IN_TOPIC = set("./ +#")


def topic_for(reading: dict) -> str:
    """The device's own topic, or its stream's topic (the id then travels only in the payload) when the
    id cannot be part of a topic."""
    stream, device = ("meters", reading["meterId"]) if "meterId" in reading else ("vehicles", reading["vehicleId"])
    if not device or _NOT_IN_TOPIC.intersection(device):
        return f"telemetry/{stream}"
    return f"telemetry/{stream}/{device}"


Message = tuple[str, bytes, int]
"""(topic, payload, readings in it)"""


def encode_messages(readings: Iterable[dict], per_message: int = 1) -> list[tuple[list[Message], int]]:
    """Readings as MQTT messages in chunks of (messages, readings): one reading a message, or up to
    `per_message` readings of one device in an array (a backfill)."""
    messages: list[Message] = []
    if per_message <= 1:
        messages = [(topic_for(r), msgspec.json.encode(r), 1) for r in readings]
    else:
        by_topic: dict[str, list[dict]] = {}
        for r in readings:
            by_topic.setdefault(topic_for(r), []).append(r)
        for topic, rows in by_topic.items():
            if topic.count("/") == 1:  # no device topic: one reading a message, the id in the payload
                messages += [(topic, msgspec.json.encode(r), 1) for r in rows]
                continue
            for i in range(0, len(rows), per_message):
                part = rows[i:i + per_message]
                messages.append((topic, msgspec.json.encode(part), len(part)))
    return [(chunk, sum(m[2] for m in chunk))
            for chunk in (messages[i:i + CHUNK_MESSAGES] for i in range(0, len(messages), CHUNK_MESSAGES))]


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    username: str
    password: str
    tls: bool = False


def broker_from(url: str, api_key: str) -> Broker:
    """The broker of an mqtt:// (or mqtts://) URL; the key's id is the user name, the key the password."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise ValueError(f"not an MQTT URL: {url!r} (mqtt://host:port)")
    tls = parts.scheme in ("mqtts", "ssl")
    pieces = api_key.split("_", 2)
    if len(pieces) != 3 or not pieces[1]:
        raise ValueError("the API key is malformed: etk_<id>_<secret>")
    return Broker(parts.hostname, parts.port or (8883 if tls else 1883), pieces[1], api_key, tls)


def _connection(index: int, broker: Broker, client_id: str, inbox: multiprocessing.Queue,
                results: multiprocessing.Queue, counters, give_up_s: float) -> None:
    """One MQTT connection's process: publishes the chunks from `inbox` until None, waits for the last
    PUBACKs (at most give_up_s without any progress), then reports its latencies and errors."""
    import paho.mqtt.client as mqtt

    base = index * _FIELDS
    pending: dict[int, tuple[float, int]] = {}  # mid -> (published at, readings)
    early: set[int] = set()  # mids acknowledged before publish() returned them
    # Guards pending and early, never held while calling paho (paho calls on_publish under its own lock).
    lock = threading.Lock()
    room = threading.Semaphore(WINDOW)
    latencies = array.array("d")
    progress = [time.monotonic()]
    refused: list[str] = []
    connected = threading.Event()
    closing = threading.Event()

    def on_connect(client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        else:
            refused.clear()
            connected.set()

    def on_disconnect(client, userdata, flags, reason, properties) -> None:
        if connected.is_set() and not closing.is_set():
            counters[base + _RECONNECTS] += 1
        connected.clear()

    def acknowledged(sent: tuple[float, int]) -> None:
        now = time.monotonic()
        latencies.append(now - sent[0])
        progress[0] = now
        counters[base + _ACKED] += sent[1]
        room.release()

    def on_publish(client, userdata, mid, reason, properties) -> None:
        # paho may call this before publish() has returned the mid to the publishing thread.
        with lock:
            sent = pending.pop(mid, None)
            if sent is None:
                early.add(mid)
                return
        acknowledged(sent)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set()
    client.max_inflight_messages_set(0)
    client.reconnect_delay_set(0.2, 2)
    client.on_connect, client.on_disconnect, client.on_publish = on_connect, on_disconnect, on_publish

    def give_up(reason: str) -> None:
        """Never connected: every reading handed to this connection fails, and the run says why."""
        while (chunk := inbox.get()) is not None:
            counters[base + _FAILED] += sum(rows for _, _, rows in chunk)
        results.put({"index": index, "fatal": reason})

    deadline = time.monotonic() + 30
    while True:
        try:
            client.connect(broker.host, broker.port, keepalive=20)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                return give_up(f"cannot reach the MQTT broker {broker.host}:{broker.port}: {exc}")
            time.sleep(0.5)
    client.loop_start()
    # A refused connect (a key the broker does not know yet, or a bad one) is retried for a while: the
    # broker's users are reloaded from the keys asynchronously.
    while not connected.wait(0.1):
        if time.monotonic() > deadline:
            client.loop_stop()
            return give_up("the MQTT broker refused the connection: " + (refused[-1] if refused else "no answer"))

    while (chunk := inbox.get()) is not None:
        for topic, payload, rows in chunk:
            room.acquire()
            published_at = time.monotonic()
            try:
                info = client.publish(topic, payload, qos=1)
            except ValueError:  # a topic or payload MQTT cannot carry
                info = None
            counters[base + _PUBLISHED] += rows
            if info is None or info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                # NO_CONN is fine: paho keeps the message and sends it after the reconnect.
                counters[base + _FAILED] += rows
                room.release()
                continue
            with lock:
                if info.mid in early:
                    early.discard(info.mid)
                else:
                    pending[info.mid] = (published_at, rows)
                    continue
            acknowledged((published_at, rows))

    progress[0] = time.monotonic()
    while True:
        with lock:
            left = sum(rows for _, rows in pending.values())
        if not left or time.monotonic() - progress[0] > give_up_s:
            break
        time.sleep(0.05)
    counters[base + _FAILED] += left
    closing.set()
    client.disconnect()
    client.loop_stop()
    results.put({"index": index, "latencies": latencies.tobytes(), "unacknowledged": left})


class MqttPublisher:
    """The MQTT counterpart of loadgen.sender.Sender: submit() chunks of messages, drain(), close();
    the statistics in the same Stats (accepted = acknowledged by the broker)."""

    def __init__(self, url: str, api_key: str, connections: int, give_up_s: float = 300.0) -> None:
        self.broker = broker_from(url, api_key)
        self.stats = Stats()
        context = multiprocessing.get_context("spawn")
        self.counters = context.Array("q", connections * _FIELDS, lock=False)
        self.inboxes = [context.Queue(maxsize=8) for _ in range(connections)]
        self.results = context.Queue()
        run = f"loadgen-{os.getpid()}-{time.time_ns() % 10**9}"
        self.processes = [context.Process(target=_connection, daemon=True, name=f"mqtt-{k}", args=(
            k, self.broker, f"{run}-{k}", self.inboxes[k], self.results, self.counters, give_up_s))
            for k in range(connections)]
        for p in self.processes:
            p.start()
        self._next = 0
        self._closed = False

    def _sum(self, field: int) -> int:
        return sum(self.counters[field::_FIELDS])

    def refresh(self) -> None:
        """Copy the connections' live counters into the statistics."""
        self.stats.accepted = self._sum(_ACKED)
        self.stats.failed = self._sum(_FAILED)
        self.stats.statuses["reconnects"] = self._sum(_RECONNECTS)
        if not self.stats.statuses["reconnects"]:
            del self.stats.statuses["reconnects"]

    async def submit(self, chunk: list[Message], rows: int) -> None:
        """Hands a chunk to the next connection; waits while that connection is 8 chunks behind."""
        inbox = self.inboxes[self._next]
        self._next = (self._next + 1) % len(self.inboxes)
        self.stats.sent += rows
        self.stats.requests += len(chunk)
        try:
            inbox.put_nowait(chunk)
        except queue.Full:
            await asyncio.to_thread(inbox.put, chunk)
        self.refresh()

    async def drain(self) -> None:
        """Ends the connections once they have published everything and heard every PUBACK (or given up)."""
        if self._closed:
            return
        self._closed = True
        for inbox in self.inboxes:
            await asyncio.to_thread(inbox.put, None)
        fatal = []
        for _ in self.processes:
            result = await asyncio.to_thread(self.results.get)
            if "fatal" in result:
                fatal.append(result["fatal"])
                continue
            self.stats.latencies.extend(array.array("d", result["latencies"]))
        for p in self.processes:
            await asyncio.to_thread(p.join)
        for q in (*self.inboxes, self.results):
            q.close()
            q.join_thread()
        self.refresh()
        if fatal:
            raise SystemExit(f"MQTT: {fatal[0]}")

    async def close(self) -> None:
        await self.drain()
