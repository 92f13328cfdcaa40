"""Readings as devices send them, for tests: builders and a POST helper."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from litestar.testing import TestClient

from tests.fix_api import Keys

NOW = datetime.now(UTC).replace(microsecond=0)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def meter(i: int = 0, minutes_ago: int = 10, meter_id: str = "MTR-0001", kwh: float = 0.125) -> dict:
    return {"meterId": meter_id, "kwhConsumedAc": kwh + i / 1000, "voltage": 229.5 + i % 3,
            "timestamp": iso(NOW - timedelta(minutes=minutes_ago + i))}


def vehicle(i: int = 0, minutes_ago: int = 10, vehicle_id: str = "EV-0001", kwh: float = 0.11) -> dict:
    return {"vehicleId": vehicle_id, "soc": 40.0 + i / 10, "kwhDeliveredDc": kwh + i / 1000,
            "batteryTemp": 25.5 + i / 100, "timestamp": iso(NOW - timedelta(minutes=minutes_ago + i))}


def post(client: TestClient, path: str, body: object, key: str, content_type: str = "application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, content=data, headers={**Keys.header(key), "Content-Type": content_type})
