"""Waits until the platform's writers have drained its log: asks NATS itself (JetStream's consumer
info), the exact answer, rather than the writers' metrics, which lag by seconds."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors
import nats.js.errors
from rich.console import Console

STREAM = "TELEMETRY"
CONSUMER = "writers"
# Drained twice in a row this far apart: a message the broker acknowledged to an MQTT device may reach
# the stream an instant after the acknowledgement.
SETTLE_S = 1.0


async def wait_drained(nats_url: str, timeout_s: float, console: Console, stream: str = STREAM,
                       consumer: str = CONSUMER) -> dict:
    """Returns once the writers' consumer has nothing pending and nothing unacknowledged (or after
    timeout_s): {"drained": bool, "backlog_at_start": messages, "wait_s": seconds}."""
    nc = await nats.connect(nats_url, name="loadgen-drain", connect_timeout=5, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.5)
    js = nc.jetstream(timeout=10)
    started = last_print = time.monotonic()
    drained_since: float | None = None
    first_backlog: int | None = None
    try:
        while True:
            try:
                info = await js.consumer_info(stream, consumer)
            except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as exc:
                info, drained_since = None, None
                console.print(f"drain: consumer info unavailable ({type(exc).__name__}); retrying")
            now = time.monotonic()
            if info is not None:
                pending, ack_pending = info.num_pending or 0, info.num_ack_pending or 0
                first_backlog = pending + ack_pending if first_backlog is None else first_backlog
                if pending == 0 and ack_pending == 0:
                    drained_since = drained_since or now
                    if now - drained_since >= SETTLE_S:
                        return {"drained": True, "backlog_at_start": first_backlog,
                                "wait_s": round(now - started - SETTLE_S, 2)}
                else:
                    drained_since = None
                if now - last_print >= 5:
                    console.print(f"drain: {pending:,} messages pending, {ack_pending:,} being written "
                                  f"({now - started:.0f} s)")
                    last_print = now
            if now - started > timeout_s:
                return {"drained": False, "backlog_at_start": first_backlog, "wait_s": round(now - started, 2)}
            await asyncio.sleep(0.25)
    finally:
        await nc.close()

