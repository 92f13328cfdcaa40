"""Sends readings to the platform in batches with bounded concurrency, retries 429/503/connection
errors with backoff and jitter (honouring Retry-After), and keeps the run's statistics."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import msgspec

RETRYABLE_STATUS = {429, 502, 503, 504}
_JSON = {"Content-Type": "application/json"}


@dataclass
class Stats:
    sent: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0
    # Readings of batches accepted after an attempt was cut (connection lost before the answer): that
    # attempt may have committed, and then the accepted retry counts them as duplicates, not inserted.
    ambiguous: int = 0
    requests: int = 0
    retries: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def report(self) -> dict:
        elapsed = time.monotonic() - self.started
        return {
            "sent": self.sent, "inserted": self.inserted, "duplicates": self.duplicates,
            "rejected": self.rejected, "failed": self.failed, "ambiguous": self.ambiguous,
            "requests": self.requests, "retries": self.retries,
            "elapsed_s": round(elapsed, 2), "rows_per_s": round(self.sent / elapsed, 1) if elapsed else 0.0,
            "latency_ms": {f"p{int(q * 100)}": round(self.percentile(q) * 1000, 1) for q in (0.5, 0.95, 0.99)},
            "errors_by_status": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))
                                 if k != 200},
        }


class Sender:
    def __init__(self, url: str, api_key: str, concurrency: int, max_attempts: int = 8) -> None:
        self.client = httpx.AsyncClient(base_url=url, timeout=30, headers={"Authorization": f"Bearer {api_key}"},
                                        limits=httpx.Limits(max_connections=concurrency))
        self.slots = asyncio.Semaphore(concurrency)
        self.max_attempts = max_attempts
        self.stats = Stats()
        self.rng = random.Random()
        self.tasks: set[asyncio.Task] = set()

    async def request(self, method: str, path: str, body: object | bytes) -> httpx.Response:
        """One call with retries; raises after max_attempts. `body` is JSON-encoded unless already bytes."""
        response, _ = await self._attempts(method, path, body)
        return response

    async def _attempts(self, method: str, path: str, body: object | bytes) -> tuple[httpx.Response, bool]:
        """The retry loop; also says whether an attempt was cut before its answer."""
        cut = False
        delay = 0.2
        content = body if isinstance(body, bytes) else msgspec.json.encode(body)
        for attempt in range(1, self.max_attempts + 1):
            try:
                t0 = time.perf_counter()
                response = await self.client.request(method, path, content=content, headers=_JSON)
                self.stats.latencies.append(time.perf_counter() - t0)
                self.stats.requests += 1
                self.stats.statuses[response.status_code] += 1
                if response.status_code not in RETRYABLE_STATUS:
                    return response, cut
                wait = float(response.headers.get("retry-after") or delay)
            except httpx.TransportError:
                cut = True
                self.stats.statuses["connection_error"] += 1
                wait = delay
            if attempt == self.max_attempts:
                break
            self.stats.retries += 1
            await asyncio.sleep(wait + self.rng.uniform(0, delay))
            delay = min(delay * 2, 10.0)
        raise RuntimeError(f"{method} {path}: gave up after {self.max_attempts} attempts")

    async def _send_batch(self, body: bytes, rows: int) -> None:
        try:
            response, cut = await self._attempts("POST", "/v1/telemetry", body)
        except RuntimeError:
            self.stats.failed += rows
            return
        finally:
            self.slots.release()
        if response.status_code == 200:
            if cut:
                self.stats.ambiguous += rows
            result = response.json()
            self.stats.inserted += result["inserted"]
            self.stats.duplicates += result["duplicates"]
        else:
            self.stats.rejected += rows

    async def submit(self, body: bytes, rows: int) -> None:
        """Waits for a free slot, then sends a JSON-encoded batch of `rows` readings in the background."""
        await self.slots.acquire()
        self.stats.sent += rows
        task = asyncio.create_task(self._send_batch(body, rows))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks))

    async def close(self) -> None:
        await self.drain()
        await self.client.aclose()
