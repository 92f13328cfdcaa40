"""`make bench`: prints a table and writes bench-results/bench-<time>.json."""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console
from rich.table import Table

from api.settings import PROJECT_ROOT


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", choices=["ingest", "analytics", "energygrid", "loadgen", "stream"],
                        action="append",
                        help="run only these sections (repeatable); default: all")
    parser.add_argument("--devices", type=int, default=10_000, help="meters, and as many vehicles")
    parser.add_argument("--minutes", type=int, default=20, help="readings per device in the ingest benchmark")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="API worker processes")
    parser.add_argument("--server", choices=["granian", "uvicorn"], default="granian")
    parser.add_argument("--fleet-devices", type=int, default=10_000, help="analytics: meters, and as many vehicles")
    parser.add_argument("--fleet-hours", type=int, default=24, help="analytics: hours of history to load")
    parser.add_argument("--fleet-ends", type=int, default=6,
                        help="analytics: time the fleet over 24 whole hours ending at each of the last N hours "
                             "(24: every hour of the day; loads N hours more)")
    parser.add_argument("--requests", type=int, default=2000, help="analytics: performance requests")
    parser.add_argument("--load", choices=["http", "sql"], default="http",
                        help="analytics: load through the API with the load generator (http), or minute batches "
                             "through the SQL write path (sql, faster)")
    parser.add_argument("--speedup", type=float, default=100.0, help="loadgen: simulated minutes per minute")
    parser.add_argument("--duration", default="2m", help="loadgen: wall-clock length of the simulation")
    parser.add_argument("--loadgen-batch-size", type=int, default=500)
    parser.add_argument("--loadgen-concurrency", type=int, default=4)
    parser.add_argument("--stream-duration", default="60s", help="stream: wall-clock length of each path's run")
    parser.add_argument("--stream-outage-duration", default="75s", help="stream: length of the outage run")
    parser.add_argument("--mqtt-connections", type=int, default=4, help="stream: MQTT connections (processes)")
    args = parser.parse_args()
    sections = args.only or ["ingest", "analytics", "energygrid", "loadgen", "stream"]
    console = Console(width=max(Console().width, 130))
    results: dict[str, object] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = PROJECT_ROOT / "bench-results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"

    def save() -> None:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str))

    if "ingest" in sections:
        from bench import ingest

        console.print("[bold]ingest[/]: HTTP bulk ingestion against the direct psycopg pipeline ...")
        r = ingest.run(args.devices, args.minutes, args.batch_size, args.concurrency, args.workers, args.server)
        results["ingest"] = r
        table = Table(title=f"Bulk ingestion: {r['rows']:,} readings, {r['batch_size']} a request, "
                            f"{r['concurrency']} concurrent clients, {r['server']} x{r['workers']}")
        for column in ("pipeline", "rows/s", "request p50 ms", "request p99 ms"):
            table.add_column(column, justify="right")
        table.add_row("direct psycopg (COPY + ingest function)", f"{r['direct_rows_per_s']:,}", "", "")
        table.add_row("HTTP API (JSON, auth, validation, COPY)", f"{r['http_rows_per_s']:,}",
                      str(r["http_request_p50_ms"]), str(r["http_request_p99_ms"]))
        table.add_row("ratio HTTP / direct", f"{r['ratio']:.0%}", "", "")
        if "small_batches" in r:
            s = r["small_batches"]
            table.add_row(f"direct psycopg, {s['batch_size']} a request", f"{s['direct_rows_per_s']:,}", "", "")
            table.add_row(f"HTTP API, {s['batch_size']} a request", f"{s['http_rows_per_s']:,}",
                          str(s["http_request_p50_ms"]), str(s["http_request_p99_ms"]))
            table.add_row(f"ratio HTTP / direct, {s['batch_size']} a request", f"{s['ratio']:.0%}", "", "")
        o = r["open_hours"]
        if "skipped" not in o:
            table.add_row(f"SQL path without the open-hour step ({o['batches']} x {o['batch_size']}, interleaved)",
                          f"{o['rows_per_s_without']:,}", "", "")
            table.add_row("SQL path with it (this release)", f"{o['rows_per_s_with']:,}", "", "")
            table.add_row("ratio with / without", f"{o['ratio']:.0%}", "", "")
        console.print(table)

    if "analytics" in sections:
        from bench import analytics

        console.print(f"[bold]analytics[/]: loading {args.fleet_hours + args.fleet_ends} h of "
                      f"{2 * args.fleet_devices:,} devices ({args.load}) ...")
        r = analytics.run(args.fleet_devices, args.fleet_hours, args.requests, args.concurrency, args.load,
                          args.fleet_ends)
        results["analytics"] = r
        load = (f"backfilled over HTTP at {r['backfill']['rows_per_s']:,} rows/s" if "backfill" in r
                else "loaded through the SQL write path")
        table = Table(title=f"Analytics on {r['readings']:,} readings ({r['devices']:,} devices, {r['hours']} h, "
                            f"{load}; {r['load_s']} s in all)")
        for column in ("query (last 24 h, unaligned edges)", "p50 ms", "p99 ms", "requests/s"):
            table.add_column(column, justify="right")
        for label, key in ((f"GET /v1/analytics/performance/{{id}}, {args.concurrency} clients", "performance_endpoint"),
                           (f"telemetry.vehicle_performance() over psycopg, {args.concurrency} clients",
                            "performance_sql"),
                           (f"same answer over the raw readings, {args.concurrency} clients", "raw_computation"),
                           (f"SELECT 1 over psycopg (the round-trip floor), {args.concurrency} clients",
                            "round_trip_floor")):
            q = r[key]
            table.add_row(label, str(q["p50_ms"]), str(q["p99_ms"]), str(q["requests_per_s"]))
        table.add_row("endpoint requests/s / SQL function requests/s (Python clients: httpx, psycopg)",
                      f"{r['endpoint_rps_over_sql_rps']:.2f}", "", "")
        table.add_row(f"  … the clients' own CPU per request on the same cores: httpx "
                      f"{r['performance_endpoint']['client_cpu_us_per_request']} µs, psycopg "
                      f"{r['performance_sql']['client_cpu_us_per_request']} µs", "", "", "")
        c = r["performance_c_clients"]
        if "ratio" in c:
            table.add_row(f"GET /v1/analytics/performance/{{id}}, wrk, {c['clients']} connections",
                          c["endpoint_p50"], c["endpoint_p99"], str(c["endpoint_requests_per_s"]))
            table.add_row(f"telemetry.vehicle_performance(), pgbench -M prepared, {c['clients']} clients", "", "",
                          str(c["sql_requests_per_s"]))
            table.add_row(f"endpoint requests/s / SQL function requests/s (C clients: wrk, pgbench; median of "
                          f"{c['rounds']} alternating {c['seconds']} s pairs, min-max {c['ratio_min']:.2f}-"
                          f"{c['ratio_max']:.2f})", f"{c['ratio']:.2f}", "", "")
            table.add_row(f"  … the clients' own CPU per request: wrk {c['client_cpu_us_per_request']['wrk']} µs, "
                          f"pgbench {c['client_cpu_us_per_request']['pgbench']} µs", "", "", "")
        else:
            table.add_row(f"C clients: {c['skipped']}", "", "", "")
        table.add_row("raw p50 / endpoint p50", f"{r['raw_p50_over_endpoint_p50']}x", "", "")
        table.add_row("raw p50 / SQL function p50", f"{r['raw_p50_over_sql_p50']}x", "", "")
        table.add_row("endpoint requests/s / raw requests/s", f"{r['endpoint_rps_over_raw_rps']}x", "", "")
        table.add_row("raw p50 / round-trip floor p50 (the most any SQL-level ratio can be)",
                      f"{r['raw_p50_over_floor_p50']}x", "", "")
        for label, key in ((f"telemetry.vehicle_performance(), 24 whole hours, {args.concurrency} clients",
                            "performance_sql_whole_hours"),
                           (f"same answer over the raw readings, 24 whole hours, {args.concurrency} clients",
                            "raw_computation_whole_hours")):
            q = r[key]
            table.add_row(label, str(q["p50_ms"]), str(q["p99_ms"]), str(q["requests_per_s"]))
        table.add_row("24 whole hours: raw p50 / SQL function p50", f"{r['whole_hours_raw_p50_over_sql_p50']}x", "", "")
        ends = len(r["fleet_whole_hours_windows"])
        for label, f in ((f"GET /v1/analytics/fleet, 24 whole hours (ending at each of the last {ends} hours)",
                          r["fleet_endpoint_24_whole_hours"]),
                         ("GET /v1/analytics/fleet, last 24 h", r["fleet_endpoint_last_24h"]),
                         (f"telemetry.fleet_summary() over psycopg, 24 whole hours ({ends} ends)",
                          r["fleet_sql_24_whole_hours"]),
                         *((f"  … ending at {end}", stats)
                           for end, stats in r["fleet_sql_24_whole_hours_by_end"].items()),
                         ("telemetry.fleet_summary() over psycopg, last 24 h", r["fleet_sql_last_24h"])):
            table.add_row(label, str(f["p50_ms"]), str(f["p99_ms"]), str(f["requests_per_s"]))
        b = r["fleet_sql_last_hour_before_refresh"]
        if "skipped" in b:
            table.add_row(f"  … ending at the last whole hour, before its refresh: {b['skipped']}", "", "", "")
        else:
            settled = "" if b["settled_had_the_hour"] else "; the job had not built that hour yet either"
            table.add_row(f"  … ending at the last whole hour, before its refresh (staged: ten-minute rows to "
                          f"{b['ten_minute_watermark'][11:16]}, hours to {b['hourly_watermark'][11:16]}{settled})",
                          str(b["p50_ms"]), str(b["p99_ms"]), str(b["requests_per_s"]))
            w = b["without_open_hours"]
            table.add_row("  … the same without the open-hour sums (ten-minute rows and raw readings, alternating)",
                          str(w["p50_ms"]), str(w["p99_ms"]), str(w["requests_per_s"]))
        console.print(table)
        a = r["alert_evaluation"]
        opened = ", ".join(f"{n:,} {rule}" for rule, n in sorted(a["opened_by_rule"].items()))
        table = Table(title=f"Alert evaluation over the fleet (6 h window; first pass opens {opened}; goal: 1 s)")
        for column in ("pass", "runs", "p50 ms", "max ms", "rows"):
            table.add_column(column, justify="right")
        for label, key in (("telemetry.evaluate_alerts(), first pass (rolled back each time)", "first_pass"),
                           ("telemetry.evaluate_alerts(), steady pass (nothing changes)", "steady_pass"),
                           ("faulty/anomaly verdicts over the raw readings", "raw_computation")):
            q = a[key]
            table.add_row(label, str(q["runs"]), str(q["p50_ms"]), str(q["max_ms"]), f"{q['rows']:,}")
        table.add_row("raw p50 / first pass p50", "", f"{a['raw_p50_over_first_pass_p50']}x", "", "")
        table.add_row("raw p50 / steady pass p50", "", f"{a['raw_p50_over_steady_pass_p50']}x", "", "")
        console.print(table)

    if "loadgen" in sections:
        from bench import loadgen

        console.print(f"[bold]loadgen[/]: {2 * args.fleet_devices:,} devices at --speedup {args.speedup:g} "
                      f"for {args.duration} ...")
        r = loadgen.run(args.fleet_devices, args.speedup, args.duration, args.loadgen_batch_size,
                        args.loadgen_concurrency)
        results["loadgen"] = r
        table = Table(title=f"Load generator: simulate --speedup {r['speedup']:g} --duration {r['duration']} "
                            f"--batch-size {r['batch_size']} --concurrency {r['concurrency']} --verify")
        for column in ("target rows/s", "rows/s", "sent", "inserted", "failed", "p50 ms", "p95 ms", "p99 ms",
                       "verification"):
            table.add_column(column, justify="right")
        lat = r["latency_ms"]
        table.add_row(f"{r['target_rows_per_s']:,}", f"{r['rows_per_s']:,}", f"{r['sent']:,}", f"{r['inserted']:,}",
                      f"{r['failed']:,}", str(lat["p50"]), str(lat["p95"]), str(lat["p99"]),
                      "passed" if r.get("verification", {}).get("passed") else "FAILED")
        console.print(table)

    if "stream" in sections:
        from bench import stream

        console.print(f"[bold]stream[/]: {2 * args.fleet_devices:,} devices at --speedup {args.speedup:g} through each "
                      f"way in for {args.stream_duration}, then a 20 s database outage ...")
        r = stream.run(args.fleet_devices, args.speedup, args.stream_duration, args.loadgen_batch_size,
                       args.loadgen_concurrency, args.mqtt_connections, args.stream_outage_duration)
        results["stream"] = r
        save()  # the stream section takes 18 minutes: its figures are kept whatever the printing does
        stream.print_tables(console, r)

    if "energygrid" in sections:
        from bench import energygrid

        console.print("[bold]energygrid[/]: pulling 500 devices from the mock vendor at 1 request/s ...")
        r = energygrid.run()
        results["energygrid"] = r
        table = Table(title="EnergyGrid pull (goal: 500 devices in at most 51 s, no 429)")
        for column in ("devices fetched", "duration s", "requests", "429 responses", "retries"):
            table.add_column(column, justify="right")
        table.add_row(f"{r['fetched']}/{r['devices']}", str(r["duration_s"]), str(r["requests"]), str(r["http_429"]),
                      str(r["retries"]))
        console.print(table)

    save()
    console.print(f"results written to {path}")


if __name__ == "__main__":
    main()
