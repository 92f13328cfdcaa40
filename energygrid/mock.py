"""A mock EnergyGrid vendor cloud: signed requests, one global rate limit, at most 10 serials a
request, 500 devices with realistic power and about 10% offline, and faults on request."""

from __future__ import annotations

import asyncio
import hmac
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
from litestar import Litestar, Request, post
from litestar.response import Response

from energygrid.protocol import (DEFAULT_TOKEN, MAX_SERIALS, MIN_INTERVAL_S, QUERY_PATH, RATE_LIMIT_ERROR, serials,
                                 sign)


@dataclass
class MockConfig:
    token: str = DEFAULT_TOKEN
    devices: int = 500
    min_interval_s: float = MIN_INTERVAL_S
    fail_rate: float = 0.0
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    seed: int = 7
    report_every_s: float = 30.0
    """Online devices report a new reading this often (their last_updated moves on)."""


@dataclass
class MockState:
    config: MockConfig
    last_accepted: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    counts: dict[str, int] = field(default_factory=lambda: {"200": 0, "400": 0, "401": 0, "429": 0, "500": 0,
                                                             "dropped": 0})
    rng: random.Random = field(default_factory=random.Random)
    started: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def device(self, serial: str, now: datetime) -> dict:
        index = int(serial[3:])
        device_rng = random.Random(self.config.seed * 100_003 + index)
        offline = device_rng.random() < 0.10
        if offline:
            # An offline device's last report does not move.
            last = self.started - timedelta(hours=1 + device_rng.randrange(72), seconds=device_rng.randrange(3600))
            return {"sn": serial, "power": "0.00 kW", "status": "Offline", "last_updated": last.isoformat()}
        period = self.config.report_every_s
        slot = int(now.timestamp() // period)
        last = datetime.fromtimestamp(slot * period, UTC)
        nominal = device_rng.uniform(1.5, 11.0)
        power = max(0.0, nominal * (0.85 + 0.3 * random.Random(index * 7919 + slot).random()))
        return {"sn": serial, "power": f"{power:.2f} kW", "status": "Online", "last_updated": last.isoformat()}


class QueryBody(msgspec.Struct):
    sn_list: list[str] | None = None


def _error(status: int, message: str) -> Response:
    return Response({"error": message}, status_code=status)


def create_mock_app(config: MockConfig) -> Litestar:
    state = MockState(config, rng=random.Random(config.seed))

    @post(QUERY_PATH, status_code=200)
    async def query(request: Request) -> Response:
        # One global limit, checked on arrival, before authentication.
        async with state.lock:
            now = time.monotonic()
            if now - state.last_accepted < config.min_interval_s:
                state.counts["429"] += 1
                return _error(429, RATE_LIMIT_ERROR)
            state.last_accepted = now
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)
        timestamp, sent = request.headers.get("timestamp"), request.headers.get("signature")
        if not timestamp or not sent:
            state.counts["401"] += 1
            return _error(401, "Missing timestamp or signature header")
        if not hmac.compare_digest(sent, sign(QUERY_PATH, config.token, timestamp)):
            state.counts["401"] += 1
            return _error(401, "Invalid signature")
        try:
            body = msgspec.json.decode(await request.body(), type=QueryBody)
        except msgspec.MsgspecError:
            state.counts["400"] += 1
            return _error(400, "Body must be JSON: {\"sn_list\": [...]}")
        if not body.sn_list:
            state.counts["400"] += 1
            return _error(400, "sn_list is required")
        if len(body.sn_list) > MAX_SERIALS:
            state.counts["400"] += 1
            return _error(400, f"At most {MAX_SERIALS} serial numbers per request")
        if config.drop_rate and state.rng.random() < config.drop_rate:
            state.counts["dropped"] += 1
            request.state.drop_connection = True
            return _error(500, "dropped")
        if config.fail_rate and state.rng.random() < config.fail_rate:
            state.counts["500"] += 1
            return _error(500, "Internal Server Error")
        known = set(serials(config.devices))
        now_utc = datetime.now(UTC)
        state.counts["200"] += 1
        return Response({"data": [state.device(sn, now_utc) for sn in body.sn_list if sn in known]})

    app = Litestar(route_handlers=[query], openapi_config=None)
    app.state.mock = state
    return app


def dropping_connections(app: Litestar):
    """Closes the TCP connection instead of answering when a handler asked for it; ASGI has no call
    for that, so this reaches for the server's transport (uvicorn), and otherwise never answers."""

    async def asgi(scope, receive, send):
        async def send_or_drop(message):
            if scope.get("state", {}).get("drop_connection"):
                transport = getattr(getattr(send, "__self__", None), "transport", None)
                if transport is not None:
                    transport.close()
                else:
                    await asyncio.sleep(3600)
                return
            await send(message)

        await app(scope, receive, send_or_drop if scope["type"] == "http" else send)

    asgi.state = app.state
    return asgi


def serve(port: int, config: MockConfig, host: str = "127.0.0.1") -> None:
    import uvicorn

    uvicorn.run(dropping_connections(create_mock_app(config)), host=host, port=port, log_level="warning",
                http="h11")
