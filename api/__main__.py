"""Command line: migrate, serve, keys, maintain, energygrid."""

from __future__ import annotations

import argparse
import sys

from api.settings import get_settings


def _migrate(args: argparse.Namespace) -> int:
    from api.migrations import MigrationError, migrate

    settings = get_settings()
    try:
        report = migrate(settings.database_url, settings.sql_dir)
    except MigrationError as exc:
        print(f"migration failed: {exc}", file=sys.stderr)
        return 1
    print(f"edition: {report.edition}")
    print(f"applied: {', '.join(report.applied) or 'nothing new'}")
    print(f"re-applied: {', '.join(report.repeatable)}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from api.server import serve

    settings = get_settings()
    serve(settings, host=args.host or settings.api_host, port=args.port or settings.api_port,
          workers=args.workers or settings.workers)
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from api.auth import create_key, parse_scopes

    try:
        scopes = parse_scopes(args.scope)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    key_id, key = create_key(get_settings().database_url, scopes, args.name)
    print(f"created key {key_id} with scopes {','.join(scopes)}; it is shown only once:")
    print(key)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from api.auth import revoke_key

    if revoke_key(get_settings().database_url, args.key_id):
        print(f"revoked {args.key_id}")
        return 0
    print(f"no active key {args.key_id}", file=sys.stderr)
    return 1


def _maintain(args: argparse.Namespace) -> int:
    import psycopg

    settings = get_settings()
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT relation, dropped_chunk FROM telemetry.run_maintenance(%s, %s)",
            (settings.raw_retention, settings.hourly_retention),
        ).fetchall()
    for relation, chunk in rows:
        print(f"dropped {chunk} from {relation}")
    print(f"maintenance done: {len(rows)} chunks dropped")
    return 0


def _energygrid_pull(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from api.energygrid import PullConfig, default_serials, pull_once

    config = PullConfig(url=args.url, token=args.token, serials=tuple(default_serials(args.devices)),
                        min_interval_s=args.min_interval)
    while True:
        started = time.monotonic()
        report = pull_once(config, get_settings().database_url, Path(args.out))
        print(report.text(), flush=True)
        if not args.every:
            return 1 if report.missing else 0
        time.sleep(max(0.0, args.every - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help="apply the SQL migrations").set_defaults(func=_migrate)

    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=_serve)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; prints it on the last line")
    create.add_argument("--scope", required=True, help="comma-separated: ingest,read,admin")
    create.add_argument("--name")
    create.set_defaults(func=_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_keys_revoke)

    commands.add_parser("maintain", help="apply retention now (drops expired chunks)").set_defaults(func=_maintain)

    energygrid = commands.add_parser("energygrid", help="the EnergyGrid vendor connector").add_subparsers(
        dest="energygrid_command", required=True)
    pull = energygrid.add_parser("pull", help="fetch every device once (or every N seconds) and store the readings")
    pull.add_argument("--url", required=True, help="vendor API base URL")
    pull.add_argument("--token", default="interview_token_123")
    pull.add_argument("--out", required=True, help="directory for the JSON export and the text report")
    pull.add_argument("--every", type=float, help="poll forever, every SECONDS")
    pull.add_argument("--devices", type=int, default=500, help="serials SN-000 onwards")
    pull.add_argument("--min-interval", type=float, default=1.02, help="seconds between requests (vendor: 1/s)")
    pull.set_defaults(func=_energygrid_pull)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
