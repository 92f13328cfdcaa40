"""The EnergyGrid vendor protocol, written once for both sides (the connector and the mock): the
query path, the signature, the serials, the limits, the answers' shapes and the power values with
their units."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

QUERY_PATH = "/device/real/query"
DEFAULT_TOKEN = "interview_token_123"
MAX_SERIALS = 10
"""Serials in one request."""
MIN_INTERVAL_S = 1.0
"""One request a second, for all clients together."""
RATE_LIMIT_ERROR = "Too Many Requests. Limit: 1 req/sec."
SERIAL_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$(?!\n)"
"""The platform's device-id rule (api/readings.py DEVICE_ID_PATTERN, kept equal here so the mock side
needs nothing of api/): a serial the platform could not store as a device id is malformed. (?!\n):
in Python, $ also matches before a final line break, which the database's rule refuses."""
POWER_UNITS = {"W": -3, "kW": 0, "MW": 3}
"""Power units the vendor writes, as the power of ten that turns a value into kW."""
_DECIMALS = {"W": 0, "kW": 2, "MW": 5}
"""Decimals the vendor writes in each unit: to the watt in W, to 10 W in kW and MW."""
_POWER = re.compile(r"\s*(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?i:nan|infinity|inf))"
                    r"\s*(?P<unit>[^\s\d]*)\s*")


def sign(path: str, token: str, timestamp_ms: str) -> str:
    """The vendor's signature: lowercase hex MD5 of path + token + timestamp (milliseconds)."""
    return hashlib.md5((path + token + timestamp_ms).encode()).hexdigest()


def serials(count: int = 500) -> list[str]:
    """The vendor's device serials: SN-000, SN-001, ..."""
    return [f"SN-{i:03d}" for i in range(count)]


class MalformedItem(ValueError):
    """One device in an answer that cannot be taken as a reading; the rest of the answer still counts."""

    def __init__(self, field: str, reason: str, value: object = None, sn: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" + ("" if value is None else f" ({value!r})"))
        self.field = field
        self.reason = reason
        self.value = value
        self.sn = sn
        """The item's serial, when it has a usable one."""

    @property
    def kind(self) -> str:
        """The reason without the offending value, for counting alike failures together."""
        return f"{self.field}: {self.reason}"


def parse_power(text: str) -> float:
    """A power as the vendor writes it ("3420 W", "3.42 kW", "0.00342 MW") in kW."""
    match = _POWER.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise MalformedItem("power", "not a number with a unit", text)
    unit = match["unit"]
    if unit not in POWER_UNITS:
        raise MalformedItem("power", "unknown unit" if unit else "no unit", text)
    exponent = POWER_UNITS[unit]
    value = float(match["value"])
    # Dividing by 1000 (rather than multiplying by 0.001) gives 3420 W as exactly 3.42 kW.
    kw = value * 10 ** exponent if exponent >= 0 else value / 10 ** -exponent
    if not math.isfinite(kw):
        raise MalformedItem("power", "not finite", text)
    if kw < 0:
        raise MalformedItem("power", "negative", text)
    return kw


def format_power(kw: float, unit: str = "kW") -> str:
    """The vendor's way of writing a power given in kW: format_power(3.42, "W") == "3420 W"."""
    exponent = POWER_UNITS[unit]
    value = kw / 10 ** exponent if exponent >= 0 else kw * 10 ** -exponent
    return f"{value:.{_DECIMALS[unit]}f} {unit}"


class DeviceItem(msgspec.Struct, forbid_unknown_fields=False):
    """One device in a 200 answer, as the vendor sends it."""

    sn: Annotated[str, msgspec.Meta(pattern=SERIAL_PATTERN)]
    power: str
    """A decimal number, a space and a unit: "3.42 kW"."""
    status: Literal["Online", "Offline"]
    last_updated: str
    """ISO 8601; without an offset it is taken as UTC."""


class QueryAnswer(msgspec.Struct):
    """A 200 answer: its devices are checked one by one (parse_device), so one bad item does not spoil
    the others."""

    data: list[object]


class QueryRequest(msgspec.Struct):
    sn_list: list[str] | None = None


@dataclass(frozen=True, slots=True)
class DeviceReading:
    """A device's reading, validated: what the platform stores."""

    serial: str
    power_kw: float
    online: bool
    last_updated: datetime


def parse_timestamp(text: str) -> datetime:
    try:
        updated = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedItem("last_updated", "not an ISO 8601 timestamp", text) from None
    return updated if updated.tzinfo is not None else updated.replace(tzinfo=UTC)


_AT_FIELD = re.compile(r"`\$\.(\w+)`")
_MISSING_FIELD = re.compile(r"missing required field `(\w+)`")
_REASONS = {"sn": "not a valid serial", "status": "not Online or Offline"}


def _invalid(message: str) -> tuple[str, str]:
    """(field, reason) from msgspec's validation message."""
    if missing := _MISSING_FIELD.search(message):
        return missing[1], "missing"
    if at := _AT_FIELD.search(message):
        return at[1], _REASONS.get(at[1], message.partition(" - at")[0])
    return "item", "not an object"


def parse_device(item: object) -> DeviceReading:
    """One item of a 200 answer (decoded JSON) as a reading, or MalformedItem naming the field and the reason."""
    sn = item.get("sn") if isinstance(item, dict) else None
    sn = sn if isinstance(sn, str) and re.fullmatch(SERIAL_PATTERN, sn) else None
    try:
        device = msgspec.convert(item, DeviceItem)
        return DeviceReading(device.sn, parse_power(device.power), device.status == "Online",
                             parse_timestamp(device.last_updated))
    except msgspec.ValidationError as exc:
        raise MalformedItem(*_invalid(str(exc)), sn=sn) from None
    except MalformedItem as exc:
        exc.sn = sn
        raise
