"""Stream ingestion at 100x: the full fleet through synchronous HTTP, then through the log (async HTTP
and MQTT, one writer and two), side by side: rows/s stored, end-to-end lag from the writers' histograms,
each run verified; then a 20 s database outage under async HTTP, which only the writers see (their
database connections go through a TCP proxy the benchmark cuts: the dev cluster keeps running)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import nats
import nats.js.errors
import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.stream.broker import SET_BROKER_HASH_SQL, broker_hash
from api.stream.log import CONSUMER
from api.stream.process import NatsServer, WriterProcess
from bench.env import ApiProcess, create_key, drop_database, fresh_database

STREAM = "TELEMETRY"  # the log's stream under the default settings (STREAM_NAME)
DATABASE = f"telemetry_bench_stream_{os.getpid()}"  # two benches at once do not drop each other's
# Minutes of readings an MQTT device publishes as one array in the second pair of MQTT runs: meters that
# report a load profile every few minutes (or every 15) rather than each reading as it is taken.
REPORT_EVERY = 5
# (label, transport, writers, minutes a device's MQTT message holds)
PATHS = [("sync HTTP", "http", 0, 1), ("async HTTP, 1 writer", "http-async", 1, 1),
         ("async HTTP, 2 writers", "http-async", 2, 1),
         ("MQTT, 1 writer", "mqtt", 1, 1), ("MQTT, 2 writers", "mqtt", 2, 1),
         (f"MQTT, {REPORT_EVERY}-minute arrays, 1 writer", "mqtt", 1, REPORT_EVERY),
         (f"MQTT, {REPORT_EVERY}-minute arrays, 2 writers", "mqtt", 2, REPORT_EVERY)]


ROLES = ("NATS", "writers", "PostgreSQL", "API", "devices (load generator)", "other")


def _role(proc: psutil.Process) -> str:
    """A process's role, or that of its nearest ancestor with one (the MQTT sender's connection processes
    are the load generator's multiprocessing children)."""
    role = _own_role(proc.info["name"] or "", " ".join(proc.info["cmdline"] or ()))
    if role == "other":
        with contextlib.suppress(psutil.Error):
            for parent in proc.parents():
                if (role := _own_role(parent.name(), " ".join(parent.cmdline()))) != "other":
                    break
    return role


def _own_role(name: str, cmdline: str) -> str:
    if name == "nats-server":
        return "NATS"
    if name == "postgres" or cmdline.startswith("postgres"):
        return "PostgreSQL"
    if "-m api writer" in cmdline:
        return "writers"
    if "-m api" in cmdline or "granian" in cmdline or "uvicorn" in cmdline:
        return "API"
    if "-m loadgen" in cmdline:  # with the MQTT sender's connection processes (forked)
        return "devices (load generator)"
    return "other"


class CpuByRole:
    """The CPU every process on the machine spends while the block runs, summed by its role, as a share
    of one core (psutil, sampled each second: a process that starts and ends between two samples is
    missed; the sum over roles is at most the machine's cores)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[str, float]] = {}
        self._totals = dict.fromkeys(ROLES, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.shares: dict[str, float] = {}

    def _sample(self) -> None:
        for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            used = times.user + times.system
            role, before = self._seen.get(proc.pid, (None, None))
            if role is None:  # a process new since the last sample: all its CPU is new
                role, before = _role(proc), 0.0
            self._totals[role] += used - before
            self._seen[proc.pid] = (role, used)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def __enter__(self) -> CpuByRole:
        self._sample()  # what each process had spent before: not counted
        self._totals = dict.fromkeys(ROLES, 0.0)
        self._began = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        elapsed = time.perf_counter() - self._began
        self.shares = {role: round(total / elapsed, 2) for role, total in self._totals.items()}


def _metrics(url: str) -> dict[str, float]:
    samples = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def lag_quantiles(writers: list[dict[str, float]], quantiles: tuple[float, ...] = (0.5, 0.99)) -> dict:
    """Quantiles of telemetry_stream_lag_seconds over several writers: their cumulative buckets added
    up, the quantile interpolated linearly inside its bucket (as Prometheus' histogram_quantile)."""
    buckets: dict[float, float] = {}
    for samples in writers:
        for name, value in samples.items():
            if name.startswith("telemetry_stream_lag_seconds_bucket{"):
                le = name.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + value
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    result = {"messages": int(total)}
    for q in quantiles:
        if not total:
            result[f"p{round(q * 100)}_s"] = None
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for bound in bounds:
            if buckets[bound] >= rank:
                if bound == float("inf"):  # beyond the last finite bucket: its bound is all we know
                    value = lower
                else:
                    inside = buckets[bound] - below
                    value = lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
                result[f"p{round(q * 100)}_s"] = round(value, 3)
                break
            lower, below = bound, buckets[bound]
    return result


def _committed(samples: dict[str, float]) -> float:
    """Readings a writer has committed (new or duplicates)."""
    return sum(v for k, v in samples.items() if k.startswith("telemetry_readings_total{")
               and ('outcome="inserted"' in k or 'outcome="duplicate"' in k))


def _stored_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM telemetry.{t}").fetchone()[0]
                   for t in ("meter_readings", "vehicle_readings"))


def _ingest_key(url: str, nats_server: NatsServer) -> str:
    """A key with ingest, read and admin that may also publish over MQTT: its broker hash stored and the
    broker's users rewritten (`python -m api broker-users`, as an operator runs it)."""
    key = create_key(url)
    with psycopg.connect(url) as conn:
        conn.execute(SET_BROKER_HASH_SQL, (broker_hash(key), key.split("_", 2)[1]))
    subprocess.run([sys.executable, "-m", "api", "broker-users", "--file", str(nats_server.users_file),
                    "--pid-file", str(nats_server.pid_file)], check=True, capture_output=True,
                   env={**os.environ, "DATABASE_URL": url, "NATS_URL": nats_server.url})
    return key


def _loadgen(api: ApiProcess, key: str, url: str, nats_server: NatsServer, transport: str, devices: int,
             speedup: float, duration: str, batch_size: int, concurrency: int, tmp: Path,
             report_every: int = 1) -> dict:
    report = tmp / f"{transport}.json"
    command = [sys.executable, "-m", "loadgen", "simulate", "--url", api.url, "--api-key", key,
               "--meters", str(devices), "--vehicles", str(devices), "--speedup", str(speedup),
               "--duration", duration, "--batch-size", str(batch_size), "--concurrency", str(concurrency),
               "--transport", transport, "--mqtt-url", f"mqtt://127.0.0.1:{nats_server.mqtt_port}",
               "--nats-url", nats_server.url, "--verify", "--database-url", url, "--report", str(report)]
    if report_every > 1:
        command += ["--report-every", str(report_every)]
    report.unlink(missing_ok=True)  # a run that writes none must not inherit the previous MQTT path's
    finished = subprocess.run(command, check=False)
    result = json.loads(report.read_text()) if report.exists() else {"error": "no report"}
    result["exit_status"] = finished.returncode
    return result


def _one_path(nats_server: NatsServer, transport: str, writers: int, devices: int, speedup: float, duration: str,
              batch_size: int, concurrency: int, tmp: Path, report_every: int = 1) -> dict:
    # A database of its own, dropped once verified: a path that fails its verification leaves its
    # database for a look at what went wrong (its name is in the results).
    database = f"{DATABASE}_{transport.replace('-', '_')}_{writers}w_{report_every}m"
    url = fresh_database(database)
    key = _ingest_key(url, nats_server)
    procs = [WriterProcess(url, nats_server.url) for _ in range(writers)]
    try:
        with ApiProcess(url, NATS_URL=nats_server.url, DB_POOL_MAX=str(max(concurrency, 4)),
                        ALERT_INTERVAL_S="0") as api:
            with CpuByRole() as cpu:
                run = _loadgen(api, key, url, nats_server, transport, devices, speedup, duration, batch_size,
                               concurrency, tmp, report_every)
        lag = lag_quantiles([w.metrics() for w in procs]) if procs else None
    finally:
        for w in procs:
            w.stop()
    stored = _stored_rows(url)
    drain_s = run.get("drain", {}).get("wait_s", 0.0)
    elapsed = run.get("elapsed_s", 0.0) + drain_s
    verification = run.get("verification", {})
    if verification.get("passed"):
        drop_database(database)
    return {
        "kept_database": None if verification.get("passed") else database,
        "transport": transport, "writers": writers, "report_every_min": report_every, "sent": run.get("sent"),
        "failed": run.get("failed"),
        "errors_by_status": run.get("errors_by_status"), "sender_rows_per_s": run.get("rows_per_s"),
        "stored": stored, "drain_after_run_s": drain_s,
        "stored_rows_per_s": round(stored / elapsed, 1) if elapsed else 0.0,
        "request_latency_ms": run.get("latency_ms"), "lag": lag,
        "verified": bool(verification.get("passed")), "problems": verification.get("problems", [])[:5],
        "exit_status": run.get("exit_status"), "cpu_cores_by_role": cpu.shares,
    }


class CuttableProxy:
    """A TCP proxy in front of the database (asyncio, in a thread of its own): cut() aborts every
    connection through it and hangs up on new ones until restore(). Only the processes pointed at it
    lose the database."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.open = True
        self.connections: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.transport.abort()
            self.connections.discard(writer)

    def cut(self) -> None:
        self.open = False
        self.loop.call_soon_threadsafe(lambda: [w.transport.abort() for w in list(self.connections)])

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.server.close)


async def _watch(nats_url: str, stream: str, api: ApiProcess, writers: list[WriterProcess], stop: threading.Event,
                 samples: list[dict]) -> None:
    """Every 0.5 s: the log's backlog (messages), the readings the API has published and the readings
    the writers have committed."""
    nc = await nats.connect(nats_url, name="bench-watch")
    js = nc.jetstream(timeout=5)
    started = time.monotonic()
    try:
        while not stop.is_set():
            sample: dict = {"t": round(time.monotonic() - started, 2)}
            try:
                info = await js.consumer_info(stream, "writers")
                sample["backlog_messages"] = (info.num_pending or 0) + (info.num_ack_pending or 0)
                api_m = await asyncio.to_thread(_metrics, api.url)
                sample["published"] = sum(v for k, v in api_m.items()
                                          if k.startswith("telemetry_stream_published_readings_total{"))
                sample["committed"] = sum([_committed(await asyncio.to_thread(w.metrics)) for w in writers])
            except Exception as exc:  # noqa: BLE001  (a sample missed is a gap in the series, not a failure)
                sample["error"] = type(exc).__name__
            samples.append(sample)
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


def _outage(nats_server: NatsServer, writers: int, devices: int, speedup: float, duration: str, batch_size: int,
            concurrency: int, outage_at_s: float, outage_s: float, tmp: Path) -> dict:
    url = fresh_database(DATABASE)
    key = _ingest_key(url, nats_server)
    target = conninfo_to_dict(url)
    proxy = CuttableProxy(target.get("host") or "127.0.0.1", int(target.get("port") or 5432))
    through_proxy = make_conninfo(url, host="127.0.0.1", port=proxy.port)
    procs = [WriterProcess(through_proxy, nats_server.url, DB_POOL_TIMEOUT="1") for _ in range(writers)]
    samples: list[dict] = []
    stop = threading.Event()
    try:
        with ApiProcess(url, NATS_URL=nats_server.url, DB_POOL_MAX=str(max(concurrency, 4)),
                        ALERT_INTERVAL_S="0") as api:
            watcher = threading.Thread(target=lambda: asyncio.run(
                _watch(nats_server.url, STREAM, api, procs, stop, samples)), daemon=True)
            watcher.start()
            result: dict = {}
            runner = threading.Thread(target=lambda: result.update(_loadgen(
                api, key, url, nats_server, "http-async", devices, speedup, duration, batch_size, concurrency, tmp)))
            started = time.monotonic()
            runner.start()
            time.sleep(outage_at_s)
            cut_at = time.monotonic() - started
            proxy.cut()
            time.sleep(outage_s)
            proxy.restore()
            restored_at = time.monotonic() - started
            runner.join()
            stop.set()
            watcher.join(10)
    finally:
        for w in procs:
            w.stop()
        proxy.close()
    return {**_outage_figures(samples, cut_at, restored_at, speedup, devices), "writers": writers,
            "outage_s": round(restored_at - cut_at, 1), "sent": result.get("sent"), "accepted": result.get("accepted"),
            "failed": result.get("failed"), "rejected": result.get("rejected"),
            "errors_by_status": result.get("errors_by_status"),
            "device_visible_errors": (result.get("failed") or 0) + (result.get("rejected") or 0)
            + sum((result.get("errors_by_status") or {}).values()),
            "verified": bool(result.get("verification", {}).get("passed")),
            "problems": result.get("verification", {}).get("problems", [])[:5], "stored": _stored_rows(url)}


def _outage_figures(samples: list[dict], cut_at: float, restored_at: float, speedup: float, devices: int) -> dict:
    """Backlog at the database's return and how fast the writers worked it off, against arrivals."""
    good = [s for s in samples if "error" not in s]
    arrival = 2 * devices * speedup / 60
    at_restore = min(good, key=lambda s: abs(s["t"] - restored_at), default=None)
    if at_restore is None:
        return {"arrival_rows_per_s": round(arrival, 1)}
    backlog_rows = at_restore["published"] - at_restore["committed"]
    after = [s for s in good if s["t"] >= at_restore["t"]]
    # Drained: committed caught up with published (to within one batch in flight).
    drained = next((s for s in after if s["published"] - s["committed"] <= 0.01 * backlog_rows + 1000), None)
    peak = max((s["backlog_messages"] for s in good), default=0)
    figures = {"arrival_rows_per_s": round(arrival, 1), "backlog_rows_at_restore": int(backlog_rows),
               "backlog_messages_peak": peak, "cut_at_s": round(cut_at, 1), "restored_at_s": round(restored_at, 1)}
    if drained is not None and drained["t"] > at_restore["t"]:
        span = drained["t"] - at_restore["t"]
        rate = (drained["committed"] - at_restore["committed"]) / span
        arrivals = (drained["published"] - at_restore["published"]) / span
        figures.update(drain_s=round(span, 1), commit_rows_per_s_while_draining=round(rate, 1),
                       arrival_rows_per_s_while_draining=round(arrivals, 1),
                       drain_over_arrival=round(rate / arrivals, 2) if arrivals else None)
    return figures


async def _empty_log(nats_server: NatsServer, delete_consumer: bool) -> None:
    """Purges the log (and deletes the writers' consumer), so that nothing of an earlier measurement
    reaches the next one's database: a consumer deleted while NATS has not yet processed every ack
    leaves those messages deliverable again."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.purge_stream(STREAM)
        if delete_consumer:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(STREAM, CONSUMER)
    finally:
        await nc.close()


def _writer_capacity(nats_server: NatsServer, messages: int, writers: int, fresh_consumer: bool = True) -> dict:
    """How fast writers drain MQTT-shaped messages (one reading each, on device subjects) from a log filled
    beforehand, with no device sending meanwhile: the platform's side of the MQTT path, apart from the
    MQTT clients that share these cores in the runs above. With `fresh_consumer`, the writers' consumer
    is deleted first (the writers create it again), so that no earlier drain weighs on this one; without,
    the consumer goes on from the previous drain, as a long-running deployment's does."""
    asyncio.run(_empty_log(nats_server, delete_consumer=fresh_consumer))
    url = fresh_database(DATABASE)
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=5)
    devices = 2000

    async def fill() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        pending = []
        for i in range(messages):
            meter = f"MTR-{i % devices:05d}"
            body = msgspec.json.encode({"meterId": meter, "kwhConsumedAc": 0.01, "voltage": 230.0,
                                        "timestamp": base + timedelta(minutes=i // devices)})
            pending.append(await js.publish_async(f"telemetry.meters.{meter}", body))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        await nc.close()

    asyncio.run(fill())
    started = time.perf_counter()
    procs = [WriterProcess(url, nats_server.url) for _ in range(writers)]
    try:
        while _stored_rows(url) < messages and time.perf_counter() - started < 600:
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.stop()
    stored = _stored_rows(url)
    # The writers have sent an ack for every message they committed; NATS may still be working through
    # them (each takes the message out of the work-queue stream). Until it has, those messages count
    # as unacknowledged against the consumer's max_ack_pending.
    backlog, acks_s = asyncio.run(_ack_backlog(nats_server))
    return {"messages": messages, "writers": writers, "fresh_consumer": fresh_consumer, "stored": stored,
            "seconds_with_start": round(elapsed, 1), "messages_per_s": round(stored / elapsed),
            "acks_pending_when_stored": backlog, "acks_processed_after_s": acks_s,
            "acks_per_s_after": round(backlog / acks_s) if backlog and acks_s else None}


# (subjects, message bytes): one subject per device is what the partition mapping avoids.
ACK_CASES = [(2, 150), (256, 150), (1024, 150), (20_000, 150), (20_000, 180)]


async def _ack_rate(nats_server: NatsServer, subjects: int, size: int, messages: int = 100_000) -> dict:
    """How fast NATS takes acknowledged messages out of a work-queue stream (file storage, the log's size
    limit) whose messages are spread round-robin over `subjects` subjects: one consumer fetches 5,000 at
    a time and acks each; the time runs until the stream is empty. NATS 2.9's file store slows down once
    a subject has three or more messages in a block (an 8 MB block holds about 2.8 messages of 150 bytes
    per subject of 20,000, 2.3 of 180 bytes)."""
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    name = "BENCH_ACKS"
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(name)
    await js.add_stream(StreamConfig(name=name, subjects=["benchacks.>"], retention=RetentionPolicy.WORK_QUEUE,
                                     storage=StorageType.FILE, max_bytes=4 * 1024**3))
    try:
        body = b"x" * size
        for start in range(0, messages, 2000):
            await asyncio.gather(*[js.publish(f"benchacks.{i % subjects}", body)
                                   for i in range(start, min(start + 2000, messages))])
        sub = await js.pull_subscribe("benchacks.>", durable="acks",
                                      config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=80_000))
        started = time.perf_counter()
        taken = 0
        while taken < messages:
            batch = await sub.fetch(5000, timeout=30)
            for msg in batch:
                await msg.ack()
            taken += len(batch)
        while (await js.stream_info(name)).state.messages and time.perf_counter() - started < 300:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        return {"subjects": subjects, "message_bytes": size, "messages": messages, "seconds": round(elapsed, 2),
                "acks_per_s": round(messages / elapsed)}
    finally:
        await js.delete_stream(name)
        await nc.close()


async def _ack_backlog(nats_server: NatsServer, limit_s: float = 300.0) -> tuple[int, float]:
    """The consumer's unacknowledged messages now, and how long NATS takes to bring them to zero."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        started = time.perf_counter()
        first = pending = (await js.consumer_info(STREAM, CONSUMER)).num_ack_pending or 0
        while pending and time.perf_counter() - started < limit_s:
            await asyncio.sleep(0.1)
            pending = (await js.consumer_info(STREAM, CONSUMER)).num_ack_pending
        return first, round(time.perf_counter() - started, 1)
    finally:
        await nc.close()


def run(devices: int, speedup: float, duration: str, batch_size: int, concurrency: int, mqtt_connections: int,
        outage_duration: str, outage_at_s: float = 15.0, outage_s: float = 20.0,
        paths: list[tuple[str, str, int, int]] | None = None) -> dict:
    result: dict = {"devices": 2 * devices, "speedup": speedup, "duration": duration, "batch_size": batch_size,
                    "concurrency": concurrency, "mqtt_connections": mqtt_connections,
                    "target_rows_per_s": round(2 * devices * speedup / 60, 1), "paths": []}
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        nats_server = NatsServer(Path(tmp) / "nats")
        try:
            for label, transport, writers, report_every in paths or PATHS:
                print(f"stream: {label} ...", flush=True)
                figures = _one_path(nats_server, transport, writers, devices, speedup, duration, batch_size,
                                    mqtt_connections if transport == "mqtt" else concurrency, Path(tmp),
                                    report_every)
                result["paths"].append({"path": label, **figures})
            sync = next((p for p in result["paths"] if p["transport"] == "http"), None)
            for p in result["paths"]:
                p["ratio_to_sync"] = (round(p["stored_rows_per_s"] / sync["stored_rows_per_s"], 3)
                                      if sync and sync["stored_rows_per_s"] else None)
            print("stream: writer capacity for one-reading messages (a log filled beforehand) ...", flush=True)
            # One writer and two, each on a fresh consumer; then one writer again on the consumer the two
            # writers left (it has acknowledged 100,000 messages).
            result["writer_capacity"] = [_writer_capacity(nats_server, 100_000, n, fresh)
                                         for n, fresh in ((1, True), (2, True), (1, False))]
            asyncio.run(_empty_log(nats_server, delete_consumer=True))
            print("stream: NATS's ack rate by subject count ...", flush=True)
            result["ack_rate_by_subjects"] = [asyncio.run(_ack_rate(nats_server, n, size)) for n, size in ACK_CASES]
            if outage_s > 0:
                print(f"stream: {outage_s:g} s database outage under async HTTP ...", flush=True)
                result["outage"] = _outage(nats_server, 2, devices, speedup, outage_duration, batch_size, concurrency,
                                           outage_at_s, outage_s, Path(tmp))
        finally:
            nats_server.stop()
    return result


def print_tables(console, r: dict) -> None:
    from rich.table import Table

    table = Table(title=f"Stream ingestion: {r['devices']:,} devices at {r['speedup']:g}x "
                        f"({r['target_rows_per_s']:,} readings/s offered) for {r['duration']}, each run verified "
                        f"(goals: >= 0.9 of sync rows/s, lag p99 <= 2 s)")
    for column in ("way in", "sent rows/s", "stored rows/s", "ratio to sync", "drain after run s", "lag p50 s",
                   "lag p99 s", "request/PUBACK p99 ms", "failed", "verification"):
        table.add_column(column, justify="right")
    for p in r["paths"]:
        lag = p["lag"] or {}
        table.add_row(p["path"], f"{p['sender_rows_per_s'] or 0:,}", f"{p['stored_rows_per_s']:,}",
                      f"{p['ratio_to_sync']:.2f}" if p["ratio_to_sync"] is not None else "",
                      str(p["drain_after_run_s"]) if p["writers"] else "",
                      str(lag.get("p50_s", "")), str(lag.get("p99_s", "")),
                      str((p["request_latency_ms"] or {}).get("p99", "")), f"{p['failed'] or 0:,}",
                      "passed" if p["verified"] else f"FAILED (database kept: {p['kept_database']})")
    console.print(table)
    table = Table(title="CPU by role while the devices send (the load generator's run, drain excluded), in cores of "
                        f"the machine's {os.cpu_count()}")
    table.add_column("way in", justify="right")
    for role in ROLES:
        table.add_column(role, justify="right")
    for p in r["paths"]:
        cpu = p.get("cpu_cores_by_role") or {}
        table.add_row(p["path"], *(f"{cpu[role]:.2f}" if role in cpu else "" for role in ROLES))
    console.print(table)
    if r.get("writer_capacity"):
        table = Table(title="Writers draining one-reading (MQTT-shaped) messages from a log filled beforehand, "
                            "no device sending: the platform's side of the MQTT path (the time includes the "
                            "writers' start)")
        for column in ("writers", "consumer", "messages", "stored", "seconds", "messages/s",
                       "acks NATS had not processed when all was stored", "then processed in s", "acks/s"):
            table.add_column(column, justify="right")
        for c in r["writer_capacity"]:
            table.add_row(str(c["writers"]), "fresh" if c.get("fresh_consumer", True) else "after the drain above",
                          f"{c['messages']:,}", f"{c['stored']:,}", str(c["seconds_with_start"]),
                          f"{c['messages_per_s']:,}", f"{c.get('acks_pending_when_stored', 0):,}",
                          str(c.get("acks_processed_after_s", "")),
                          f"{c['acks_per_s_after']:,}" if c.get("acks_per_s_after") else "")
        console.print(table)
    if r.get("ack_rate_by_subjects"):
        table = Table(title="NATS alone: acknowledged messages taken out of a work-queue stream, by how many subjects "
                            "they are spread over (one consumer, fetch 5,000 and ack each)")
        for column in ("subjects", "message bytes", "messages", "seconds", "acks/s"):
            table.add_column(column, justify="right")
        for a in r["ack_rate_by_subjects"]:
            table.add_row(f"{a['subjects']:,}", str(a["message_bytes"]), f"{a['messages']:,}", str(a["seconds"]),
                          f"{a['acks_per_s']:,}")
        console.print(table)
    o = r.get("outage")
    if o:
        table = Table(title=f"{o['outage_s']} s database outage (the writers' connections cut) under async HTTP at "
                            f"{r['speedup']:g}x, {o['writers']} writers (goals: 0 device-visible errors, drain >= 2x "
                            "arrival)")
        for column in ("device-visible errors", "backlog at return (readings)", "backlog peak (messages)",
                       "drain s", "commit rows/s while draining", "arrival rows/s", "drain / arrival", "verification"):
            table.add_column(column, justify="right")
        table.add_row(f"{o['device_visible_errors']:,}", f"{o.get('backlog_rows_at_restore', 0):,}",
                      f"{o.get('backlog_messages_peak', 0):,}", str(o.get("drain_s", "not drained")),
                      f"{o.get('commit_rows_per_s_while_draining', 0):,}",
                      f"{o.get('arrival_rows_per_s_while_draining', o['arrival_rows_per_s']):,}",
                      str(o.get("drain_over_arrival", "")), "passed" if o["verified"] else "FAILED")
        console.print(table)
