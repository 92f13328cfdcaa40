"""Analytics latency on 24 hours of the full fleet: the performance endpoint under concurrent clients
against the same answer computed over the raw readings, and the fleet endpoint."""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from api.maintenance import run_refresh_policies
from bench.env import ApiProcess, create_key, fresh_database
from bench.ingest import percentile

# One hour of one stream for the whole fleet, generated in the database and written through the
# platform's ingest functions (staging table, deduplication, current state, aggregates).
_LOAD_HOUR = {
    "meters": """
        INSERT INTO pg_temp.meter_staging (meter_id, time, kwh_consumed_ac, voltage)
        SELECT format('MTR-%%s', lpad(d::text, 5, '0')), %(hour)s + m * INTERVAL '1 minute',
               0.05 + ((d * 7 + m * 13) %% 100) / 1000.0, 228 + (d %% 5)
        FROM generate_series(0, %(devices)s - 1) d, generate_series(0, 59) m""",
    "vehicles": """
        INSERT INTO pg_temp.vehicle_staging (vehicle_id, time, soc, kwh_delivered_dc, battery_temp)
        SELECT format('EV-%%s', lpad(d::text, 5, '0')), %(hour)s + m * INTERVAL '1 minute', 20 + m,
               (0.05 + ((d * 7 + m * 13) %% 100) / 1000.0) * CASE WHEN d %% 50 = 0 THEN 0.62 ELSE 0.91 END,
               25 + (d %% 9)
        FROM generate_series(0, %(devices)s - 1) d, generate_series(0, 59) m""",
}
_INGEST = {"meters": "SELECT * FROM telemetry.ingest_meter_staging()",
           "vehicles": "SELECT * FROM telemetry.ingest_vehicle_staging()"}

# The performance answer computed the obvious way, over the raw readings.
RAW_PERFORMANCE = """
WITH ac AS (
    SELECT sum(r.kwh_consumed_ac) AS kwh, count(*) AS n
    FROM telemetry.vehicle_meter_links l
    JOIN telemetry.meter_readings r ON r.meter_id = l.meter_id
     AND r.time >= greatest(lower(l.valid), %(from)s) AND r.time < least(coalesce(upper(l.valid), %(to)s), %(to)s)
    WHERE l.vehicle_id = %(vehicle)s AND l.valid && tstzrange(%(from)s, %(to)s)
), dc AS (
    SELECT sum(kwh_delivered_dc) AS kwh, avg(battery_temp) AS temp, count(*) AS n
    FROM telemetry.vehicle_readings WHERE vehicle_id = %(vehicle)s AND time >= %(from)s AND time < %(to)s
)
SELECT ac.kwh, dc.kwh, dc.kwh / ac.kwh, dc.temp, ac.n, dc.n FROM ac, dc
"""


def load_fleet(url: str, devices: int, hours: int, end: datetime) -> float:
    start = end - timedelta(hours=hours)

    def load_stream(stream: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT telemetry.prepare_staging()")
            for h in range(hours):
                with conn.transaction():
                    conn.execute(_LOAD_HOUR[stream], {"hour": start + timedelta(hours=h), "devices": devices})
                    conn.execute(_INGEST[stream])

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT count(*) FROM generate_series(0, %s - 1) d, telemetry.link_vehicle("
            "format('EV-%%s', lpad(d::text, 5, '0')), format('MTR-%%s', lpad(d::text, 5, '0')))", (devices,))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(load_stream, ["meters", "vehicles"]))
    with psycopg.connect(url, autocommit=True) as conn:
        run_refresh_policies(conn)
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


async def _load_test(base_url: str, key: str, paths: list[tuple[str, dict]], concurrency: int) -> dict:
    latencies: list[float] = []
    queue = list(paths)

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            path, params = queue.pop()
            t0 = time.perf_counter()
            response = await client.get(path, params=params)
            latencies.append(time.perf_counter() - t0)
            response.raise_for_status()

    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await client.get(paths[0][0], params=paths[0][1])  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1)}


def _raw_latencies(url: str, windows: list[dict]) -> dict:
    latencies = []
    with psycopg.connect(url) as conn:
        conn.execute(RAW_PERFORMANCE, windows[0]).fetchall()  # warm-up
        for params in windows:
            t0 = time.perf_counter()
            conn.execute(RAW_PERFORMANCE, params).fetchall()
            latencies.append(time.perf_counter() - t0)
    return {"queries": len(latencies), "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2)}


def run(devices: int, hours: int, requests: int, concurrency: int) -> dict:
    url = fresh_database("telemetry_bench_analytics")
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    load_s = load_fleet(url, devices, hours, end)
    rng = random.Random(42)
    # The default window: the last 24 hours, unaligned (edges read from raw readings).
    to = end - timedelta(minutes=23, seconds=11) + timedelta(hours=0)
    window = {"from": (to - timedelta(hours=24)).isoformat(), "to": to.isoformat()}
    vehicles = [f"EV-{rng.randrange(devices):05d}" for _ in range(requests)]
    key = create_key(url)
    with ApiProcess(url, DB_POOL_MAX=str(max(concurrency, 2))) as api:
        performance = asyncio.run(_load_test(
            api.url, key, [(f"/v1/analytics/performance/{v}", window) for v in vehicles], concurrency))
        aligned = {"from": (end - timedelta(hours=24)).isoformat(), "to": end.isoformat()}
        fleet_aligned = asyncio.run(_load_test(api.url, key, [("/v1/analytics/fleet", aligned)] * 20, 2))
        fleet_unaligned = asyncio.run(_load_test(api.url, key, [("/v1/analytics/fleet", window)] * 10, 2))
        example = httpx.get(f"{api.url}/v1/analytics/fleet", params={**window, "worst": 3},
                            headers={"Authorization": f"Bearer {key}"}, timeout=60).json()
    raw = _raw_latencies(url, [{"vehicle": v, "from": to - timedelta(hours=24), "to": to}
                               for v in vehicles[:min(300, requests)]])
    return {
        "devices": devices * 2, "hours": hours, "readings": devices * 2 * hours * 60, "load_s": round(load_s, 1),
        "performance_endpoint": performance, "raw_computation": raw,
        "raw_p50_over_endpoint_p50": round(raw["p50_ms"] / performance["p50_ms"], 2),
        "fleet_endpoint_aligned_24h": fleet_aligned, "fleet_endpoint_unaligned_24h": fleet_unaligned,
        "fleet_example": example,
    }
