"""The analytics computed the slow, obvious way over raw readings: what every endpoint must equal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EPOCH = datetime(2000, 1, 3, tzinfo=UTC)  # time_bucket's origin for week buckets (a Monday)


@dataclass(frozen=True)
class MeterRow:
    meter_id: str
    time: datetime
    kwh: float
    voltage: float


@dataclass(frozen=True)
class VehicleRow:
    vehicle_id: str
    time: datetime
    soc: float
    kwh: float
    battery_temp: float


@dataclass(frozen=True)
class LinkPeriod:
    vehicle_id: str
    meter_id: str
    start: datetime | None  # None: since forever
    end: datetime | None  # None: still linked


def bucket_of(ts: datetime, size: timedelta) -> datetime:
    origin = EPOCH if size >= timedelta(days=7) else datetime(2000, 1, 1, tzinfo=UTC)
    return origin + ((ts - origin) // size) * size


def dedupe(rows: list, key) -> list:
    """The store keeps the first reading for each (device, timestamp)."""
    seen, kept = set(), []
    for row in rows:
        if key(row) not in seen:
            seen.add(key(row))
            kept.append(row)
    return kept


def verdict(ac: float, dc: float, meter_n: int, vehicle_n: int,
            healthy: float = 0.85, degraded: float = 0.75, min_ac: float = 0.1) -> str:
    if meter_n == 0 or vehicle_n == 0 or ac < min_ac:
        return "insufficient_data"
    efficiency = dc / ac
    if efficiency > 1.0:
        return "anomaly"
    if efficiency >= healthy:
        return "healthy"
    if efficiency >= degraded:
        return "degraded"
    return "faulty"


@dataclass
class Store:
    meters: list[MeterRow]
    vehicles: list[VehicleRow]
    links: list[LinkPeriod]

    def _periods(self, vehicle_id: str, start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
        out = []
        for link in self.links:
            if link.vehicle_id != vehicle_id:
                continue
            lo = max(start, link.start) if link.start else start
            hi = min(end, link.end) if link.end else end
            if lo < hi:
                out.append((link.meter_id, lo, hi))
        return out

    def ac_rows(self, vehicle_id: str, start: datetime, end: datetime) -> list[MeterRow]:
        return [m for meter_id, lo, hi in self._periods(vehicle_id, start, end)
                for m in self.meters if m.meter_id == meter_id and lo <= m.time < hi]

    def dc_rows(self, vehicle_id: str, start: datetime, end: datetime) -> list[VehicleRow]:
        return [v for v in self.vehicles if v.vehicle_id == vehicle_id and start <= v.time < end]

    def linked_meter(self, vehicle_id: str, start: datetime, end: datetime) -> str | None:
        periods = self._periods(vehicle_id, start, end)
        return max(periods, key=lambda p: p[2])[0] if periods else None

    def performance(self, vehicle_id: str, start: datetime, end: datetime) -> dict:
        ac_rows, dc_rows = self.ac_rows(vehicle_id, start, end), self.dc_rows(vehicle_id, start, end)
        ac, dc = sum(r.kwh for r in ac_rows), sum(r.kwh for r in dc_rows)
        return {
            "vehicleId": vehicle_id, "meterId": self.linked_meter(vehicle_id, start, end),
            "acConsumedKwh": ac, "dcDeliveredKwh": dc, "lossKwh": ac - dc,
            "efficiency": dc / ac if ac > 0 else None,
            "avgBatteryTemp": sum(r.battery_temp for r in dc_rows) / len(dc_rows) if dc_rows else None,
            "meterReadings": len(ac_rows), "vehicleReadings": len(dc_rows),
            "verdict": verdict(ac, dc, len(ac_rows), len(dc_rows)),
        }

    def vehicle_ids(self, start: datetime, end: datetime) -> set[str]:
        ids = {v.vehicle_id for v in self.vehicles if start <= v.time < end}
        return ids | {link.vehicle_id for link in self.links if self._periods(link.vehicle_id, start, end)}

    def series(self, vehicle_id: str, start: datetime, end: datetime, size: timedelta) -> list[dict]:
        points: dict[datetime, dict] = {}
        for r in self.ac_rows(vehicle_id, start, end):
            p = points.setdefault(bucket_of(r.time, size), {"ac": 0.0, "dc": 0.0, "t": 0.0, "mn": 0, "vn": 0})
            p["ac"] += r.kwh
            p["mn"] += 1
        for r in self.dc_rows(vehicle_id, start, end):
            p = points.setdefault(bucket_of(r.time, size), {"ac": 0.0, "dc": 0.0, "t": 0.0, "mn": 0, "vn": 0})
            p["dc"] += r.kwh
            p["t"] += r.battery_temp
            p["vn"] += 1
        return [{"bucket": b, "acConsumedKwh": p["ac"], "dcDeliveredKwh": p["dc"],
                 "efficiency": p["dc"] / p["ac"] if p["mn"] and p["ac"] > 0 else None,
                 "avgBatteryTemp": p["t"] / p["vn"] if p["vn"] else None,
                 "meterReadings": p["mn"], "vehicleReadings": p["vn"]}
                for b, p in sorted(points.items())]
