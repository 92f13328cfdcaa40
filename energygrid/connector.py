"""EnergyGrid pull connector: fetches every device at the vendor's rate limit (one global limiter,
signed requests, batches of 10), stores the readings through the platform's write path with
(serial, last_updated) as identity, and writes a JSON export and a text report for each run. A
malformed item is counted and skipped, a run of failures stops the fetching but not the storing, and
readings the database cannot take yet wait in memory for the next cycle."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import psycopg
import stamina
from aiolimiter import AsyncLimiter

from energygrid.protocol import (DEFAULT_TOKEN, MAX_SERIALS, QUERY_PATH, DeviceReading, MalformedItem, QueryAnswer,
                                 parse_device, serials, sign)

# Retries are counted in the run's report; stamina's default hook would log each one.
stamina.instrumentation.set_on_retry_hooks([])

log = logging.getLogger("energygrid")

BATCH_SIZE = MAX_SERIALS
LISTED_MALFORMED = 50
"""Malformed items listed one by one in a report (all of them are counted)."""


class RetryableResponse(Exception):
    """429, 5xx or an unreadable answer: worth another try after a pause."""


class VendorRejected(Exception):
    """401 or 400: retrying the same request cannot help."""


class TooManyFailures(Exception):
    """A run of consecutive failures: stop instead of hammering the vendor."""


@dataclass(frozen=True)
class PullConfig:
    url: str
    token: str = DEFAULT_TOKEN
    devices: int = 500
    """The serials SN-000 onwards to fetch."""
    min_interval_s: float = 1.02
    """Spacing between requests; the vendor allows one a second, a little margin absorbs jitter."""
    in_flight: int = 3
    timeout_s: float = 5.0
    attempts: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    max_consecutive_failures: int = 10
    store_timeout_s: float = 30.0
    """How long one cycle retries a database that is away before keeping its readings for the next cycle."""
    store_backoff_initial_s: float = 0.2
    store_backoff_max_s: float = 5.0
    max_waiting: int = 1_000_000
    """Readings kept in memory while the database is away (days of 500 devices a minute); past this the
    oldest are dropped, and counted in the report."""

    @property
    def serials(self) -> list[str]:
        return serials(self.devices)


@dataclass
class PullStats:
    statuses: Counter = field(default_factory=Counter)
    network_errors: int = 0
    retries: int = 0
    consecutive_failures: int = 0
    failed_batches: list[list[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    malformed: Counter = field(default_factory=Counter)
    """Malformed items by reason."""
    malformed_items: list[dict] = field(default_factory=list)
    """The first LISTED_MALFORMED of them: serial (when usable), reason and the item as sent."""

    def count_malformed(self, problem: MalformedItem, item: object) -> None:
        self.malformed[problem.kind] += 1
        if len(self.malformed_items) < LISTED_MALFORMED:
            self.malformed_items.append({"sn": problem.sn, "reason": str(problem), "item": item})


def _readings_of(answer: bytes, batch: list[str], stats: PullStats) -> list[DeviceReading]:
    """The good items of a 200 answer; the malformed ones are counted and skipped."""
    asked = set(batch)
    readings = []
    for item in msgspec.json.decode(answer, type=QueryAnswer).data:
        try:
            reading = parse_device(item)
            if reading.serial not in asked:
                raise MalformedItem("sn", "not asked for", reading.serial)
        except MalformedItem as problem:
            stats.count_malformed(problem, item)
        else:
            readings.append(reading)
    return readings


async def _fetch_batch(client: httpx.AsyncClient, limiter: AsyncLimiter, config: PullConfig, stats: PullStats,
                       batch: list[str]) -> list[DeviceReading]:
    attempt_no = 0
    async for attempt in stamina.retry_context(
        on=(RetryableResponse, httpx.TransportError), attempts=config.attempts,
        wait_initial=config.backoff_initial_s, wait_max=config.backoff_max_s, wait_jitter=config.backoff_initial_s,
    ):
        with attempt:
            attempt_no += 1
            if attempt_no > 1:
                stats.retries += 1
            async with limiter:
                timestamp = str(int(time.time() * 1000))
                headers = {"timestamp": timestamp, "signature": sign(QUERY_PATH, config.token, timestamp)}
                try:
                    response = await client.post(QUERY_PATH, json={"sn_list": batch}, headers=headers)
                except httpx.TransportError as exc:
                    stats.network_errors += 1
                    _failed(stats, config, f"{type(exc).__name__} for {batch[0]}..{batch[-1]}")
                    raise
            stats.statuses[response.status_code] += 1
            if response.status_code == 429 or response.status_code >= 500:
                _failed(stats, config, f"HTTP {response.status_code} for {batch[0]}..{batch[-1]}")
                raise RetryableResponse(response.status_code)
            if response.status_code != 200:
                _failed(stats, config, f"HTTP {response.status_code}: {response.text[:200]}")
                raise VendorRejected(f"the vendor rejected the request: HTTP {response.status_code} {response.text[:200]}")
            try:
                readings = _readings_of(response.content, batch, stats)
            except msgspec.MsgspecError as exc:
                # No {"data": [...]} at all, e.g. a body cut short: the next try may get it whole.
                _failed(stats, config, f"unreadable answer for {batch[0]}..{batch[-1]}: {exc}")
                raise RetryableResponse(200) from None
            stats.consecutive_failures = 0
            return readings
    raise AssertionError("unreachable")


def _failed(stats: PullStats, config: PullConfig, message: str) -> None:
    stats.consecutive_failures += 1
    stats.errors.append(message)
    if stats.consecutive_failures >= config.max_consecutive_failures:
        raise TooManyFailures(f"{stats.consecutive_failures} consecutive failures, last: {message}; stopping")


async def fetch_all(config: PullConfig, stats: PullStats) -> tuple[dict[str, DeviceReading], str | None]:
    """Every device, in batches of 10, at most one request per min_interval_s across the whole run:
    (the readings fetched, why the fetching stopped early or None). A run of failures stops the
    fetching; what was fetched before it is returned all the same."""
    limiter = AsyncLimiter(1, config.min_interval_s)
    all_serials = config.serials
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for i in range(0, len(all_serials), BATCH_SIZE):
        queue.put_nowait(all_serials[i:i + BATCH_SIZE])
    readings: dict[str, DeviceReading] = {}

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            try:
                for reading in await _fetch_batch(client, limiter, config, stats, batch):
                    readings[reading.serial] = reading
            except (RetryableResponse, httpx.TransportError, VendorRejected):
                stats.failed_batches.append(batch)

    async with httpx.AsyncClient(base_url=config.url, timeout=config.timeout_s) as client:
        workers = [asyncio.create_task(worker(client)) for _ in range(config.in_flight)]
        try:
            await asyncio.gather(*workers)
        except TooManyFailures as exc:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            return readings, str(exc)
    return readings, None


def store(conninfo: str, readings: list[DeviceReading], connect_timeout_s: float = 5.0) -> tuple[int, int]:
    """Through the platform's write path: COPY into staging, then the SQL ingest function.
    (inserted, duplicates); storing the same readings again inserts nothing."""
    # libpq counts connect_timeout in whole seconds, 2 at least.
    with psycopg.connect(conninfo, connect_timeout=max(2, round(connect_timeout_s))) as conn, conn.transaction():
        conn.execute("SELECT telemetry.prepare_energygrid_staging()")
        with conn.cursor().copy(
            "COPY pg_temp.energygrid_staging (serial, last_updated, power_kw, online) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "timestamptz", "float8", "bool"])
            for r in readings:
                copy.write_row((r.serial, r.last_updated, r.power_kw, r.online))
        inserted, duplicates = conn.execute("SELECT * FROM telemetry.ingest_energygrid_staging()").fetchone()
    return inserted, duplicates


@dataclass
class Waiting:
    """Readings fetched but not stored yet, kept from one cycle to the next while the database is away.
    Keyed by identity (serial, last_updated): a reading fetched again while it waits is kept once."""

    limit: int
    readings: dict[tuple[str, datetime], DeviceReading] = field(default_factory=dict)
    dropped: int = 0
    """Readings given up (the oldest first) because more than `limit` were waiting."""

    def add(self, readings: list[DeviceReading]) -> None:
        for reading in readings:
            self.readings[(reading.serial, reading.last_updated)] = reading
        while len(self.readings) > self.limit:
            del self.readings[next(iter(self.readings))]
            self.dropped += 1

    def __len__(self) -> int:
        return len(self.readings)


@dataclass
class StoreOutcome:
    inserted: int = 0
    duplicates: int = 0
    carried_over: int = 0
    """Readings of earlier cycles that waited for the database and were part of this write."""
    attempts: int = 0
    error: str | None = None
    """Why nothing was stored (the database stayed away for store_timeout_s, or refused the write)."""
    waiting: int = 0
    """Readings kept for the next cycle."""


def store_waiting(config: PullConfig, conninfo: str, waiting: Waiting) -> StoreOutcome:
    """Writes every waiting reading, retrying with backoff while the database is away (OperationalError:
    refused or lost connections, restarts, timeouts) for at most store_timeout_s. On success the waiting
    readings are gone; on failure they stay for the next call. Never raises a database error."""
    outcome = StoreOutcome()
    if not waiting:
        return outcome
    readings = sorted(waiting.readings.values(), key=lambda r: (r.serial, r.last_updated))
    try:
        for attempt in stamina.retry_context(
            on=psycopg.OperationalError, attempts=None, timeout=config.store_timeout_s,
            wait_initial=config.store_backoff_initial_s, wait_max=config.store_backoff_max_s,
            wait_jitter=config.store_backoff_initial_s,
        ):
            with attempt:
                outcome.attempts += 1
                outcome.inserted, outcome.duplicates = store(conninfo, readings, min(config.store_timeout_s, 10))
    except psycopg.Error as exc:
        outcome.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        outcome.waiting = len(waiting)
        return outcome
    waiting.readings.clear()
    return outcome


@dataclass
class PullReport:
    started_at: datetime
    duration_s: float
    requested: int
    readings: list[DeviceReading]
    missing: list[str]
    stats: PullStats
    stored: StoreOutcome
    aborted: str | None
    dropped: int = 0
    """Waiting readings given up so far because too many waited (Waiting.limit)."""

    @property
    def inserted(self) -> int:
        return self.stored.inserted

    @property
    def duplicates(self) -> int:
        return self.stored.duplicates

    @property
    def malformed(self) -> int:
        return sum(self.stats.malformed.values())

    @property
    def exit_status(self) -> int:
        """1 when devices were left unfetched or the readings could not be stored, else 0."""
        return 1 if self.missing or self.stored.error else 0

    def _stored_line(self) -> str:
        s = self.stored
        carried = f" ({s.carried_over} carried over from earlier cycles)" if s.carried_over else ""
        if s.error:
            return (f"stored: NOT YET, the database failed after {s.attempts} attempt(s): {s.error}; "
                    f"{s.waiting} readings kept for the next cycle{carried}")
        return f"stored: {s.inserted} new readings, {s.duplicates} already stored{carried}"

    def text(self) -> str:
        online = [r for r in self.readings if r.online]
        peak = max(online, key=lambda r: r.power_kw, default=None)
        total = sum(r.power_kw for r in online)
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.stats.statuses.items())) or "none"
        malformed = ", ".join(f"{kind}: {n}" for kind, n in self.stats.malformed.most_common())
        lines = [
            f"EnergyGrid pull at {self.started_at.isoformat(timespec='seconds')}",
            f"devices: {self.requested} requested, {len(self.readings)} fetched, {len(self.missing)} missing",
            f"malformed items: {self.malformed}" + (f" ({malformed})" if malformed else ""),
            f"online: {len(online)}, offline: {len(self.readings) - len(online)}",
            f"power (online devices): total {total:.2f} kW, mean {total / len(online) if online else 0:.2f} kW, "
            f"peak {peak.power_kw if peak else 0:.2f} kW{f' ({peak.serial})' if peak else ''}",
            self._stored_line(),
            f"requests: {sum(self.stats.statuses.values())} answered ({statuses}), "
            f"{self.stats.network_errors} network errors, {self.stats.retries} retries",
            f"failures: {len(self.stats.errors)}" + (f" (last: {self.stats.errors[-1]})" if self.stats.errors else ""),
            f"duration: {self.duration_s:.1f} s",
        ]
        if self.dropped:
            lines.append(f"DROPPED: {self.dropped} readings that waited too long for the database")
        if self.missing:
            lines.append(f"unfetched devices: {', '.join(self.missing[:20])}{' ...' if len(self.missing) > 20 else ''}")
        if self.aborted:
            lines.append(f"ABORTED: {self.aborted}")
        return "\n".join(lines)

    def export(self) -> dict:
        return {
            "started_at": self.started_at.isoformat(), "duration_s": round(self.duration_s, 3),
            "requested": self.requested, "fetched": len(self.readings), "missing": self.missing,
            "malformed": self.malformed, "malformed_reasons": dict(self.stats.malformed),
            "malformed_items": self.stats.malformed_items,
            "inserted": self.inserted, "duplicates": self.duplicates, "carried_over": self.stored.carried_over,
            "store_attempts": self.stored.attempts, "store_error": self.stored.error,
            "waiting": self.stored.waiting, "dropped": self.dropped, "aborted": self.aborted,
            "statuses": {str(k): v for k, v in self.stats.statuses.items()}, "retries": self.stats.retries,
            "network_errors": self.stats.network_errors,
            "devices": [{"sn": r.serial, "power_kw": r.power_kw, "status": "Online" if r.online else "Offline",
                         "last_updated": r.last_updated.isoformat()} for r in self.readings],
        }


def pull_once(config: PullConfig, conninfo: str, out_dir: Path | None, waiting: Waiting | None = None) -> PullReport:
    """One cycle: fetch every device, store what was fetched (with what earlier cycles could not
    store, in `waiting`), write the export and the report."""
    started_at, started = datetime.now(UTC), time.monotonic()
    waiting = waiting if waiting is not None else Waiting(config.max_waiting)
    stats = PullStats()
    fetched, aborted = asyncio.run(fetch_all(config, stats))
    readings = sorted(fetched.values(), key=lambda r: r.serial)
    carried_over = len(waiting.readings.keys() - {(r.serial, r.last_updated) for r in readings})
    waiting.add(readings)
    stored = store_waiting(config, conninfo, waiting)
    stored.carried_over = carried_over if not stored.error else 0
    all_serials = config.serials
    report = PullReport(started_at, time.monotonic() - started, len(all_serials), readings,
                        [s for s in all_serials if s not in fetched], stats, stored, aborted, waiting.dropped)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = f"{started_at:%Y%m%dT%H%M%S}.{started_at.microsecond // 1000:03d}Z"
        (out_dir / f"energygrid-{stamp}.json").write_text(json.dumps(report.export(), indent=2))
        (out_dir / f"energygrid-{stamp}.txt").write_text(report.text() + "\n")
    return report


def poll(config: PullConfig, conninfo: str, out_dir: Path | None, every_s: float | None = None,
         cycles: int | None = None) -> int:
    """Pull once and return the exit status (PullReport.exit_status); with every_s, pull every every_s
    seconds forever (or `cycles` times). Polling outlives the database: readings it cannot take wait
    for the next cycle, and no error ends the loop."""
    waiting = Waiting(config.max_waiting)
    done = 0
    while True:
        started = time.monotonic()
        status = 1
        try:
            report = pull_once(config, conninfo, out_dir, waiting)
            print(report.text(), flush=True)
            status = report.exit_status
        except Exception:
            if not every_s:
                raise
            # A poller that dies is worse than a missed cycle: say why and try again next time.
            log.exception("EnergyGrid pull failed; polling goes on")
        done += 1
        if not every_s or (cycles is not None and done >= cycles):
            return status
        time.sleep(max(0.0, every_s - (time.monotonic() - started)))
