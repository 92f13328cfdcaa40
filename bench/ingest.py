"""HTTP bulk ingestion with full semantics against the same SQL work done directly over psycopg."""

from __future__ import annotations

import asyncio
import os
import random
import re
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.db.ingest import ingest_batch
from api.readings import Batch, MeterReading, VehicleReading
from bench.env import ApiProcess, create_key, edition, fresh_database


@dataclass
class Workload:
    batches: list[Batch]
    bodies: list[tuple[str, bytes]]
    rows: int


def build_workload(devices: int, minutes: int, batch_size: int) -> Workload:
    """`devices` meters and as many vehicles, one reading a minute each over the last `minutes` minutes
    (as gateways send them: into the current hours, which the analytics have not built yet), in
    batches of one stream."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes)
    meters = [MeterReading(f"MTR-{d:05d}", 0.05 + (d % 17) / 1000, 229.0 + d % 5, start + timedelta(minutes=m))
              for m in range(minutes) for d in range(devices)]
    vehicles = [VehicleReading(f"EV-{d:05d}", 20 + (m % 80), 0.045 + (d % 13) / 1000, 25 + d % 9,
                               start + timedelta(minutes=m))
                for m in range(minutes) for d in range(devices)]
    batches, bodies = [], []
    for i in range(0, len(meters), batch_size):
        batches.append(Batch(meters=meters[i:i + batch_size]))
        bodies.append(("/v1/telemetry/meters", msgspec.json.encode(meters[i:i + batch_size])))
        batches.append(Batch(vehicles=vehicles[i:i + batch_size]))
        bodies.append(("/v1/telemetry/vehicles", msgspec.json.encode(vehicles[i:i + batch_size])))
    return Workload(batches, bodies, len(meters) + len(vehicles))


async def _run_direct(url: str, workload: Workload, concurrency: int) -> float:
    from api.db.pool import create_pool
    from api.settings import Settings

    pool = create_pool(Settings(database_url=url, pool_min_size=concurrency, pool_max_size=concurrency,
                                pool_timeout_s=30))
    await pool.open(wait=True)
    queue = list(reversed(workload.batches))
    inserted = 0

    async def worker() -> None:
        nonlocal inserted
        while queue:
            result = await ingest_batch(pool, queue.pop())
            inserted += result.inserted

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await pool.close()
    assert inserted == workload.rows, (inserted, workload.rows)
    return elapsed


async def _run_http(base_url: str, key: str, workload: Workload, concurrency: int) -> tuple[float, list[float]]:
    queue = list(reversed(workload.bodies))
    latencies: list[float] = []
    inserted = 0
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal inserted
        while queue:
            path, body = queue.pop()
            t0 = time.perf_counter()
            response = await client.post(path, content=body, headers=headers)
            latencies.append(time.perf_counter() - t0)
            response.raise_for_status()
            inserted += response.json()["inserted"]

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    assert inserted == workload.rows, (inserted, workload.rows)
    return elapsed, latencies


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (q in hundredths: 0.5, 0.99), interpolated between the samples."""
    if len(values) < 2:  # statistics.quantiles needs two samples; none is an error, as it was
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


# The second batch size the bench reports: gateways that flush more often send smaller requests,
# where the per-request costs (HTTP, authentication, transaction) weigh more.
SMALL_BATCH = 500


def _scratch_database(purpose: str) -> str:
    """A fresh database of this run's own (two benches running at once must not drop each other's)."""
    return fresh_database(f"telemetry_bench_{purpose}_{os.getpid()}")


def _drop(url: str) -> None:
    params = conninfo_to_dict(url)
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(params["dbname"])))


def _direct_once(workload: Workload, concurrency: int) -> tuple[float, list[float]]:
    url = _scratch_database("direct")
    try:
        return asyncio.run(_run_direct(url, workload, concurrency)), []
    finally:
        _drop(url)


def _http_once(workload: Workload, concurrency: int, workers: int, server: str) -> tuple[float, list[float]]:
    url = _scratch_database("http")
    try:
        key = create_key(url)
        with ApiProcess(url, workers=workers, server=server, DB_POOL_MAX=str(max(concurrency, 2))) as api:
            return asyncio.run(_run_http(api.url, key, workload, concurrency))
    finally:
        _drop(url)


def compare(devices: int, minutes: int, batch_size: int, concurrency: int, workers: int, server: str) -> dict:
    """The same readings stored by the direct pipeline and over HTTP, each time into a fresh database,
    in the order direct, HTTP, HTTP, direct: a machine whose load drifts during the run (other
    processes on a shared host) weighs on both pipelines alike."""
    workload = build_workload(devices, minutes, batch_size)
    elapsed = {"direct": 0.0, "http": 0.0}
    latencies: list[float] = []
    for pipeline in ("direct", "http", "http", "direct"):
        seconds, request_latencies = (_direct_once(workload, concurrency) if pipeline == "direct"
                                      else _http_once(workload, concurrency, workers, server))
        elapsed[pipeline] += seconds
        latencies += request_latencies
    direct_rate, http_rate = 2 * workload.rows / elapsed["direct"], 2 * workload.rows / elapsed["http"]
    return {
        "rows": workload.rows, "runs_per_pipeline": 2, "batch_size": batch_size, "concurrency": concurrency,
        "server": server, "workers": workers,
        "direct_rows_per_s": round(direct_rate), "http_rows_per_s": round(http_rate),
        "ratio": round(http_rate / direct_rate, 3),
        "http_request_p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "http_request_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


# The step of the ingest functions that appends the open-hour sums (sql/repeatable/20_ingest.sql).
_OPEN_STEP = re.compile(r"\), open AS \(\s*INSERT INTO telemetry\.\w+_energy_open\b.*?GROUP BY 1, 2\s*\)", re.S)


def open_hours_cost(devices: int, batches: int, batch_size: int) -> dict:
    """Ingest with and without the open-hour step, side by side: the direct SQL path (COPY into staging,
    then the ingest function; one connection, one transaction a batch) of `batches` batches of meter
    readings each, in one scratch database, alternating in random order. "Without" is the same ingest
    function with that one step cut out, created as a temporary function. Community only (Apache keeps
    no open-hour sums)."""
    url = _scratch_database("open_hours")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            if edition(url) != "community":
                return {"skipped": "Apache edition: no open-hour sums"}
            (definition,) = conn.execute(
                "SELECT pg_get_functiondef('telemetry.ingest_meter_staging()'::regprocedure)").fetchone()
            without, cut = _OPEN_STEP.subn(")", definition)
            assert cut == 1, "the open-hour step of telemetry.ingest_meter_staging() was not found"
            without = without.replace("telemetry.open_hours_from('meter')", "'infinity'")  # its bound unread too
            # No refresh job here: it would move the running sums' end into these minutes mid-run.
            conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
                         " WHERE proc_schema = 'telemetry' AND proc_name = 'refresh_energy_aggregates'")
            conn.execute(without.replace("telemetry.ingest_meter_staging", "pg_temp.ingest_meter_without_open_hours"))
            conn.execute("SELECT telemetry.prepare_staging()")
            functions = {"with": "telemetry.ingest_meter_staging", "without": "pg_temp.ingest_meter_without_open_hours"}
            start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=batches)
            seconds: dict[str, list[float]] = {side: [] for side in functions}
            rng = random.Random(17)
            for minute in range(batches):
                for side in rng.sample(sorted(functions), 2):
                    rows = [(f"{side}-{d:05d}", start + timedelta(minutes=minute), 0.05 + d % 17 / 1000, 230.0)
                            for d in range(min(devices, batch_size))]
                    t0 = time.perf_counter()
                    with conn.transaction():
                        with conn.cursor().copy("COPY pg_temp.meter_staging FROM STDIN") as copy:
                            for row in rows:
                                copy.write_row(row)
                        conn.execute(f"SELECT * FROM {functions[side]}()")
                    seconds[side].append(time.perf_counter() - t0)
            (kept,) = conn.execute("SELECT sum(readings) FROM telemetry.meter_energy_open").fetchone()
            assert kept == batches * len(rows), (kept, batches * len(rows))  # only the "with" side keeps them
        rates = {side: len(rows) / statistics.median(values[5:]) for side, values in seconds.items()}
        return {"batches": batches, "batch_size": len(rows),
                "rows_per_s_without": round(rates["without"]), "rows_per_s_with": round(rates["with"]),
                "ratio": round(rates["with"] / rates["without"], 3)}
    finally:
        _drop(url)


def run(devices: int, minutes: int, batch_size: int, concurrency: int, workers: int, server: str) -> dict:
    """The comparison at `batch_size` readings a request, and (under "small_batches") at SMALL_BATCH;
    the open-hour step's cost (under "open_hours")."""
    result = compare(devices, minutes, batch_size, concurrency, workers, server)
    if batch_size != SMALL_BATCH:
        result["small_batches"] = compare(devices, minutes, SMALL_BATCH, concurrency, workers, server)
    result["open_hours"] = open_hours_cost(devices, 100, batch_size)
    return result
