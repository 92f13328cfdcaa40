"""Publishes readings over MQTT 3.1.1 with QoS 1, as devices do: each reading (or an array of one device's
readings: a backfill, or devices that report every few minutes) to its device's topic, over several
connections, each in a process of its own driving libmosquitto, the C client library (Debian's
libmosquitto1), through ctypes: a pure Python client spends a core on a few thousand messages a second.
A reading counts as accepted when the broker's PUBACK for its message arrived; the session is not clean,
and libmosquitto keeps every unacknowledged message and sends it again (DUP) after a reconnect, so a
lost connection delays messages and loses none. What is still unacknowledged when the run gives up is
counted failed."""

from __future__ import annotations

import array
import asyncio
import ctypes
import ctypes.util
import functools
import multiprocessing
import os
import queue
import select
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec

from loadgen.sender import Stats

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:51883"
# Messages a connection may have published and not yet seen acknowledged: bounds memory and the resend
# after a reconnect. Small, because libmosquitto walks its list of unacknowledged messages at every
# publish and PUBACK: sender CPU a message here 13-17 µs at 150-200, 16-18 µs at 500, 18-19 µs at 2000,
# with the same throughput (the broker is the limit) and a shorter wait for the PUBACK.
WINDOW = 200
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
    `per_message` readings of one device in an array (a backfill, a device's minutes)."""
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


# libmosquitto's return codes and the option used here (mosquitto.h).
_OK, _NO_CONN, _ERRNO = 0, 4, 14
# mosquitto_publish queues a QoS 1 message before it tries to send it, and resends it after a reconnect
# whatever the send returned (no connection, connection lost, a write error): only these codes, of the
# checks made before the queueing, mean the library does not hold the message.
# NOMEM, INVAL, PAYLOAD_SIZE, MALFORMED_UTF8, QOS_NOT_SUPPORTED, OVERSIZE_PACKET:
_NOT_QUEUED = {1, 3, 9, 18, 24, 25}
_OPT_TLS_USE_OS_CERTS = 13
_Callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


@functools.cache
def _libmosquitto() -> ctypes.CDLL:
    """The C library, with the signatures of the calls made here; SystemExit when it is not installed (a
    pure Python client would be several times slower: no silent fallback that would skew a benchmark)."""
    names = ("libmosquitto.so.1", ctypes.util.find_library("mosquitto"))
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            break
        except OSError:
            continue
    else:
        raise SystemExit("MQTT: libmosquitto, the C MQTT client library, is not installed (Debian package "
                         "libmosquitto1; `make nats` installs it with mosquitto-clients)")
    c, mosq = ctypes, ctypes.c_void_p
    for name, result, arguments in (
            ("mosquitto_lib_init", c.c_int, []),
            ("mosquitto_new", mosq, [c.c_char_p, c.c_bool, c.c_void_p]),
            ("mosquitto_username_pw_set", c.c_int, [mosq, c.c_char_p, c.c_char_p]),
            ("mosquitto_int_option", c.c_int, [mosq, c.c_int, c.c_int]),
            ("mosquitto_max_inflight_messages_set", c.c_int, [mosq, c.c_uint]),
            ("mosquitto_connect_callback_set", None, [mosq, _Callback]),
            ("mosquitto_disconnect_callback_set", None, [mosq, _Callback]),
            ("mosquitto_publish_callback_set", None, [mosq, _Callback]),
            ("mosquitto_connect", c.c_int, [mosq, c.c_char_p, c.c_int, c.c_int]),
            ("mosquitto_reconnect", c.c_int, [mosq]),
            ("mosquitto_socket", c.c_int, [mosq]),
            ("mosquitto_want_write", c.c_bool, [mosq]),
            ("mosquitto_loop_read", c.c_int, [mosq, c.c_int]),
            ("mosquitto_loop_write", c.c_int, [mosq, c.c_int]),
            ("mosquitto_loop_misc", c.c_int, [mosq]),
            ("mosquitto_publish", c.c_int,
             [mosq, c.POINTER(c.c_int), c.c_char_p, c.c_int, c.c_char_p, c.c_int, c.c_bool]),
            ("mosquitto_disconnect", c.c_int, [mosq]),
            ("mosquitto_destroy", None, [mosq]),
            ("mosquitto_strerror", c.c_char_p, [c.c_int]),
            ("mosquitto_connack_string", c.c_char_p, [c.c_int])):
        function = getattr(lib, name)
        function.restype, function.argtypes = result, arguments
    lib.mosquitto_lib_init()
    return lib


class _Connection:
    """One MQTT connection (a libmosquitto client). One thread drives it: it publishes, and in between
    runs libmosquitto's network steps on the socket (its loop_read/loop_write/loop_misc, the library's way
    to be driven from an outside loop), whose callbacks run in this same thread. So a message's mid is
    known before its PUBACK can be read, and no lock is needed; no network thread competes for the GIL."""

    def __init__(self, index: int, broker: Broker, client_id: str, counters) -> None:
        self.lib = _libmosquitto()
        self.broker = broker
        self.counters = counters
        self.base = index * _FIELDS
        self.pending: dict[int, tuple[float, int]] = {}  # mid -> (published at, readings)
        self.latencies = array.array("d")
        self.acked = 0  # readings acknowledged and not yet added to the shared counter
        self.progress = time.monotonic()
        self.connected = False
        self.closing = False
        self.refused = ""
        self.given_up = False
        self.retry_s = 0.2
        self.mid = ctypes.c_int()
        self.mosq = self.lib.mosquitto_new(client_id.encode(), False, None)  # clean_session false
        if not self.mosq:
            raise RuntimeError(f"libmosquitto could not create a client: {os.strerror(ctypes.get_errno())}")
        # libmosquitto keeps only the callbacks' addresses: these references keep them alive.
        self.callbacks = (_Callback(self._on_connect), _Callback(self._on_disconnect), _Callback(self._on_publish))
        self.lib.mosquitto_connect_callback_set(self.mosq, self.callbacks[0])
        self.lib.mosquitto_disconnect_callback_set(self.mosq, self.callbacks[1])
        self.lib.mosquitto_publish_callback_set(self.mosq, self.callbacks[2])
        self.lib.mosquitto_username_pw_set(self.mosq, broker.username.encode(), broker.password.encode())
        if broker.tls:
            self.lib.mosquitto_int_option(self.mosq, _OPT_TLS_USE_OS_CERTS, 1)
        # No limit in the library (it walks its whole in-flight list at each publish and PUBACK): the
        # window below is the only one.
        self.lib.mosquitto_max_inflight_messages_set(self.mosq, 0)

    def _on_connect(self, mosq, userdata, code: int) -> None:
        if code:
            self.refused = self.lib.mosquitto_connack_string(code).decode()
        else:
            self.refused = ""
            self.connected = True
            self.retry_s = 0.2

    def _on_disconnect(self, mosq, userdata, code: int) -> None:
        if self.connected and not self.closing:
            self.counters[self.base + _RECONNECTS] += 1
        self.connected = False

    def _on_publish(self, mosq, userdata, mid: int) -> None:
        # libmosquitto reports a message once, at its first PUBACK (a repeat after a resend is dropped).
        sent = self.pending.pop(mid, None)
        if sent is not None:
            now = time.monotonic()
            self.latencies.append(now - sent[0])
            self.progress = now
            self.acked += sent[1]

    def _error(self, code: int) -> str:
        if code == _ERRNO:
            return os.strerror(ctypes.get_errno())
        return self.lib.mosquitto_strerror(code).decode()

    def connect(self) -> str | None:
        """Connects, retrying for 30 s; the reason when it could not."""
        deadline = time.monotonic() + 30
        while (code := self.lib.mosquitto_connect(self.mosq, self.broker.host.encode(), self.broker.port, 20)) != _OK:
            if time.monotonic() > deadline:
                return f"cannot reach the MQTT broker {self.broker.host}:{self.broker.port}: {self._error(code)}"
            time.sleep(0.5)
        # A refused connect (a key the broker does not know yet, or a bad one) is retried for a while: the
        # broker's users are reloaded from the keys asynchronously.
        while not self.connected:
            if time.monotonic() > deadline:
                return "the MQTT broker refused the connection: " + (self.refused or "no answer")
            self.step(0.1)
        return None

    def step(self, timeout_s: float) -> None:
        """Waits at most timeout_s for the socket, reads what arrived (PUBACKs: the callbacks run here),
        writes what is queued, keeps the connection alive; after a lost or refused connection, reconnects
        (0.2 s after the loss, backing off to 2 s)."""
        lib, mosq = self.lib, self.mosq
        sock = lib.mosquitto_socket(mosq)
        code = _NO_CONN
        if sock >= 0:
            readable, writable, _ = select.select([sock], [sock] if lib.mosquitto_want_write(mosq) else [], [],
                                                  timeout_s)
            code = _OK
            if readable:
                # loop_read stops after a packet if errno happens to say EAGAIN: a clean errno lets it read
                # every PUBACK that has arrived.
                ctypes.set_errno(0)
                code = lib.mosquitto_loop_read(mosq, 1)
            if code == _OK and (writable or lib.mosquitto_want_write(mosq)):
                code = lib.mosquitto_loop_write(mosq, 1)
            if code == _OK:
                code = lib.mosquitto_loop_misc(mosq)
        if self.acked:
            self.counters[self.base + _ACKED] += self.acked
            self.acked = 0
        if code != _OK and not self.closing:
            # The socket is closed; libmosquitto keeps the unacknowledged messages and resends them (DUP)
            # once the broker has accepted the reconnect.
            time.sleep(min(self.retry_s, max(timeout_s, 0.05)))
            self.retry_s = min(self.retry_s * 2, 2.0)
            lib.mosquitto_reconnect(mosq)

    def publish(self, chunk: list[Message], give_up_s: float) -> None:
        """Publishes the chunk, a window of WINDOW messages ahead of their PUBACKs. Once the broker has
        acknowledged nothing for give_up_s while the window is full, this connection gives up: the rest
        of its readings fail (what it sent stays pending, for wait_for_acknowledgements)."""
        lib, mosq, mid, pending = self.lib, self.mosq, self.mid, self.pending
        published = failed = 0
        for topic, payload, rows in chunk:
            if len(pending) >= WINDOW and not self.given_up:
                waiting_since = time.monotonic()
                while len(pending) >= WINDOW:
                    self.step(0.1)
                    if time.monotonic() - max(self.progress, waiting_since) > give_up_s:
                        self.given_up = True
                        break
            if self.given_up:
                failed += rows
                continue
            published_at = time.monotonic()
            code = lib.mosquitto_publish(mosq, mid, topic.encode(), len(payload), payload, 1, False)
            published += rows
            if code not in _NOT_QUEUED:  # sent, or held by the library until the reconnect
                pending[mid.value] = (published_at, rows)
            else:  # a topic or payload MQTT cannot carry
                failed += rows
        self.counters[self.base + _PUBLISHED] += published
        self.counters[self.base + _FAILED] += failed
        self.step(0)

    def wait_for_acknowledgements(self, give_up_s: float) -> int:
        """Readings still unacknowledged once none arrived for give_up_s (0 when all did)."""
        self.progress = time.monotonic()
        while self.pending and time.monotonic() - self.progress <= give_up_s:
            self.step(0.05)
        return sum(rows for _, rows in self.pending.values())

    def close(self) -> None:
        self.closing = True
        if self.connected:
            self.lib.mosquitto_disconnect(self.mosq)
        self.lib.mosquitto_destroy(self.mosq)


def _connection(index: int, broker: Broker, client_id: str, inbox: multiprocessing.Queue,
                results: multiprocessing.Queue, counters, give_up_s: float) -> None:
    """One MQTT connection's process: publishes the chunks from `inbox` until None, waits for the last
    PUBACKs (at most give_up_s without any progress), then reports its latencies and errors."""
    base = index * _FIELDS
    connection = _Connection(index, broker, client_id, counters)
    if (fatal := connection.connect()) is not None:
        # Never connected: every reading handed to this connection fails, and the run says why.
        connection.close()
        while (chunk := inbox.get()) is not None:
            counters[base + _FAILED] += sum(rows for _, _, rows in chunk)
        results.put({"index": index, "fatal": fatal})
        return
    while True:
        try:
            chunk = inbox.get_nowait()
        except queue.Empty:
            connection.step(0.01)  # PUBACKs and keepalives while no chunk is waiting
            continue
        if chunk is None:
            break
        connection.publish(chunk, give_up_s)
    left = connection.wait_for_acknowledgements(give_up_s)
    counters[base + _FAILED] += left
    connection.close()
    results.put({"index": index, "latencies": connection.latencies.tobytes(), "unacknowledged": left})


class MqttPublisher:
    """The MQTT counterpart of loadgen.sender.Sender: submit() chunks of messages, drain(), close();
    the statistics in the same Stats (accepted = acknowledged by the broker)."""

    def __init__(self, url: str, api_key: str, connections: int, give_up_s: float = 300.0) -> None:
        self.broker = broker_from(url, api_key)
        _libmosquitto()  # here, before the connections start: a missing library ends the run at once
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

    def abort(self) -> None:
        """Ends the connections at once, whatever they still hold (a run that failed)."""
        self._closed = True
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            p.join(5)

    async def close(self) -> None:
        await self.drain()
