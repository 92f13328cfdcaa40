"""A mock EnergyGrid vendor cloud: signed requests, one global rate limit, at most 10 serials a
request, 500 devices with realistic power and about 10% offline, and faults on request (errors,
latency, dropped connections, an outage, malformed items, power in W, kW or MW)."""

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

from energygrid.protocol import (DEFAULT_TOKEN, MAX_SERIALS, MIN_INTERVAL_S, QUERY_PATH, RATE_LIMIT_ERROR,
                                 POWER_UNITS, QueryRequest, format_power, serials, sign)


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
    units: tuple[str, ...] = ("kW",)
    """Power units; each device writes its power in one of them (protocol.POWER_UNITS)."""
    malformed_rate: float = 0.0
    """Share of the items in 200 answers replaced by a malformed one (see MALFORMED)."""
    fail_after: int | None = None
    """After this many 200 answers, every authenticated request is answered 500: an outage mid-run."""

    def __post_init__(self) -> None:
        unknown = set(self.units) - set(POWER_UNITS)
        if not self.units or unknown:
            raise ValueError(f"units must be some of {', '.join(POWER_UNITS)}, not {sorted(unknown) or 'none'}")


def _without(item: dict, field: str) -> dict:
    return {k: v for k, v in item.items() if k != field}


# How a vendor's item goes wrong, by the reason the connector should give.
MALFORMED = {
    "power: negative": lambda item: {**item, "power": "-1.25 kW"},
    "power: not finite": lambda item: {**item, "power": "NaN kW"},
    "power: unknown unit": lambda item: {**item, "power": "3.42 kWh"},
    "power: no unit": lambda item: {**item, "power": "3.42"},
    "last_updated: missing": lambda item: _without(item, "last_updated"),
    "last_updated: not an ISO 8601 timestamp": lambda item: {**item, "last_updated": "yesterday"},
    "status: not Online or Offline": lambda item: {**item, "status": "Unknown"},
    "sn: not a valid serial": lambda item: {**item, "sn": item["sn"] + " #bad"},
}


@dataclass
class MockState:
    config: MockConfig
    last_accepted: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    counts: dict[str, int] = field(default_factory=lambda: {"200": 0, "400": 0, "401": 0, "429": 0, "500": 0,
                                                             "dropped": 0, "malformed": 0})
    malformed: list[tuple[str, str]] = field(default_factory=list)
    """(serial asked for, reason) of every malformed item sent."""
    rng: random.Random = field(default_factory=random.Random)
    started: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def reading(self, serial: str, now: datetime) -> tuple[float, bool, datetime, str]:
        """(power in kW, online, last_updated, the unit the device writes its power in)."""
        index = int(serial[3:])
        device_rng = random.Random(self.config.seed * 100_003 + index)
        offline = device_rng.random() < 0.10
        if offline:
            # An offline device's last report does not move.
            last = self.started - timedelta(hours=1 + device_rng.randrange(72), seconds=device_rng.randrange(3600))
            return 0.0, False, last, device_rng.choice(self.config.units)
        period = self.config.report_every_s
        slot = int(now.timestamp() // period)
        last = datetime.fromtimestamp(slot * period, UTC)
        nominal = device_rng.uniform(1.5, 11.0)
        power = max(0.0, nominal * (0.85 + 0.3 * random.Random(index * 7919 + slot).random()))
        return power, True, last, device_rng.choice(self.config.units)

    def device(self, serial: str, now: datetime) -> dict:
        """The device's item in a 200 answer, as the protocol has it."""
        power, online, last, unit = self.reading(serial, now)
        return {"sn": serial, "power": format_power(power, unit), "status": "Online" if online else "Offline",
                "last_updated": last.isoformat()}

    def answer_item(self, serial: str, now: datetime) -> dict:
        """The device's item, or at the configured rate a malformed one in its place."""
        item = self.device(serial, now)
        if self.config.malformed_rate and self.rng.random() < self.config.malformed_rate:
            reason = self.rng.choice(list(MALFORMED))
            self.counts["malformed"] += 1
            self.malformed.append((serial, reason))
            return MALFORMED[reason](item)
        return item


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
            body = msgspec.json.decode(await request.body(), type=QueryRequest)
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
        if (config.fail_after is not None and state.counts["200"] >= config.fail_after) or (
                config.fail_rate and state.rng.random() < config.fail_rate):
            state.counts["500"] += 1
            return _error(500, "Internal Server Error")
        known = set(serials(config.devices))
        now_utc = datetime.now(UTC)
        state.counts["200"] += 1
        return Response({"data": [state.answer_item(sn, now_utc) for sn in body.sn_list if sn in known]})

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
