"""The write path: one transaction per request, binary COPY into staging tables, then the SQL
ingest functions (deduplication, current state, Apache aggregates)."""

from __future__ import annotations

import msgspec
import psycopg
import stamina
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool

from api.readings import Batch

_METER_COPY = "COPY pg_temp.meter_staging (meter_id, time, kwh_consumed_ac, voltage) FROM STDIN (FORMAT BINARY)"
_VEHICLE_COPY = (
    "COPY pg_temp.vehicle_staging (vehicle_id, time, soc, kwh_delivered_dc, battery_temp) FROM STDIN (FORMAT BINARY)"
)
_METER_TYPES = ["text", "timestamptz", "float8", "float8"]
_VEHICLE_TYPES = ["text", "timestamptz", "float8", "float8", "float8"]

READINGS = Counter("telemetry_readings_total", "Readings received, by stream and outcome", ["stream", "outcome"])


class IngestResult(msgspec.Struct):
    inserted: int
    duplicates: int


async def _copy_meters(cur: psycopg.AsyncCursor, batch: Batch) -> None:
    async with cur.copy(_METER_COPY) as copy:
        copy.set_types(_METER_TYPES)
        for r in batch.meters:
            await copy.write_row((r.meter_id, r.timestamp, r.kwh_consumed_ac, r.voltage))


async def _copy_vehicles(cur: psycopg.AsyncCursor, batch: Batch) -> None:
    async with cur.copy(_VEHICLE_COPY) as copy:
        copy.set_types(_VEHICLE_TYPES)
        for r in batch.vehicles:
            await copy.write_row((r.vehicle_id, r.timestamp, r.soc, r.kwh_delivered_dc, r.battery_temp))


async def ingest_batch(pool: AsyncConnectionPool, batch: Batch) -> IngestResult:
    """Store a validated batch atomically; returns how many readings were new and how many were repeats."""
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
                    await _copy_meters(cur, batch)
                    await cur.execute("SELECT inserted, duplicates FROM telemetry.ingest_meter_staging()")
                    inserted["meters"], duplicates["meters"] = await cur.fetchone()
                if batch.vehicles:
                    await _copy_vehicles(cur, batch)
                    await cur.execute("SELECT inserted, duplicates FROM telemetry.ingest_vehicle_staging()")
                    inserted["vehicles"], duplicates["vehicles"] = await cur.fetchone()
    for stream in ("meters", "vehicles"):
        READINGS.labels(stream, "inserted").inc(inserted[stream])
        READINGS.labels(stream, "duplicate").inc(duplicates[stream])
    return IngestResult(inserted=sum(inserted.values()), duplicates=sum(duplicates.values()))
