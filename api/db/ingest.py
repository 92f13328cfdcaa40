"""The write path: one transaction per request, binary COPY into staging tables, then the SQL
ingest functions (deduplication, current state, Apache aggregates)."""

from __future__ import annotations

import functools
import struct
from datetime import datetime, timedelta, timezone

import msgspec
import psycopg
import stamina
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool

from api.readings import Batch, MeterReading, VehicleReading

_METER_COPY = "COPY pg_temp.meter_staging (meter_id, time, kwh_consumed_ac, voltage) FROM STDIN (FORMAT BINARY)"
_VEHICLE_COPY = (
    "COPY pg_temp.vehicle_staging (vehicle_id, time, soc, kwh_delivered_dc, battery_temp) FROM STDIN (FORMAT BINARY)"
)

READINGS = Counter("telemetry_readings_total", "Readings received, by stream and outcome", ["stream", "outcome"])

# PostgreSQL's binary COPY format, built here in one buffer (copy.write_row per reading cost the API
# most of its time per request): a header, then per row the field count and each field as its
# length and its value in network byte order; timestamptz is microseconds since 2000-01-01 UTC.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


@functools.cache
def _row_format(id_length: int, floats: int) -> struct.Struct:
    """A row: the device id (text), the time (timestamptz), then `floats` float8 fields."""
    return struct.Struct(f">hi{id_length}siq" + "id" * floats)


def _meter_row(r: MeterReading) -> bytes:
    device = r.meter_id.encode()
    return _row_format(len(device), 2).pack(4, len(device), device, 8, (r.timestamp - _PG_EPOCH) // _MICROSECOND,
                                            8, r.kwh_consumed_ac, 8, r.voltage)


def _vehicle_row(r: VehicleReading) -> bytes:
    device = r.vehicle_id.encode()
    return _row_format(len(device), 3).pack(5, len(device), device, 8, (r.timestamp - _PG_EPOCH) // _MICROSECOND,
                                            8, r.soc, 8, r.kwh_delivered_dc, 8, r.battery_temp)


def copy_data(readings: list[MeterReading] | list[VehicleReading]) -> bytes:
    """The binary COPY data of a stream's staging table (columns as _METER_COPY or _VEHICLE_COPY list them)."""
    row = _meter_row if type(readings[0]) is MeterReading else _vehicle_row
    return b"".join([_COPY_HEADER, *map(row, readings), _COPY_TRAILER])


class IngestResult(msgspec.Struct):
    inserted: int
    duplicates: int


async def _copy(cur: psycopg.AsyncCursor, statement: str, data: bytes) -> None:
    async with cur.copy(statement) as copy:
        await copy.write(data)


async def ingest_batch(pool: AsyncConnectionPool, batch: Batch) -> IngestResult:
    """Store a validated batch atomically; returns how many readings were new and how many were repeats."""
    # Built once, before a connection is taken from the pool, and reused by a replay.
    meters = copy_data(batch.meters) if batch.meters else b""
    vehicles = copy_data(batch.vehicles) if batch.vehicles else b""
    # Concurrent batches touching the same rows can deadlock (Apache aggregate upserts); the
    # transaction is replayed from the batch, which is still in memory.
    for attempt in stamina.retry_context(
        on=(psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure), attempts=4, wait_initial=0.01
    ):
        with attempt:
            inserted = {"meters": 0, "vehicles": 0}
            duplicates = {"meters": 0, "vehicles": 0}
            async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                if batch.meters:
                    await _copy(cur, _METER_COPY, meters)
                    await cur.execute("SELECT inserted, duplicates FROM telemetry.ingest_meter_staging()")
                    inserted["meters"], duplicates["meters"] = await cur.fetchone()
                if batch.vehicles:
                    await _copy(cur, _VEHICLE_COPY, vehicles)
                    await cur.execute("SELECT inserted, duplicates FROM telemetry.ingest_vehicle_staging()")
                    inserted["vehicles"], duplicates["vehicles"] = await cur.fetchone()
    for stream in ("meters", "vehicles"):
        READINGS.labels(stream, "inserted").inc(inserted[stream])
        READINGS.labels(stream, "duplicate").inc(duplicates[stream])
    return IngestResult(inserted=sum(inserted.values()), duplicates=sum(duplicates.values()))
