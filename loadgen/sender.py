"""Sends readings to the platform in batches with bounded concurrency, retries 429/503/connection
errors with stamina (exponential backoff and jitter, or the server's Retry-After), and keeps the run's
statistics. With `Prefer: respond-async` (the http-async transport) a batch is accepted once the
platform's log has stored it (202 {"accepted": N}); the writers commit it later."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import msgspec
import stamina

RETRYABLE_STATUS = {429, 502, 503, 504}
_JSON = {"Content-Type": "application/json"}
# Without a Retry-After: 0.2 s doubling up to 10 s. The jitter (added to Retry-After waits too) keeps the
# concurrent batches from all coming back at the same instant.
BACKOFF_INITIAL_S, BACKOFF_MAX_S, JITTER_S = 0.2, 10.0, 0.5

# Retries are counted in the run's report; stamina's default hooks would log each one over the progress bar.
stamina.instrumentation.set_on_retry_hooks([])


class RetryableAnswer(Exception):
    """A 429 or 5xx answer that another try may fix; keeps the response for its Retry-After."""

    def __init__(self, method: str, path: str, response: httpx.Response) -> None:
        super().__init__(f"{method} {path} answered {response.status_code}")
        self.response = response


def _retry_wait(exc: Exception) -> bool | float:
    """stamina's backoff hook: retry connection errors and retryable answers, after the server's
    Retry-After (in seconds) when it gave one, else after stamina's exponential backoff."""
    if isinstance(exc, httpx.TransportError):
        return True
    if not isinstance(exc, RetryableAnswer):
        return False
    try:
        after = float(exc.response.headers["retry-after"])
    except (KeyError, ValueError):
        return True
    return after + random.uniform(0, JITTER_S) if 0 <= after < math.inf else True


@dataclass
class Stats:
    sent: int = 0
    inserted: int = 0
    duplicates: int = 0
    accepted: int = 0
    """Readings the platform's log stored (202 to async HTTP, PUBACK over MQTT): committed later."""
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

    def percentiles(self) -> list[float]:
        """The 1st to 99th latency percentiles (index p - 1), interpolated between the samples."""
        if len(self.latencies) < 2:  # statistics.quantiles needs two samples
            return (self.latencies or [0.0]) * 99
        return statistics.quantiles(self.latencies, n=100, method="inclusive")

    def report(self, asynchronous: bool = False) -> dict:
        elapsed = time.monotonic() - self.started
        percentiles = self.percentiles()
        outcome = ({"accepted": self.accepted} if asynchronous
                   else {"inserted": self.inserted, "duplicates": self.duplicates})
        return {
            "sent": self.sent, **outcome,
            "rejected": self.rejected, "failed": self.failed, "ambiguous": self.ambiguous,
            "requests": self.requests, "retries": self.retries,
            "elapsed_s": round(elapsed, 2), "rows_per_s": round(self.sent / elapsed, 1) if elapsed else 0.0,
            "latency_ms": {f"p{p}": round(percentiles[p - 1] * 1000, 1) for p in (50, 95, 99)},
            "errors_by_status": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))
                                 if k not in (200, 202)},
        }


class Sender:
    def __init__(self, url: str, api_key: str, concurrency: int, max_attempts: int = 8,
                 asynchronous: bool = False) -> None:
        headers = {"Authorization": f"Bearer {api_key}", **({"Prefer": "respond-async"} if asynchronous else {})}
        self.client = httpx.AsyncClient(base_url=url, timeout=30, headers=headers,
                                        limits=httpx.Limits(max_connections=concurrency))
        self.slots = asyncio.Semaphore(concurrency)
        self.max_attempts = max_attempts
        self.stats = Stats()
        self.tasks: set[asyncio.Task] = set()

    async def request(self, method: str, path: str, body: object | bytes) -> httpx.Response:
        """One call with retries: the final answer (a 429 or 5xx one when the attempts ran out); raises
        httpx.TransportError when the last attempt got no answer. `body` is JSON-encoded unless bytes."""
        try:
            response, _ = await self._attempts(method, path, body)
        except RetryableAnswer as gave_up:
            return gave_up.response
        return response

    async def _attempts(self, method: str, path: str, body: object | bytes) -> tuple[httpx.Response, bool]:
        """The call under stamina's retries, which raise the last failure once max_attempts are spent;
        also says whether an attempt was cut before its answer (it may have been committed)."""
        cut = False
        content = body if isinstance(body, bytes) else msgspec.json.encode(body)
        async for attempt in stamina.retry_context(
            on=_retry_wait, attempts=self.max_attempts, timeout=None,
            wait_initial=BACKOFF_INITIAL_S, wait_max=BACKOFF_MAX_S, wait_jitter=JITTER_S,
        ):
            with attempt:
                if attempt.num > 1:
                    self.stats.retries += 1
                t0 = time.perf_counter()
                try:
                    response = await self.client.request(method, path, content=content, headers=_JSON)
                except httpx.TransportError:
                    cut = True
                    self.stats.statuses["connection_error"] += 1
                    raise
                self.stats.latencies.append(time.perf_counter() - t0)
                self.stats.requests += 1
                self.stats.statuses[response.status_code] += 1
                if response.status_code in RETRYABLE_STATUS:
                    raise RetryableAnswer(method, path, response)
                return response, cut
        raise AssertionError("unreachable: stamina raises the last failure")

    async def _send_batch(self, body: bytes, rows: int) -> None:
        try:
            response, cut = await self._attempts("POST", "/v1/telemetry", body)
        except (RetryableAnswer, httpx.TransportError):
            self.stats.failed += rows
            return
        finally:
            self.slots.release()
        if response.status_code == 202:
            # The log stores a retried batch once (its messages carry content ids): no ambiguity here.
            self.stats.accepted += response.json()["accepted"]
        elif response.status_code == 200:
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
