"""The simulated fleet: meters on the grid side, vehicles behind chargers on the battery side, one
reading a minute each, with physics that tells a story and mess on request. Deterministic per seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


def meter_id(i: int) -> str:
    return f"MTR-{i:05d}"


def vehicle_id(i: int) -> str:
    return f"EV-{i:05d}"


@dataclass
class Charger:
    """One vehicle and the charger/meter feeding it."""

    efficiency: float
    faulty: bool
    power_kw: float
    capacity_kwh: float
    soc: float
    temp: float
    charging: bool = False
    remaining_min: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)
    second: str = ""  # when in the minute this device reports: the timestamp's tail, "SS.ffffffZ"
    silent: bool = False  # stops reporting (meter and vehicle) from the fleet's silent_from minute on


@dataclass
class Fleet:
    devices: int
    seed: int = 1
    faulty_share: float = 0.02
    silent_share: float = 0.0
    """Share of chargers whose meter and vehicle stop reporting at minute silent_from (a dead gateway)."""
    silent_from: int | None = None
    first: int = 0
    """The number of the fleet's first meter and vehicle: generators with disjoint numbers can share a platform."""
    chargers: list[Charger] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        for i in range(self.devices):
            faulty = rng.random() < self.faulty_share
            offset = self.offset(i)
            self.chargers.append(Charger(
                efficiency=rng.uniform(0.55, 0.70) if faulty else rng.uniform(0.88, 0.95),
                faulty=faulty, power_kw=rng.choice([7.4, 11.0, 11.0, 22.0]) * rng.uniform(0.9, 1.0),
                capacity_kwh=rng.choice([50.0, 64.0, 77.0, 82.0]), soc=rng.uniform(15, 80), temp=rng.uniform(15, 25),
                rng=random.Random(self.seed * 1_000_003 + i * 10_007),
                second=f"{offset.seconds:02d}.{offset.microseconds:06d}Z",
            ))
        # Drawn from a stream of its own, so that a seed plants the same faulty chargers with or without it.
        silence = random.Random(self.seed * 7_919 + 17)
        for c in self.chargers:
            c.silent = silence.random() < self.silent_share

    @property
    def faulty_vehicles(self) -> set[str]:
        return {vehicle_id(i) for i, c in enumerate(self.chargers, self.first) if c.faulty}

    @property
    def silent_devices(self) -> set[str]:
        return {d for i, c in enumerate(self.chargers, self.first) if c.silent for d in (meter_id(i), vehicle_id(i))}

    def offset(self, i: int) -> timedelta:
        """Each device reports at its own second of the minute, so the fleet is spread over it."""
        return timedelta(seconds=(i * 60.0 / self.devices) if self.devices else 0)

    def minute(self, start: datetime, m: int) -> list[dict]:
        """Every device's reading for simulated minute m; advances the physics by one minute.
        Each device draws from its own random stream, so a run is the same for a seed whatever the
        batching, and generating a reading costs a few microseconds (the fleet is 20,000 devices)."""
        readings = []
        base = start.astimezone(UTC) + timedelta(minutes=m)
        if base.second or base.microsecond:
            raise ValueError(f"the simulated clock starts on a whole minute, not at {start.isoformat()}")
        minute_prefix = base.strftime("%Y-%m-%dT%H:%M:")
        for i, c in enumerate(self.chargers):
            rng = c.rng
            if not c.charging and c.soc < 85 and rng.random() < 0.02:
                c.charging, c.remaining_min = True, rng.randrange(30, 240)
            if c.charging:
                ac = c.power_kw / 60 * rng.uniform(0.97, 1.0)
                dc = ac * c.efficiency
                c.soc = min(100.0, c.soc + dc / c.capacity_kwh * 100)
                c.temp = min(55.0, c.temp + 0.08 + (1 - c.efficiency) * 0.3)
                c.remaining_min -= 1
                if c.remaining_min <= 0 or c.soc >= 99.5:
                    c.charging = False
            else:
                ac, dc = 0.0, 0.0  # idle: the meter feeding the charger reads nothing
                c.temp = max(15.0, c.temp - 0.05)
                c.soc = max(5.0, c.soc - rng.uniform(0, 0.02))
            if c.silent and self.silent_from is not None and m >= self.silent_from:
                continue  # the physics went on; nothing reaches the platform
            ts = minute_prefix + c.second
            readings.append({"meterId": meter_id(self.first + i), "kwhConsumedAc": round(ac, 9),
                             "voltage": round(230 + rng.gauss(0, 2.5), 2), "timestamp": ts})
            readings.append({"vehicleId": vehicle_id(self.first + i), "soc": round(c.soc, 3), "kwhDeliveredDc": round(dc, 9),
                             "batteryTemp": round(c.temp, 2), "timestamp": ts})
        return readings


@dataclass
class Mess:
    """Real-world mess: repeats, shuffled order and late arrivals, at given rates."""

    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0
    late_rate: float = 0.0
    late_by_minutes: int = 5
    seed: int = 1
    _late: dict[int, list[dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed ^ 0x5EED)

    def apply(self, m: int, readings: list[dict]) -> list[dict]:
        out = []
        for reading in readings:
            if self.late_rate and self.rng.random() < self.late_rate:
                self._late.setdefault(m + self.late_by_minutes, []).append(reading)
                continue
            out.append(reading)
            if self.duplicate_rate and self.rng.random() < self.duplicate_rate:
                out.append(dict(reading))
        out.extend(self._late.pop(m, []))
        if self.out_of_order_rate:
            for i in range(len(out)):
                if self.rng.random() < self.out_of_order_rate:
                    j = self.rng.randrange(len(out))
                    out[i], out[j] = out[j], out[i]
        return out

    def flush(self) -> list[dict]:
        """Late readings still held back when the run ends: sent at the end, never dropped."""
        rest = [r for m in sorted(self._late) for r in self._late[m]]
        self._late.clear()
        return rest
