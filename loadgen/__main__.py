"""Command line: simulate, backfill, energygrid-mock."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from energygrid.protocol import DEFAULT_TOKEN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    for name, text in (("simulate", "simulate the fleet in (sped-up) real time"),
                       ("backfill", "send hours of history as fast as the server takes it")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--url", required=True, help="the platform's base URL")
        sub.add_argument("--api-key", default=os.environ.get("API_KEY"), help="a key with ingest,read (or API_KEY)")
        sub.add_argument("--meters", type=int, default=10_000)
        sub.add_argument("--vehicles", type=int, default=10_000)
        sub.add_argument("--first-device", type=int, default=0,
                         help="number of the first meter and vehicle (MTR-<n>, EV-<n>): generators with disjoint "
                              "numbers can share a platform")
        sub.add_argument("--speedup", type=float, default=1.0)
        sub.add_argument("--duration", default="10m", help="wall-clock length of a simulation: 90s, 10m, 1h")
        sub.add_argument("--hours", type=float, default=24.0, help="history to backfill")
        sub.add_argument("--seed", type=int, default=1)
        sub.add_argument("--batch-size", type=int, default=1000)
        sub.add_argument("--concurrency", type=int, default=4)
        sub.add_argument("--duplicate-rate", type=float, default=0.0)
        sub.add_argument("--out-of-order-rate", type=float, default=0.0)
        sub.add_argument("--late-rate", type=float, default=0.0)
        sub.add_argument("--alert-window", default="6h", help="the server's ALERT_WINDOW, for --verify")
        sub.add_argument("--alert-silence", default="15m", help="the server's ALERT_SILENCE, for --verify")
        sub.add_argument("--silent-rate", type=float, default=0.0,
                         help="share of chargers (meter and vehicle) that stop reporting halfway through the run")
        sub.add_argument("--report", type=Path, help="write the final report as JSON")
        sub.add_argument("--verify", action="store_true", help="check storage and analytics afterwards")
        sub.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                         help="for --verify (or DATABASE_URL)")
        sub.add_argument("--transport", choices=["http", "http-async", "mqtt"], default="http",
                         help="http: 200 after commit; http-async: Prefer: respond-async, 202 once the log stored "
                              "the batch; mqtt: QoS 1 to each device's topic, accepted at PUBACK")
        sub.add_argument("--mqtt-url", default=os.environ.get("MQTT_URL", "mqtt://127.0.0.1:51883"),
                         help="the broker, for --transport mqtt (or MQTT_URL); --concurrency connections")
        if name == "simulate":
            sub.add_argument("--report-every", type=int, default=1, metavar="MINUTES",
                             help="--transport mqtt: each device publishes its readings of that many simulated "
                                  "minutes as one array (at most --batch-size readings), once every that many "
                                  "minutes, as meters that report load profiles do (default 1: each reading as "
                                  "it is taken)")
        sub.add_argument("--nats-url", default=os.environ.get("NATS_URL"),
                         help="for --verify with an asynchronous transport: where the writers' backlog is read "
                              "(or NATS_URL)")
        sub.add_argument("--drain-timeout", default="300s",
                         help="--verify with an asynchronous transport: how long to wait for the writers")

    mock = commands.add_parser("energygrid-mock", help="serve the mock EnergyGrid vendor API")
    mock.add_argument("--port", type=int, default=3000)
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--token", default=DEFAULT_TOKEN)
    mock.add_argument("--devices", type=int, default=500)
    mock.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 500")
    mock.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    mock.add_argument("--drop-rate", type=float, default=0.0, help="share of connections closed without answer")
    mock.add_argument("--min-interval", type=float, default=1.0, help="the global rate limit, seconds")
    mock.add_argument("--seed", type=int, default=7)
    mock.add_argument("--units", default="kW", help="power units the devices write, comma-separated: W,kW,MW")
    mock.add_argument("--malformed-rate", type=float, default=0.0,
                      help="share of items replaced by a malformed one (negative power, missing field, ...)")

    args = parser.parse_args(argv)
    if args.command in ("simulate", "backfill"):
        from loadgen.run import RunOptions, parse_duration, run

        if not args.api_key:
            parser.error("an API key is needed: --api-key or API_KEY")
        if args.meters != args.vehicles:
            parser.error("each meter feeds one vehicle's charger: --meters and --vehicles must be equal")
        if args.verify and not args.database_url:
            parser.error("--verify also reads the database: --database-url or DATABASE_URL")
        if args.verify and args.transport != "http" and not args.nats_url:
            parser.error("--verify after an asynchronous run waits for the writers: --nats-url or NATS_URL")
        report = run(RunOptions(
            url=args.url, api_key=args.api_key, devices=args.meters, first_device=args.first_device, mode=args.command, speedup=args.speedup,
            duration_s=parse_duration(args.duration), hours=args.hours, seed=args.seed, batch_size=args.batch_size,
            concurrency=args.concurrency, duplicate_rate=args.duplicate_rate, out_of_order_rate=args.out_of_order_rate,
            late_rate=args.late_rate, silent_rate=args.silent_rate,
            alert_window_s=parse_duration(args.alert_window), alert_silence_s=parse_duration(args.alert_silence),
            report_path=args.report, verify=args.verify, database_url=args.database_url, transport=args.transport,
            mqtt_url=args.mqtt_url, report_every=getattr(args, "report_every", 1), nats_url=args.nats_url,
            drain_timeout_s=parse_duration(args.drain_timeout)))
        failed = report["failed"] or report["rejected"] or not report.get("verification", {"passed": True})["passed"]
        return 1 if failed else 0
    if args.command == "energygrid-mock":
        from energygrid.mock import MockConfig, serve

        print(f"EnergyGrid mock on http://{args.host}:{args.port} (token {args.token!r})", flush=True)
        serve(args.port, MockConfig(token=args.token, devices=args.devices, min_interval_s=args.min_interval,
                                    fail_rate=args.fail_rate, latency_ms=args.latency_ms,
                                    drop_rate=args.drop_rate, seed=args.seed,
                                    units=tuple(u.strip() for u in args.units.split(",") if u.strip()),
                                    malformed_rate=args.malformed_rate), host=args.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
