"""Analytics latency on 24 hours of the full fleet, loaded through the ingestion path: the performance
endpoint, the SQL function behind it and the same answer computed over the raw readings, side by side
with the same vehicles, windows and number of concurrent clients; and the fleet endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict

from api.server import analytics
from api.ops.maintenance import refresh_jobs, run_refresh_policies
from bench.env import ApiProcess, create_key, edition, fresh_database
from bench.ingest import percentile

# The answer computed the obvious way: every raw reading of the vehicle and of its linked meter.
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
SELECT ac.kwh, dc.kwh, dc.kwh / nullif(ac.kwh, 0), dc.temp, ac.n, dc.n FROM ac, dc
"""

# One alert evaluation pass over the whole fleet, as `python -m api alerts evaluate` runs it.
EVALUATE_ALERTS = """SELECT rule, event FROM telemetry.evaluate_alerts(
    now(), INTERVAL '6 hours', INTERVAL '15 minutes', 55, 0.85, 0.75, 0.1, true)"""

# Its fleet computation done the obvious way: every raw reading of the last 6 hours, grouped per
# vehicle through its links, with the faulty and anomaly verdicts.
RAW_FLEET_VERDICTS = """
WITH ac AS (
    SELECT l.vehicle_id, sum(r.kwh_consumed_ac) AS kwh, count(*) AS n
    FROM telemetry.vehicle_meter_links l
    JOIN telemetry.meter_readings r ON r.meter_id = l.meter_id
     AND r.time >= greatest(lower(l.valid), now() - INTERVAL '6 hours')
     AND r.time < least(coalesce(upper(l.valid), now()), now())
    WHERE l.valid && tstzrange(now() - INTERVAL '6 hours', now())
    GROUP BY l.vehicle_id
), dc AS (
    SELECT vehicle_id, sum(kwh_delivered_dc) AS kwh, count(*) AS n
    FROM telemetry.vehicle_readings WHERE time >= now() - INTERVAL '6 hours' AND time < now()
    GROUP BY vehicle_id
), v AS (
    SELECT coalesce(ac.vehicle_id, dc.vehicle_id) AS vehicle_id,
           CASE WHEN ac.kwh > 0 THEN coalesce(dc.kwh, 0) / ac.kwh END AS efficiency,
           telemetry.verdict(ac.kwh, dc.kwh, ac.n, dc.n, 0.85, 0.75, 0.1) AS verdict
    FROM ac FULL JOIN dc ON dc.vehicle_id = ac.vehicle_id
)
SELECT vehicle_id, efficiency, verdict FROM v WHERE verdict IN ('faulty', 'anomaly')
"""

# Minute batches of the whole fleet, as gateways send them, written by the platform's SQL write path
# (staging table, deduplication, current state, aggregates): the --load sql shortcut.
_MINUTE = {
    "meters": """
        INSERT INTO pg_temp.meter_staging (meter_id, time, kwh_consumed_ac, voltage)
        SELECT format('MTR-%%s', lpad(d::text, 5, '0')), %(minute)s + (d %% 60) * INTERVAL '1 second',
               0.05 + ((d * 7 + %(m)s * 13) %% 100) / 1000.0, 228 + (d %% 5)
        FROM generate_series(0, %(devices)s - 1) d""",
    "vehicles": """
        INSERT INTO pg_temp.vehicle_staging (vehicle_id, time, soc, kwh_delivered_dc, battery_temp)
        SELECT format('EV-%%s', lpad(d::text, 5, '0')), %(minute)s + (d %% 60) * INTERVAL '1 second', 20 + %(m)s %% 80,
               (0.05 + ((d * 7 + %(m)s * 13) %% 100) / 1000.0) * CASE WHEN d %% 50 = 0 THEN 0.62 ELSE 0.91 END,
               25 + (d %% 9)
        FROM generate_series(0, %(devices)s - 1) d""",
}
_INGEST = {"meters": "SELECT * FROM telemetry.ingest_meter_staging()",
           "vehicles": "SELECT * FROM telemetry.ingest_vehicle_staging()"}


def _load_sql(url: str, devices: int, hours: int, end: datetime) -> None:
    start = end - timedelta(hours=hours)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT count(*) FROM telemetry.link_vehicles("
            "ARRAY(SELECT format('EV-%%s', lpad(d::text, 5, '0')) FROM generate_series(0, %(n)s - 1) d), "
            "ARRAY(SELECT format('MTR-%%s', lpad(d::text, 5, '0')) FROM generate_series(0, %(n)s - 1) d), "
            "array_fill(NULL::timestamptz, ARRAY[%(n)s]))", {"n": devices})

    def load_stream(stream: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT telemetry.prepare_staging()")
            for m in range(hours * 60):
                with conn.transaction():
                    conn.execute(_MINUTE[stream], {"minute": start + timedelta(minutes=m), "m": m, "devices": devices})
                    conn.execute(_INGEST[stream])

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(load_stream, ["meters", "vehicles"]))


def _load_http(api: ApiProcess, key: str, devices: int, hours: int) -> dict:
    """`python -m loadgen backfill` against the API, as a gateway would; returns its report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "backfill.json"
        subprocess.run([sys.executable, "-m", "loadgen", "backfill", "--url", api.url, "--api-key", key,
                        "--meters", str(devices), "--vehicles", str(devices), "--hours", str(hours),
                        "--batch-size", "5000", "--concurrency", "4", "--report", str(report)], check=True)
        return json.loads(report.read_text())


def _finish_load(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(120):  # a scheduler on the same server may be refreshing right now
            try:
                run_refresh_policies(conn)
                break
            except psycopg.errors.LockNotAvailable:
                time.sleep(5)
        conn.execute("VACUUM ANALYZE")


def _cpu_s(children: bool = False) -> float:
    """This process's CPU time, all threads (or, with children, that of its finished child processes, the
    C load clients): the load client's own cost, on the cores it shares with the API and PostgreSQL."""
    t = os.times()
    return t.children_user + t.children_system if children else t.user + t.system


def _stats(latencies: list[float], elapsed: float, client_cpu_s: float | None = None) -> dict:
    stats = {"requests": len(latencies), "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
             "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
             "requests_per_s": round(len(latencies) / elapsed, 1)}
    if client_cpu_s is not None:
        stats["client_cpu_us_per_request"] = round(client_cpu_s / len(latencies) * 1e6)
    return stats


async def _http_load(base_url: str, key: str, requests: list[tuple[str, dict]], concurrency: int) -> dict:
    latencies: list[float] = []
    queue = list(reversed(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            path, params = queue.pop()
            t0 = time.perf_counter()
            response = await client.get(path, params=params)
            latencies.append(time.perf_counter() - t0)
            response.raise_for_status()

    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        for path, params in requests[:concurrency]:  # warm-up: connections, cached plans
            (await client.get(path, params=params)).raise_for_status()
        started, cpu = time.perf_counter(), _cpu_s()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, _cpu_s() - cpu
    return _stats(latencies, elapsed, cpu)


def _sql_load(url: str, sql: str, params: list[dict], concurrency: int) -> dict:
    """The same queries straight over psycopg, one connection per concurrent client."""
    queue = list(reversed(params))
    latencies: list[float] = []

    def worker() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql, params[0]).fetchall()  # warm-up
            while queue:
                p = queue.pop()
                t0 = time.perf_counter()
                conn.execute(sql, p).fetchall()
                latencies.append(time.perf_counter() - t0)

    started, cpu = time.perf_counter(), _cpu_s()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: worker(), range(concurrency)))
    return _stats(latencies, time.perf_counter() - started, _cpu_s() - cpu)


PGBENCH = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")) / "pgbench"


def _c_clients_ratio(api_url: str, key: str, database_url: str, vehicles: int, window: dict,
                     concurrency: int, rounds: int = 5, seconds: int = 6) -> dict:
    """The per-vehicle endpoint and its SQL function, each driven by a load client written in C (wrk
    over HTTP, pgbench over the PostgreSQL protocol, prepared statements as psycopg uses them after its
    threshold), same clients, same random vehicles, same window: the Python clients above spend on the
    same two cores much more CPU per HTTP request (httpx) than per query (psycopg), which weighs on the
    endpoint's figure only. Run in `rounds` alternating pairs (wrk, then pgbench), so that a noisy
    neighbour weighs on both sides of a pair alike; the ratio of each pair is reported, and their median.
    None when wrk or pgbench is missing."""
    if shutil.which("wrk") is None or not PGBENCH.exists():
        return {"skipped": "wrk or pgbench is not installed (make bench installs wrk)"}
    frm, to = window["from"].strftime("%Y-%m-%dT%H:%M:%SZ"), window["to"].strftime("%Y-%m-%dT%H:%M:%SZ")
    info = conninfo_to_dict(database_url)
    with tempfile.TemporaryDirectory() as tmp:
        lua, sql = Path(tmp) / "perf.lua", Path(tmp) / "perf.sql"
        lua.write_text(f"""math.randomseed(42)
request = function()
  local v = string.format("EV-%05d", math.random(0, {vehicles - 1}))
  return wrk.format("GET", "/v1/analytics/performance/" .. v .. "?from={frm}&to={to}",
                    {{["Authorization"] = "Bearer {key}"}})
end
""")
        sql.write_text(f"""\\set v random(0, {vehicles - 1})
SELECT * FROM telemetry.vehicle_performance(('EV-' || lpad(:v::text, 5, '0'))::varchar, '{frm}'::timestamptz,
    '{to}'::timestamptz, 0.85, 0.75, 0.1);
""")

        client = {"wrk": [0.0, 0], "pgbench": [0.0, 0]}  # CPU seconds, requests

        def wrk(duration: int) -> str:
            cpu = _cpu_s(children=True)
            out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(lua),
                                  api_url], check=True, capture_output=True, text=True).stdout
            client["wrk"][0] += _cpu_s(children=True) - cpu
            client["wrk"][1] += int(re.search(r"(\d+) requests in", out)[1])
            return out

        def pgbench(duration: int) -> float:
            args = [str(PGBENCH), "-n", f"-c{concurrency}", "-j1", "-M", "prepared", f"-T{duration}", "-f", str(sql),
                    "-h", str(info.get("host", "127.0.0.1")), "-p", str(info.get("port", 5432)),
                    "-U", str(info.get("user", "postgres")), str(info["dbname"])]
            cpu = _cpu_s(children=True)
            out = subprocess.run(args, check=True, capture_output=True, text=True,
                                 env={**os.environ, "PGPASSWORD": str(info.get("password", ""))}).stdout
            client["pgbench"][0] += _cpu_s(children=True) - cpu
            client["pgbench"][1] += int(re.search(r"number of transactions actually processed: (\d+)", out)[1])
            return float(re.search(r"tps = ([\d.]+)", out)[1])

        wrk(3)  # warm-up: connections, cached plans
        pairs, non_2xx, last = [], 0, ""
        for _ in range(rounds):
            last = wrk(seconds)
            http_rps = float(re.search(r"Requests/sec:\s+([\d.]+)", last)[1])
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", last)
            non_2xx += int(bad[1]) if bad else 0
            pairs.append((http_rps, pgbench(seconds)))
    ratios = sorted(h / s for h, s in pairs)
    return {"endpoint_requests_per_s": round(statistics.median(h for h, _ in pairs), 1), "endpoint_non_2xx": non_2xx,
            "endpoint_p50": re.search(r"50%\s+(\S+)", last)[1], "endpoint_p99": re.search(r"99%\s+(\S+)", last)[1],
            "sql_requests_per_s": round(statistics.median(s for _, s in pairs), 1),
            "ratio": round(statistics.median(ratios), 2), "ratio_min": round(ratios[0], 2),
            "ratio_max": round(ratios[-1], 2), "rounds": rounds, "seconds": seconds, "clients": concurrency,
            "client_cpu_us_per_request": {name: round(cpu / max(n, 1) * 1e6) for name, (cpu, n) in client.items()}}


_MARKS = """SELECT telemetry.aggregate_watermark('telemetry.vehicle_energy_10m'),
                   telemetry.aggregate_watermark('telemetry.vehicle_energy_hourly'),
                   (SELECT built_to FROM telemetry.energy_running_range WHERE stream = 'vehicle')"""
# Every aggregate's watermark set back to what the refresh job has materialized until the window's end
# is closed by the margin (ten-minute rows to 10 minutes before it, hours to the hour before it, blocks
# and days as far as closed by then), and the running sums with the hours. The hours the running sums
# no longer hold get their open-hour sums back as the job's fold in the hour's last minute and the
# ingest since leave them: two rows per device and hour (its first 50 minutes and its last 10).
_STAGE_BEFORE_REFRESH = ("""
UPDATE _timescaledb_catalog.continuous_aggs_watermark w
SET watermark = least(w.watermark, _timescaledb_functions.to_unix_microseconds(
        time_bucket(a.width, %(end)s::timestamptz - %(margin)s::interval)))
FROM (VALUES ('10m', INTERVAL '10 minutes'), ('hourly', INTERVAL '1 hour'), ('6h', INTERVAL '6 hours'),
             ('daily', INTERVAL '1 day')) AS a(suffix, width),
     (VALUES ('meter'), ('vehicle')) AS s(stream),
     _timescaledb_catalog.continuous_agg c
WHERE c.user_view_schema = 'telemetry' AND c.user_view_name = s.stream || '_energy_' || a.suffix
  AND w.mat_hypertable_id = c.mat_hypertable_id
""", """
UPDATE telemetry.ten_minute_refreshed
SET refreshed_to = least(refreshed_to, %(end)s::timestamptz - %(margin)s::interval)
""", *(f"""
INSERT INTO telemetry.{stream}_energy_open
SELECT {stream}_id, time_bucket(INTERVAL '1 hour', bucket), sum({kwh}), sum({level}_sum), sum(readings)
FROM telemetry.{stream}_energy_10m_materialized
WHERE bucket >= time_bucket(INTERVAL '1 hour', %(end)s::timestamptz - %(margin)s::interval)
  AND bucket < (SELECT built_to FROM telemetry.energy_running_range WHERE stream = '{stream}')
GROUP BY 1, 2, bucket - time_bucket(INTERVAL '1 hour', bucket) >= INTERVAL '50 minutes'
""" for stream, kwh, level in (("meter", "kwh_consumed_ac", "voltage"), ("vehicle", "kwh_delivered_dc", "battery_temp"))),
"""
UPDATE telemetry.energy_running_range
SET built_to = greatest(built_from, least(built_to, time_bucket(INTERVAL '1 hour',
                                                                %(end)s::timestamptz - %(margin)s::interval)))
""")


# Where the fleet starts reading the open-hour sums (sql/versioned/0017_open_hour_energy.sql): NULL,
# as in a database created with them, or an hour that makes them unread.
_OPEN_HOURS_KEPT = "UPDATE telemetry.open_hours_kept SET from_hour = coalesce(%(from_hour)s::timestamptz, '-infinity')"


def _same(a: object, b: object) -> bool:
    """Equal answers, floats to 1e-9 relative (sums taken in another order)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _fleet_before_refresh(url: str, window: dict, params: dict, repeats: int = 10) -> dict:
    """The fleet over 24 whole hours ending at the last whole hour, as it reads in the first minutes
    after that hour closes, before the refresh job has materialized it: its last hour from the
    open-hour sums, and (alternating with it, under "without_open_hours") as it read without them,
    from ten-minute rows and the last ten minutes of raw readings. Staged inside a rolled-back
    transaction (Community only); both answers must equal the one read from the running sums."""
    if edition(url) != "community":
        return {"skipped": "Apache edition: no refresh job, the aggregate tables are exact at once"}
    query = {**window, **params}
    latencies: list[float] = []
    without: list[float] = []
    # The watermarks are read at run time (telemetry.aggregate_watermark() is no constant the planner
    # could fold into a cached plan), so the queries see the staged ones; the staging is rolled back.
    with psycopg.connect(url, autocommit=True) as conn:
        # The refresh job's margin (sql/versioned/0016_refresh_every_minute.community.sql): a slot is
        # materialized at the first run once it is closed by that much.
        (job,) = refresh_jobs(conn)
        margin = job["config"]["margin"]
        settled_marks = conn.execute(_MARKS).fetchone()
        settled = conn.execute(analytics.FLEET_SQL, query).fetchall()
        with conn.transaction(force_rollback=True):
            for statement in _STAGE_BEFORE_REFRESH:
                conn.execute(statement, {"end": window["to"], "margin": margin})
            marks = conn.execute(_MARKS).fetchone()
            staged = conn.execute(analytics.FLEET_SQL, query).fetchall()  # also the warm-up
            for i in range(repeats):
                for side in ((latencies, without) if i % 2 else (without, latencies)):
                    # The open-hour sums switched off (read from an hour after the window) or on.
                    conn.execute(_OPEN_HOURS_KEPT, {"from_hour": window["to"] if side is without else None})
                    t0 = time.perf_counter()
                    answer = conn.execute(analytics.FLEET_SQL, query).fetchall()
                    side.append(time.perf_counter() - t0)
                    if not _same(answer, settled):
                        raise AssertionError(f"the fleet before the refresh differs from the fleet after it: "
                                             f"{answer} != {settled}")
    if not _same(staged, settled):
        raise AssertionError(f"the fleet before the refresh differs from the fleet after it: {staged} != {settled}")
    return {**_stats(latencies, sum(latencies)), "without_open_hours": _stats(without, sum(without)),
            "ten_minute_watermark": marks[0].isoformat(), "hourly_watermark": marks[1].isoformat(),
            "running_sums_to": marks[2].isoformat(),
            # False: the job had not yet built the window's last hour when measured, so the other
            # rows of the table read it this way too, and this row compares nothing.
            "settled_had_the_hour": settled_marks[2] >= window["to"]}


def _check_same_answers(url: str, windows: list[dict]) -> None:
    """The benchmark compares like with like: the aggregate path and the raw computation agree."""
    thresholds = {"healthy": 0.85, "degraded": 0.75, "min_ac_kwh": 0.1}
    with psycopg.connect(url, autocommit=True) as conn:
        for w in windows:
            fast = conn.execute(analytics.PERFORMANCE_SQL, {**w, **thresholds}).fetchone()
            raw = conn.execute(RAW_PERFORMANCE, w).fetchone()
            if not _same((fast[8], fast[9], fast[3], fast[4]), (raw[4], raw[5], raw[0] or 0.0, raw[1] or 0.0)):
                raise AssertionError(f"aggregate and raw answers differ for {w}: {fast} vs {raw}")


def _alert_pass(url: str, repeats: int) -> dict:
    """evaluate_alerts() on the loaded fleet: first passes (rolled back, so each one opens every
    alert), then steady passes (one committed, then re-run: nothing opens or resolves); and the
    raw-readings computation of the same verdicts, same repetitions."""
    def timed(conn: psycopg.Connection, sql: str, rollback: bool = False) -> tuple[float, list]:
        t0 = time.perf_counter()
        with conn.transaction(force_rollback=rollback):
            rows = conn.execute(sql).fetchall()
        return time.perf_counter() - t0, rows

    def stats(runs: list[tuple[float, list]]) -> dict:
        latencies = [t for t, _ in runs]
        return {"runs": len(runs), "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
                "max_ms": round(max(latencies) * 1000, 1), "rows": len(runs[-1][1])}

    with psycopg.connect(url, autocommit=True) as conn:
        first = [timed(conn, EVALUATE_ALERTS, rollback=True) for _ in range(repeats)]
        raw = [timed(conn, RAW_FLEET_VERDICTS) for _ in range(repeats)]
        timed(conn, EVALUATE_ALERTS)
        steady = [timed(conn, EVALUATE_ALERTS) for _ in range(repeats)]
        opened: dict[str, int] = {}
        for rule, _ in first[-1][1]:
            opened[rule] = opened.get(rule, 0) + 1
        verdicts = {"faulty_charger": sum(1 for r in raw[-1][1] if r[2] == "faulty"),
                    "impossible_energy": sum(1 for r in raw[-1][1] if r[2] == "anomaly")}
    result = {"first_pass": stats(first), "steady_pass": stats(steady), "raw_computation": stats(raw),
              "opened_by_rule": opened, "raw_verdicts": verdicts}
    result["raw_p50_over_first_pass_p50"] = round(result["raw_computation"]["p50_ms"] / result["first_pass"]["p50_ms"], 1)
    result["raw_p50_over_steady_pass_p50"] = round(result["raw_computation"]["p50_ms"] / result["steady_pass"]["p50_ms"], 1)
    return result


# Whole-hour fleet windows are timed ending at each of the last `ends` whole hours (ALIGNMENTS by
# default, 24 for every hour of the day): the rows a window reads depend on where its ends fall among
# the six-hour blocks and days of the aggregate levels, so one window (ending at whatever hour the run
# happens to start) is no fair sample of "any 24 h window". The load covers `ends` hours more than
# `hours` for them.
ALIGNMENTS = 6


def run(devices: int, hours: int, requests: int, concurrency: int, load: str = "http",
        ends: int = ALIGNMENTS) -> dict:
    url = fresh_database("telemetry_bench_analytics")
    key = create_key(url)
    end = datetime.now(UTC)
    started = time.perf_counter()
    loaded_hours = hours + ends
    result: dict = {"devices": devices * 2, "hours": loaded_hours, "load": load}
    # No periodic alert evaluation in the server: the alert pass below measures the first one.
    with ApiProcess(url, DB_POOL_MAX=str(max(concurrency, 4)), ALERT_INTERVAL_S="0") as api:
        if load == "http":
            result["backfill"] = _load_http(api, key, devices, loaded_hours)
        else:
            _load_sql(url, devices, loaded_hours, end.replace(second=0, microsecond=0))
        end = datetime.now(UTC)
        _finish_load(url)
        result["load_s"] = round(time.perf_counter() - started, 1)
        with psycopg.connect(url) as conn:
            result["readings"] = sum(conn.execute(f"SELECT count(*) FROM telemetry.{t}").fetchone()[0]
                                     for t in ("meter_readings", "vehicle_readings"))
        result["alert_evaluation"] = _alert_pass(url, 5)

        # The default window of the endpoint: the last 24 hours, edges anywhere in the hour.
        to = end - timedelta(minutes=1, seconds=17)
        window = {"from": to - timedelta(hours=24), "to": to}
        rng = random.Random(42)
        vehicles = [f"EV-{rng.randrange(devices):05d}" for _ in range(requests)]
        _check_same_answers(url, [{"vehicle": v, **window} for v in vehicles[:20]])
        query = {"from": window["from"].isoformat(), "to": window["to"].isoformat()}
        result["window"] = query
        result["performance_endpoint"] = asyncio.run(_http_load(
            api.url, key, [(f"/v1/analytics/performance/{v}", query) for v in vehicles], concurrency))
        thresholds = {"healthy": 0.85, "degraded": 0.75, "min_ac_kwh": 0.1}
        result["performance_sql"] = _sql_load(url, analytics.PERFORMANCE_SQL,
                                              [{"vehicle": v, **window, **thresholds} for v in vehicles], concurrency)
        result["raw_computation"] = _sql_load(url, RAW_PERFORMANCE, [{"vehicle": v, **window} for v in vehicles],
                                              concurrency)
        # The floor of any SQL-level figure: a statement that reads nothing, same clients.
        result["round_trip_floor"] = _sql_load(url, "SELECT 1", [{}] * requests, concurrency)
        result["performance_c_clients"] = _c_clients_ratio(api.url, key, url, devices, window, concurrency)
        raw, endpoint, sql = result["raw_computation"], result["performance_endpoint"], result["performance_sql"]
        result["endpoint_rps_over_sql_rps"] = round(endpoint["requests_per_s"] / sql["requests_per_s"], 2)
        result["raw_p50_over_endpoint_p50"] = round(raw["p50_ms"] / endpoint["p50_ms"], 1)
        result["raw_p50_over_sql_p50"] = round(raw["p50_ms"] / sql["p50_ms"], 1)
        result["endpoint_rps_over_raw_rps"] = round(endpoint["requests_per_s"] / raw["requests_per_s"], 1)
        result["raw_p50_over_floor_p50"] = round(raw["p50_ms"] / result["round_trip_floor"]["p50_ms"], 1)

        # The same vehicles over 24 whole hours: no partial hour, so no raw reading at all on the
        # aggregate side (an unaligned window needs one hour of raw readings per stream).
        whole_hours_end = to.replace(minute=0, second=0, microsecond=0)
        aligned = {"from": whole_hours_end - timedelta(hours=24), "to": whole_hours_end}
        _check_same_answers(url, [{"vehicle": v, **aligned} for v in vehicles[:20]])
        result["performance_sql_whole_hours"] = _sql_load(
            url, analytics.PERFORMANCE_SQL, [{"vehicle": v, **aligned, **thresholds} for v in vehicles], concurrency)
        result["raw_computation_whole_hours"] = _sql_load(
            url, RAW_PERFORMANCE, [{"vehicle": v, **aligned} for v in vehicles], concurrency)
        result["whole_hours_raw_p50_over_sql_p50"] = round(
            result["raw_computation_whole_hours"]["p50_ms"] / result["performance_sql_whole_hours"]["p50_ms"], 1)

        # 24 whole hours ending at each of the last `ends` whole hours, 5 requests each, interleaved.
        alignments = [{"from": whole_hours_end - timedelta(hours=24 + k), "to": whole_hours_end - timedelta(hours=k)}
                      for k in range(ends)]
        result["fleet_whole_hours_windows"] = [{k: t.isoformat() for k, t in a.items()} for a in alignments]
        result["fleet_endpoint_24_whole_hours"] = asyncio.run(_http_load(
            api.url, key, [("/v1/analytics/fleet", w) for _ in range(5) for w in result["fleet_whole_hours_windows"]],
            1))
        result["fleet_endpoint_last_24h"] = asyncio.run(_http_load(api.url, key, [("/v1/analytics/fleet", query)] * 30, 1))
        # The SQL function behind the fleet endpoint over psycopg, same windows: the share of the
        # endpoint's time that the database spends; and the whole-hour windows one alignment at a time.
        fleet_params = {"worst": 10, **thresholds}
        result["fleet_sql_24_whole_hours"] = _sql_load(
            url, analytics.FLEET_SQL, [{**a, **fleet_params} for _ in range(5) for a in alignments], 1)
        result["fleet_sql_24_whole_hours_by_end"] = {
            a["to"].strftime("%H:%M"): _sql_load(url, analytics.FLEET_SQL, [{**a, **fleet_params}] * 5, 1)
            for a in alignments}
        result["fleet_sql_last_hour_before_refresh"] = _fleet_before_refresh(url, alignments[0], fleet_params)
        result["fleet_sql_last_24h"] = _sql_load(url, analytics.FLEET_SQL, [{**window, **fleet_params}] * 30, 1)
        result["examples"] = {
            "performance": httpx.get(f"{api.url}/v1/analytics/performance/{vehicles[0]}", params=query,
                                     headers={"Authorization": f"Bearer {key}"}, timeout=60).json(),
            "fleet": httpx.get(f"{api.url}/v1/analytics/fleet", params={**query, "worst": 3},
                               headers={"Authorization": f"Bearer {key}"}, timeout=60).json(),
        }
    return result
