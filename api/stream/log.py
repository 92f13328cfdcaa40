"""The durable log between devices and the database: a JetStream stream of readings, its dead-letter
stream, and publishing validated batches into it (the asynchronous HTTP way in).

Subjects: ``telemetry.meters`` and ``telemetry.vehicles`` carry batches published by the API;
``telemetry.meters.<meterId>`` and ``telemetry.vehicles.<vehicleId>`` are what MQTT devices publish to
(NATS turns the MQTT topic ``telemetry/meters/<id>`` into that subject). The broker's configuration maps
those onto ``telemetry.meters.p256.<n>``, one of 256 partitions by a hash of the device id
(PARTITION_MAPPINGS), before the stream stores them: NATS 2.9's file store looks for a subject's next
message by reading the block onwards from its first, at every ack that removes that first message, once
the subject has three messages in a block. With one subject per device, 20,000 devices and a backlog that
holds three readings a device in a block, that is a read of some 20,000 messages per ack; with 256
subjects, of some 256. The writers check each reading against its message's partition. Invalid messages
are moved to ``deadletter.telemetry.…`` with the reason in a header."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from prometheus_client import Counter

from api.readings import Batch
from api.settings import Settings

log = logging.getLogger("api.stream")
_CONNECTING: dict[Client, asyncio.Task] = {}

SUBJECTS = ["telemetry.meters", "telemetry.meters.>", "telemetry.vehicles", "telemetry.vehicles.>"]
# The subject mapping every NATS server of the platform is configured with (scripts/local-nats.sh,
# docker/nats.conf; tests/test_deployment.py checks that both hold it): device subjects onto 256 partitions.
PARTITIONS = 256
PARTITION_MAPPINGS = {f"telemetry.{stream}.*": f"telemetry.{stream}.p{PARTITIONS}.{{{{partition({PARTITIONS},1)}}}}"
                      for stream in ("meters", "vehicles")}
DEAD_LETTER_PREFIX = "deadletter."
DEAD_LETTER_STREAM_SUFFIX = "_DEADLETTER"
CONSUMER = "writers"
# Readings per message of a published HTTP batch: keeps a message far below NATS's 1 MB payload limit
# (a vehicle reading is about 130 bytes of JSON).
READINGS_PER_MESSAGE = 2000

HEADER_SOURCE = "Telemetry-Source"
HEADER_ERROR = "Telemetry-Error"
HEADER_SUBJECT = "Telemetry-Subject"

PUBLISHED = Counter("telemetry_stream_published_readings_total",
                    "Readings the API published into the log (asynchronous HTTP ingestion), by stream", ["stream"])
PUBLISH_FAILURES = Counter("telemetry_stream_publish_failures_total",
                           "Publishes the log refused or did not acknowledge, by reason", ["reason"])


@functools.lru_cache(maxsize=65536)
def partition_of(device: str, partitions: int = PARTITIONS) -> int:
    """The partition NATS's partition() mapping puts a device's topic on: FNV-1a (32 bit) of the subject
    token, which is the device id with NATS 2.10+'s '//' for a '.', modulo the number of partitions."""
    digest = 0x811C9DC5
    for byte in device.replace(".", "//").encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest % partitions


class LogUnavailable(Exception):
    """The log did not store the batch: NATS is unreachable, or the stream is full. Answer 503."""


def dead_letter_stream(settings: Settings) -> str:
    return settings.stream_name + DEAD_LETTER_STREAM_SUFFIX


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """The readings stream (a work queue: a message leaves the log once a writer has committed it) and
    the dead-letter stream (kept for inspection until it ages out)."""
    readings = StreamConfig(
        name=settings.stream_name,
        description="Telemetry readings on their way to TimescaleDB",
        subjects=SUBJECTS,
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_bytes=settings.stream_max_bytes,
        max_age=settings.stream_max_age_td.total_seconds(),
        # A full log refuses new messages (the publisher sees it) instead of dropping old ones.
        discard=DiscardPolicy.NEW,
        duplicate_window=settings.stream_duplicate_window_td.total_seconds(),
    )
    dead = StreamConfig(
        name=dead_letter_stream(settings),
        description="Telemetry messages the writers refused, with the reason in the Telemetry-Error header",
        subjects=[DEAD_LETTER_PREFIX + s for s in SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_bytes=max(settings.stream_max_bytes // 4, 1024 * 1024),
        max_age=settings.stream_max_age_td.total_seconds(),
        discard=DiscardPolicy.OLD,
    )
    return [readings, dead]


async def connect(settings: Settings, *, name: str, wait: bool = True) -> Client:
    """A NATS connection that reconnects for ever. With wait=False the first connection is made in the
    background, again and again until NATS answers: a process starts while NATS is away, and its
    publishes fail (503) until it is back."""
    options = dict(name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
                   error_cb=_log_error)
    if wait:
        return await nats.connect(settings.nats_url, **options)
    nc = Client()

    async def first_connection() -> None:
        while not nc.is_connected:
            try:
                await nc.connect(settings.nats_url, **options)
            except (OSError, nats.errors.Error, asyncio.TimeoutError) as exc:
                await _log_error(exc)
                await asyncio.sleep(1)

    task = asyncio.get_running_loop().create_task(first_connection())
    _CONNECTING[nc] = task
    task.add_done_callback(lambda _: _CONNECTING.pop(nc, None))
    return nc


async def close(nc: Client) -> None:
    """Stop connecting (a connection still being attempted is abandoned) and close, in bounded time."""
    task = _CONNECTING.pop(nc, None)
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 2)
        if not nc.is_connected:
            return  # never connected: nothing to close (closing such a client can wait for ever)
    if not nc.is_closed:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)


async def _quiet(_: Exception) -> None:
    """The caller reports the failure once."""


_LAST_LOGGED: dict[str, float] = {}


async def _log_error(exc: Exception) -> None:
    """NATS errors, each distinct one at most once a minute (reconnection retries every half second)."""
    text = str(exc) or type(exc).__name__
    now = time.monotonic()
    if now - _LAST_LOGGED.get(text, -120.0) >= 60:
        _LAST_LOGGED[text] = now
        log.warning("NATS: %s (reconnecting)", text)


async def ensure_streams(nc: Client, settings: Settings) -> list[str]:
    """Create the streams, or update them to the configured limits: idempotent. Returns what it did."""
    js = nc.jetstream()
    done = []
    for config in stream_configs(settings):
        try:
            info = await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
            done.append(f"created stream {config.name}")
        else:
            # The replica count is the cluster operator's (nats stream edit --replicas 3): kept.
            config.num_replicas = info.config.num_replicas
            await js.update_stream(config)
            done.append(f"updated stream {config.name}")
    return done


def ensure_streams_now(settings: Settings) -> list[str]:
    """``ensure_streams`` from synchronous code (``python -m api migrate``)."""

    async def run() -> list[str]:
        nc = await asyncio.wait_for(nats.connect(settings.nats_url, name="telemetry-migrate", connect_timeout=5,
                                                 allow_reconnect=False, error_cb=_quiet), 15)
        try:
            return await ensure_streams(nc, settings)
        finally:
            await nc.close()

    return asyncio.run(run())


@dataclass(frozen=True, slots=True)
class Message:
    subject: str
    payload: bytes
    msg_id: str
    readings: int


def batch_messages(batch: Batch) -> list[Message]:
    """A validated batch as log messages: per stream, in chunks, each with a Nats-Msg-Id derived from its
    content (a client's retry of the same request is stored once by the log; the database would count it
    as duplicates anyway)."""
    messages = []
    for stream, rows in (("meters", batch.meters), ("vehicles", batch.vehicles)):
        for start in range(0, len(rows), READINGS_PER_MESSAGE):
            payload = msgspec.json.encode(rows[start:start + READINGS_PER_MESSAGE])
            messages.append(Message(f"telemetry.{stream}", payload, hashlib.sha256(payload).hexdigest(),
                                    len(rows[start:start + READINGS_PER_MESSAGE])))
    return messages


async def publish(nc: Client, messages: Sequence[Message], timeout: float) -> None:
    """Publish and wait until JetStream has acknowledged storage of every message; LogUnavailable if not."""
    if not nc.is_connected:
        PUBLISH_FAILURES.labels("disconnected").inc()
        raise LogUnavailable("the log (NATS) is unreachable")
    js = nc.jetstream(timeout=timeout)
    results = await asyncio.gather(
        *(js.publish(m.subject, m.payload, headers={"Nats-Msg-Id": m.msg_id, HEADER_SOURCE: "http"})
          for m in messages),
        return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        error = errors[0]
        if isinstance(error, nats.js.errors.APIError) and error.err_code in (10047, 10077, 10078):
            PUBLISH_FAILURES.labels("full").inc()  # 10047 insufficient storage, 10077/10078 max msgs/bytes
            raise LogUnavailable(f"the log is full: {error.description}")
        if isinstance(error, (nats.errors.Error, asyncio.TimeoutError, nats.js.errors.Error)):
            PUBLISH_FAILURES.labels(type(error).__name__).inc()
            raise LogUnavailable(f"the log did not store the batch: {error!r}")
        raise error
    for m in messages:
        PUBLISHED.labels(m.subject.split(".")[1]).inc(m.readings)
