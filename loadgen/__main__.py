"""Command line: simulate, backfill, energygrid-mock."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    mock = commands.add_parser("energygrid-mock", help="serve the mock EnergyGrid vendor API")
    mock.add_argument("--port", type=int, default=3000)
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--token", default="interview_token_123")
    mock.add_argument("--devices", type=int, default=500)
    mock.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 500")
    mock.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    mock.add_argument("--drop-rate", type=float, default=0.0, help="share of connections closed without answer")
    mock.add_argument("--min-interval", type=float, default=1.0, help="the global rate limit, seconds")
    mock.add_argument("--seed", type=int, default=7)

    args = parser.parse_args(argv)
    if args.command == "energygrid-mock":
        from loadgen.energygrid_mock import MockConfig, serve

        print(f"EnergyGrid mock on http://{args.host}:{args.port} (token {args.token!r})", flush=True)
        serve(args.port, MockConfig(token=args.token, devices=args.devices, min_interval_s=args.min_interval,
                                    fail_rate=args.fail_rate, latency_ms=args.latency_ms,
                                    drop_rate=args.drop_rate, seed=args.seed), host=args.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
