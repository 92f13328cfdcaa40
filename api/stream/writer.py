"""The batch writer (``python -m api writer``): drains the log into TimescaleDB.

Any number of writers share one durable pull consumer (work-queue semantics: each message goes to one
writer at a time). A writer fetches up to WRITER_BATCH messages, waiting at most WRITER_FLUSH_MS after
the first, validates every message (MQTT messages are seen here for the first time), writes the valid
readings in one transaction through the API's ingest SQL and acknowledges them only after the commit.
A message that fails validation goes to the dead-letter stream with the reason and is acknowledged; a
database outage acknowledges nothing: the messages are redelivered after a back-off, and since a
reading is identified by (device, timestamp), a redelivered reading is counted as a duplicate, never
stored twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from dataclasses import dataclass, field

import msgspec
import nats.errors
import nats.js.errors
import psycopg
import uvicorn
from litestar import Litestar, MediaType, Response, get
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import Counter, Gauge, Histogram
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api.db.ingest import ingest_batch
from api.db.pool import create_pool
from api.db.retention import RetentionCache
from api.readings import (STREAMS, BadInput, Batch, Limits, check_device_ids, decoder, device_id, parse_body,
                          validate_batch)
from api.server.metrics import prometheus_response
from api.settings import Settings
from api.stream.log import (CONSUMER, DEAD_LETTER_PREFIX, HEADER_ERROR, HEADER_SUBJECT, PARTITIONS, close,
                            connect, ensure_streams, partition_of)

log = logging.getLogger("api.writer")

_UNAVAILABLE = (PoolTimeout, psycopg.OperationalError, psycopg.errors.AdminShutdown,
                psycopg.errors.CannotConnectNow, psycopg.errors.QueryCanceled)

PENDING = Gauge("telemetry_stream_pending_messages", "Messages in the log not yet delivered to a writer")
ACK_PENDING = Gauge("telemetry_stream_ack_pending_messages", "Messages delivered to writers and not yet acknowledged")
LOG_BYTES = Gauge("telemetry_stream_bytes", "Bytes the log holds")
LOG_MAX_BYTES = Gauge("telemetry_stream_max_bytes", "Size limit of the log (a full log refuses new messages)")
REDELIVERIES = Counter("telemetry_stream_redeliveries_total", "Messages this writer received more than once")
DEAD_LETTERS = Counter("telemetry_stream_dead_letters_total", "Messages moved to the dead-letter stream, by stream",
                       ["stream"])
COMMITTED = Counter("telemetry_writer_messages_total", "Messages this writer committed and acknowledged")
BATCH_MESSAGES = Histogram("telemetry_writer_batch_messages", "Messages per written batch",
                           buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000))
BATCH_READINGS = Histogram("telemetry_writer_batch_readings", "Readings per written batch",
                           buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000))
LAG = Histogram("telemetry_stream_lag_seconds",
                "From a message's storage in the log to the commit of its readings in the database",
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300, 900, 3600))
DB_FAILURES = Counter("telemetry_writer_database_failures_total",
                      "Batches not written because the database was unavailable (redelivered later)")


def consumer_config(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=CONSUMER,
        description="Batch writers into TimescaleDB (shared by every writer process)",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.writer_ack_wait_s,  # not acknowledged by then (its writer died): to another writer
        max_deliver=-1,  # a database outage must never turn readings into dead letters
        max_ack_pending=max(settings.writer_batch * 16, 20_000),
        max_waiting=512,
    )


@dataclass
class Verdict:
    """What a writer makes of one message: readings to write, or the reason it is a dead letter."""

    stream: str
    rows: list = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Topic:
    """What a message's subject says: its stream and, for a device's own topic, which device may send on it.

    ``telemetry.<stream>``: a batch the API published (any device). ``telemetry.<stream>.<deviceId>``: an
    MQTT topic as NATS stores it unmapped (NATS 2.10+ writes a '.' of the topic as '//').
    ``telemetry.<stream>.p256.<n>``: the same topic after the broker's subject mapping, which stores a
    device's messages on partition n of the 256 of its stream (NATS's partition(): FNV-1a of the device
    id, modulo 256; see log.PARTITION_MAPPINGS)."""

    stream: str
    device: str | None = None
    partition: int | None = None

    def admits(self, device: str) -> bool:
        if self.partition is not None:
            return partition_of(device) == self.partition
        return self.device is None or self.device == device

    def names_a_device(self) -> bool:
        return self.device is not None or self.partition is not None

    def mismatch(self, index: int, device: str) -> str:
        if self.partition is not None:
            return (f"reading {index} is of {device!r}, published to the topic of another device (its message "
                    f"is on partition {self.partition} of {PARTITIONS}, {device!r} on {partition_of(device)})")
        return f"reading {index} is of {device!r}, published to the topic of {self.device!r}"


# The partition subjects of the broker's mapping, and no other: a device that publishes to a topic of
# that shape by hand gets no other partition count, and no digit Python's int() would refuse.
_PARTITION = re.compile(rf"p{PARTITIONS}\.(0|[1-9][0-9]{{0,{len(str(PARTITIONS)) - 1}}})", re.ASCII)


def _topic(subject: str) -> Topic:
    _, _, rest = subject.partition(".")
    stream, has_device, device = rest.partition(".")
    if not has_device:
        return Topic(stream)
    if (mapped := _PARTITION.fullmatch(device)) and int(mapped[1]) < PARTITIONS:
        return Topic(stream, partition=int(mapped[1]))
    return Topic(stream, device=device.replace("//", "."))


def judge(msg: Msg, limits: Limits) -> Verdict:
    """Validate one message as the synchronous API validates one request."""
    topic = _topic(msg.subject)
    stream = topic.stream
    if stream not in STREAMS:
        return Verdict("unknown", error=f"subject {msg.subject!r} names no stream")
    try:
        rows = validate_batch(parse_body(msg.data, "application/json", stream), limits)
    except BadInput as exc:
        detail = "; ".join(f"reading {e.index}{f' {e.field}' if e.field else ''}: {e.reason}" for e in exc.errors)
        return Verdict(stream, error=f"{exc.message}{': ' + detail if detail else ''}")
    readings = rows.meters if stream == "meters" else rows.vehicles
    for index, reading in enumerate(readings):  # an MQTT topic names its device
        if not topic.admits(device_id(reading)):
            return Verdict(stream, error=topic.mismatch(index, device_id(reading)))
    return Verdict(stream, rows=readings)


def _delivery(msg: Msg) -> tuple[int, int]:
    """How many times the message was delivered and when the log stored it (ns since the epoch), read from
    its reply subject ($JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>): Msg.metadata
    builds four objects per message to say the same."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4]), int(tokens[7])
    metadata = msg.metadata  # the form with a JetStream domain
    return metadata.num_delivered, int(metadata.timestamp.timestamp() * 1_000_000_000)


def judge_all(msgs: list[Msg], limits: Limits) -> list[Verdict]:
    """judge() of every message, in order. The messages MQTT devices send (one JSON reading on the subject
    of its device) are decoded one by one and validated together, one call per stream; a message that does
    not decode, or whose reading is not its subject's device, and every message of a stream whose combined
    validation fails, is judged on its own, so that each dead letter keeps the reason judge() gives."""
    verdicts: list[Verdict | None] = [None] * len(msgs)
    pending: dict[str, tuple[list[int], list]] = {stream: ([], []) for stream in STREAMS}
    for index, msg in enumerate(msgs):
        topic = _topic(msg.subject)
        stream = topic.stream
        # parse_body's decoder of one reading: it decodes and refuses exactly the same bodies.
        if stream in STREAMS and topic.names_a_device() and msg.data[:1] == b"{":
            try:
                reading = decoder(STREAMS[stream]).decode(msg.data)
            except msgspec.DecodeError:  # ValidationError included
                pass
            else:
                if topic.admits(device_id(reading)):
                    indexes, rows = pending[stream]
                    indexes.append(index)
                    rows.append(reading)
                    continue
        verdicts[index] = judge(msg, limits)
    for stream, (indexes, rows) in pending.items():
        if not rows:
            continue
        try:
            # One reading per message: a message can never exceed max_rows, the combined list may.
            validate_batch(check_device_ids(rows), Limits(len(rows), limits.max_future_skew, limits.max_age))
        except BadInput:
            for index in indexes:
                verdicts[index] = judge(msgs[index], limits)
        else:
            for index, reading in zip(indexes, rows):
                verdicts[index] = Verdict(stream, [reading])
    return verdicts


def judge_all_safely(msgs: list[Msg], limits: Limits) -> list[Verdict]:
    """judge_all(), but a message whose judging fails unexpectedly (a bug) becomes a dead letter with the
    error, logged, instead of stopping the writer: unacknowledged, it would come back to every writer for
    ever. The other messages of the batch are judged one by one."""
    try:
        return judge_all(msgs, limits)
    except Exception:
        log.exception("judging a batch of %d messages failed: judging them one by one", len(msgs))
    verdicts = []
    for msg in msgs:
        try:
            verdicts.append(judge(msg, limits))
        except Exception as exc:
            log.exception("judging the message on %s (stream sequence %s) failed", msg.subject, msg.reply)
            verdicts.append(Verdict(_topic(msg.subject).stream,
                                    error=f"the writer could not judge this message: {type(exc).__name__}: {exc}"))
    return verdicts


class Writer:
    def __init__(self, settings: Settings, pool: AsyncConnectionPool, nc: Client) -> None:
        self.settings = settings
        self.pool = pool
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.retention = RetentionCache(settings.retention_cache_s)
        self.stopping = asyncio.Event()
        self.ready = False
        self._backoff = 0.0

    async def setup(self) -> None:
        await ensure_streams(self.nc, self.settings)
        config = consumer_config(self.settings)
        try:
            await self.js.add_consumer(self.settings.stream_name, config)
        except nats.js.errors.BadRequestError as exc:
            # The consumer exists with settings of another version: keep it (it works the same way).
            log.warning("consumer %s kept as it is: %s", CONSUMER, exc.description)
        self.sub = await self.js.pull_subscribe_bind(CONSUMER, stream=self.settings.stream_name)

    async def _fetch(self) -> list[Msg]:
        """Up to WRITER_BATCH messages: waits for the first, then at most WRITER_FLUSH_MS for the rest."""
        batch, flush = self.settings.writer_batch, self.settings.writer_flush_ms / 1000
        try:
            msgs = await self.sub.fetch(batch, timeout=1.0)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []
        deadline = time.monotonic() + flush
        while len(msgs) < batch and (left := deadline - time.monotonic()) > 0.005:
            try:
                msgs += await self.sub.fetch(batch - len(msgs), timeout=left)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                break
        return msgs

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        headers = {HEADER_ERROR: reason[:4000], HEADER_SUBJECT: msg.subject,
                   "Nats-Msg-Id": f"{self.settings.stream_name}-{msg.metadata.sequence.stream}"}
        await self.js.publish(DEAD_LETTER_PREFIX + msg.subject, msg.data, headers=headers)
        DEAD_LETTERS.labels(msg.subject.split(".")[1] if "." in msg.subject else "unknown").inc()
        log.warning("dead letter %s: %s", msg.subject, reason)

    async def _write(self, verdicts: list[tuple[Msg, Verdict]]) -> None:
        batch = Batch()
        for _, verdict in verdicts:
            (batch.meters if verdict.stream == "meters" else batch.vehicles).extend(verdict.rows)
        try:
            await ingest_batch(self.pool, batch)
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.RaiseException):
            # One message the database refuses (a check the validation does not know) would block the
            # batch for ever: write the messages one by one and move the refused one aside.
            for msg, verdict in verdicts:
                one = Batch(verdict.rows, []) if verdict.stream == "meters" else Batch([], verdict.rows)
                try:
                    await ingest_batch(self.pool, one)
                except (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.RaiseException) as exc:
                    await self._dead_letter(msg, f"refused by the database: {str(exc).splitlines()[0]}")
        BATCH_READINGS.observe(len(batch))

    async def process(self, msgs: list[Msg]) -> None:
        retention = await self.retention.get_or_last(self.pool)
        limits = Limits(max(self.settings.max_rows, 1), self.settings.max_future_skew, retention.accepted_age)
        deliveries = [_delivery(msg) for msg in msgs]
        if redelivered := sum(1 for delivered, _ in deliveries if delivered > 1):
            REDELIVERIES.inc(redelivered)
        valid: list[tuple[Msg, Verdict]] = []
        stored_ns: list[int] = []
        invalid: list[tuple[Msg, str]] = []
        for msg, verdict, (_, stored) in zip(msgs, judge_all_safely(msgs, limits), deliveries):
            if verdict.error is None:
                valid.append((msg, verdict))
                stored_ns.append(stored)
            else:
                invalid.append((msg, verdict.error))
        for msg, reason in invalid:
            await self._dead_letter(msg, reason)
            await msg.ack()
        if valid:
            try:
                await self._write(valid)
            except _UNAVAILABLE as exc:
                DB_FAILURES.inc()
                self._backoff = min(max(self._backoff * 2, 0.5), 10.0)
                log.warning("database unavailable (%s): %d messages back to the log, retry in %.1f s",
                            type(exc).__name__, len(valid), self._backoff)
                for msg, _ in valid:
                    await msg.nak(delay=self._backoff)
                await self.nc.flush()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self._backoff)
                return
            self._backoff = 0.0
            committed_ns = time.time_ns()
            publish = self.nc.publish
            for msg, _ in valid:
                # An empty message to the reply subject is msg.ack(): sent from the client's buffer at the
                # flush below, all at once.
                await publish(msg.reply)
            for stored in stored_ns:
                LAG.observe(max(0.0, (committed_ns - stored) / 1e9))
            COMMITTED.inc(len(valid))
        BATCH_MESSAGES.observe(len(msgs))
        await self.nc.flush()

    async def run(self) -> None:
        while not self.stopping.is_set():
            if not self.nc.is_connected:
                await asyncio.sleep(0.1)
                continue
            try:
                await self.setup()
                break
            except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
                log.warning("the log is not reachable yet (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1)
        self.ready = True
        monitor = asyncio.create_task(self._monitor())
        try:
            while not self.stopping.is_set():
                try:
                    msgs = await self._fetch()
                    if msgs:
                        await self.process(msgs)
                except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as exc:
                    # NATS restarting: unacknowledged messages are redelivered once it is back.
                    log.warning("log error (%s); retrying", exc.__class__.__name__)
                    await asyncio.sleep(0.5)
        finally:
            monitor.cancel()
            self.ready = False

    async def _monitor(self) -> None:
        """The log's depth, every two seconds, for the metrics."""
        while True:
            with contextlib.suppress(Exception):
                info = await self.js.consumer_info(self.settings.stream_name, CONSUMER)
                PENDING.set(info.num_pending or 0)
                ACK_PENDING.set(info.num_ack_pending or 0)
                stream = await self.js.stream_info(self.settings.stream_name)
                LOG_BYTES.set(stream.state.bytes)
                LOG_MAX_BYTES.set(stream.config.max_bytes or 0)
            await asyncio.sleep(2)


def _health_app(writer: Writer) -> Litestar:
    @get("/health/live", sync_to_thread=False)
    def live() -> dict[str, str]:
        return {"status": "live"}

    @get("/health/ready")
    async def ready() -> Response[dict[str, str]]:
        checks = {"log": "ok" if writer.nc.is_connected and writer.ready else "unavailable"}
        try:
            async with writer.pool.connection(timeout=1) as conn:
                await conn.execute("SELECT 1")
            checks["database"] = "ok"
        except (*_UNAVAILABLE, psycopg.Error):
            checks["database"] = "unavailable"
        # A writer without its database still holds its place: the log keeps the readings meanwhile.
        return Response({"status": "ready" if checks["log"] == "ok" else "unavailable", **checks},
                        status_code=200 if checks["log"] == "ok" else 503)

    @get("/metrics", sync_to_thread=False)
    def metrics() -> Response[bytes]:
        return prometheus_response()

    return Litestar(route_handlers=[live, ready, metrics], openapi_config=None)


async def run_writer(settings: Settings) -> None:
    pool = create_pool(settings)
    await pool.open(wait=False)
    nc = await connect(settings, name="telemetry-writer", wait=False)
    writer = Writer(settings, pool, nc)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, writer.stopping.set)
    server = None
    if settings.writer_port:
        config = uvicorn.Config(_health_app(writer), host=settings.writer_host, port=settings.writer_port,
                                log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        # uvicorn takes SIGTERM and SIGINT while it serves: its stop is the writer's signal to stop too
        # (the batch in hand is finished: committed and acknowledged, or left to redelivery).
        serving.add_done_callback(lambda _: writer.stopping.set())
    log.info("writer started: stream %s, consumer %s, batch %d, flush %d ms", settings.stream_name, CONSUMER,
             settings.writer_batch, settings.writer_flush_ms)
    print(f"writer: draining stream {settings.stream_name} into the database"
          + (f"; health and metrics on http://{settings.writer_host}:{settings.writer_port}" if server else ""),
          flush=True)
    try:
        await writer.run()
    finally:
        if server:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
        await close(nc)  # what was committed is acknowledged; the rest is redelivered to another writer
        await pool.close()
