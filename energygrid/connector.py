"""EnergyGrid pull connector: fetches every device at the vendor's rate limit (one global limiter,
signed requests, batches of 10), stores the readings through the platform's write path with
(serial, last_updated) as identity, and writes a JSON export and a text report for each run."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import stamina
from aiolimiter import AsyncLimiter

# Retries are counted in the run's report; stamina's default hook would log each one.
stamina.instrumentation.set_on_retry_hooks([])

from energygrid.protocol import DEFAULT_TOKEN, MAX_SERIALS, QUERY_PATH, serials, sign

BATCH_SIZE = MAX_SERIALS


class RetryableResponse(Exception):
    """429 or 5xx: worth another try after a pause."""


class VendorRejected(Exception):
    """401 or 400: retrying the same request cannot help."""


class TooManyFailures(Exception):
    """A run of consecutive failures: stop instead of hammering the vendor."""


@dataclass(frozen=True)
class PullConfig:
    url: str
    token: str = DEFAULT_TOKEN
    serials: tuple[str, ...] = tuple(serials())
    min_interval_s: float = 1.02
    """Spacing between requests; the vendor allows one a second, a little margin absorbs jitter."""
    in_flight: int = 3
    timeout_s: float = 5.0
    attempts: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    max_consecutive_failures: int = 10


@dataclass
class PullStats:
    statuses: Counter = field(default_factory=Counter)
    network_errors: int = 0
    retries: int = 0
    consecutive_failures: int = 0
    failed_batches: list[list[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeviceReading:
    serial: str
    power_kw: float
    online: bool
    last_updated: datetime


def parse_device(item: dict) -> DeviceReading:
    value, _, unit = str(item["power"]).strip().partition(" ")
    power = float(value) * (1000.0 if unit.strip().lower() == "mw" else 1.0)
    updated = datetime.fromisoformat(str(item["last_updated"]).replace("Z", "+00:00"))
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=UTC)
    return DeviceReading(item["sn"], power, item["status"] == "Online", updated)


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
            stats.consecutive_failures = 0
            return [parse_device(item) for item in response.json().get("data", [])]
    raise AssertionError("unreachable")


def _failed(stats: PullStats, config: PullConfig, message: str) -> None:
    stats.consecutive_failures += 1
    stats.errors.append(message)
    if stats.consecutive_failures >= config.max_consecutive_failures:
        raise TooManyFailures(f"{stats.consecutive_failures} consecutive failures, last: {message}; stopping")


async def fetch_all(config: PullConfig, stats: PullStats) -> dict[str, DeviceReading]:
    """Every device, in batches of 10, at most one request per min_interval_s across the whole run."""
    limiter = AsyncLimiter(1, config.min_interval_s)
    batches = [list(config.serials[i:i + BATCH_SIZE]) for i in range(0, len(config.serials), BATCH_SIZE)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
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
        except TooManyFailures:
            for task in workers:
                task.cancel()
            raise
    return readings


def store(conninfo: str, readings: list[DeviceReading]) -> tuple[int, int]:
    """Through the platform's write path: COPY into staging, then the SQL ingest function."""
    with psycopg.connect(conninfo) as conn, conn.transaction():
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
class PullReport:
    started_at: datetime
    duration_s: float
    requested: int
    readings: list[DeviceReading]
    missing: list[str]
    stats: PullStats
    inserted: int
    duplicates: int
    aborted: str | None

    def text(self) -> str:
        online = [r for r in self.readings if r.online]
        peak = max(online, key=lambda r: r.power_kw, default=None)
        total = sum(r.power_kw for r in online)
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.stats.statuses.items())) or "none"
        lines = [
            f"EnergyGrid pull at {self.started_at.isoformat(timespec='seconds')}",
            f"devices: {self.requested} requested, {len(self.readings)} fetched, {len(self.missing)} missing",
            f"online: {len(online)}, offline: {len(self.readings) - len(online)}",
            f"power (online devices): total {total:.2f} kW, mean {total / len(online) if online else 0:.2f} kW, "
            f"peak {peak.power_kw if peak else 0:.2f} kW{f' ({peak.serial})' if peak else ''}",
            f"stored: {self.inserted} new readings, {self.duplicates} already stored",
            f"requests: {sum(self.stats.statuses.values())} answered ({statuses}), "
            f"{self.stats.network_errors} network errors, {self.stats.retries} retries",
            f"failures: {len(self.stats.errors)}" + (f" (last: {self.stats.errors[-1]})" if self.stats.errors else ""),
            f"duration: {self.duration_s:.1f} s",
        ]
        if self.missing:
            lines.append(f"unfetched devices: {', '.join(self.missing[:20])}{' ...' if len(self.missing) > 20 else ''}")
        if self.aborted:
            lines.append(f"ABORTED: {self.aborted}")
        return "\n".join(lines)

    def export(self) -> dict:
        return {
            "started_at": self.started_at.isoformat(), "duration_s": round(self.duration_s, 3),
            "requested": self.requested, "fetched": len(self.readings), "missing": self.missing,
            "inserted": self.inserted, "duplicates": self.duplicates, "aborted": self.aborted,
            "statuses": {str(k): v for k, v in self.stats.statuses.items()}, "retries": self.stats.retries,
            "network_errors": self.stats.network_errors,
            "devices": [{"sn": r.serial, "power_kw": r.power_kw, "status": "Online" if r.online else "Offline",
                         "last_updated": r.last_updated.isoformat()} for r in self.readings],
        }


def pull_once(config: PullConfig, conninfo: str, out_dir: Path | None) -> PullReport:
    started_at, started = datetime.now(UTC), time.monotonic()
    stats = PullStats()
    aborted = None
    try:
        fetched = asyncio.run(fetch_all(config, stats))
    except TooManyFailures as exc:
        fetched, aborted = {}, str(exc)
    readings = sorted(fetched.values(), key=lambda r: r.serial)
    inserted, duplicates = store(conninfo, readings) if readings else (0, 0)
    report = PullReport(started_at, time.monotonic() - started, len(config.serials), readings,
                        [s for s in config.serials if s not in fetched], stats, inserted, duplicates, aborted)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
        (out_dir / f"energygrid-{stamp}.json").write_text(json.dumps(report.export(), indent=2))
        (out_dir / f"energygrid-{stamp}.txt").write_text(report.text() + "\n")
    return report
