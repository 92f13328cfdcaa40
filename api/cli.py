"""The platform's command line: migrate, serve, writer, stream, keys, retention, maintain, alerts, energygrid.
Settings are read from the environment once, here, and passed to what each command runs."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

from api.settings import Settings, SettingsError


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from api.schema.migrations import MigrationError, ensure_app_login, migrate

    try:
        report = migrate(settings.owner_database_url, settings.sql_path)
        login = ensure_app_login(settings.owner_database_url, settings.database_url)
    except MigrationError as exc:
        print(f"migration failed: {exc}", file=sys.stderr)
        return 1
    print(f"edition: {report.edition}")
    print(f"applied: {', '.join(report.applied) or 'nothing new'}")
    print(f"re-applied: {', '.join(report.repeatable)}")
    if login:
        print(f"API role: {login} (member of telemetry_app: reads and writes data, no DDL)")
    if not args.no_stream:
        _stream_setup(settings, args, required=False)
    return 0


def _stream_setup(settings: Settings, args: argparse.Namespace, required: bool = True) -> int:
    from api.stream.log import ensure_streams_now

    try:
        for line in ensure_streams_now(settings):
            print(f"log: {line}")
    except Exception as exc:  # noqa: BLE001 - any failure to reach NATS is reported the same way
        print(f"log: NATS at {_redacted(settings.nats_url)} refused or unreachable ({exc or type(exc).__name__}); "
              "the streams are created by the first writer that starts", file=sys.stderr)
        return 1 if required else 0
    return 0


def _redacted(url: str) -> str:
    scheme, _, rest = url.rpartition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if "@" in rest else url


def _writer(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from api.stream.writer import run_writer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run_writer(settings))
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from api.server.run import serve

    serve(settings, host=args.host or settings.api_host, port=args.port or settings.api_port,
          workers=args.workers or settings.workers)
    return 0


def _keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from api.db.keys import create_key, parse_scopes

    try:
        scopes = parse_scopes(args.scope)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    key_id, key = create_key(settings.database_url, scopes, args.name)
    _enable_mqtt(settings, key_id, key, scopes)
    print(f"created key {key_id} with scopes {','.join(scopes)}; it is shown only once:")
    print(key)
    return 0


def _keys_ensure(settings: Settings, args: argparse.Namespace) -> int:
    """Reuse the key kept in a file while it is valid; otherwise create one and write it there (mode 0600)."""
    from api.db.keys import create_key, key_is_active, parse_scopes, split_key

    scopes = parse_scopes(args.scope)
    path = Path(args.file)
    if path.exists() and key_is_active(settings.database_url, path.read_text(), scopes):
        key = path.read_text().strip()
        _enable_mqtt(settings, split_key(key)[0], key, scopes, only_if_missing=True)
        print(f"reusing the key in {path}")
        print(path.read_text().strip())
        return 0
    key_id, key = create_key(settings.database_url, scopes, args.name)
    _enable_mqtt(settings, key_id, key, scopes)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with 0600 from the start: the secret is never readable by others, not even briefly.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    print(f"created key {key_id} with scopes {','.join(scopes)}, kept in {path}")
    print(key)
    return 0


def _enable_mqtt(settings: Settings, key_id: str, key: str, scopes: list[str], only_if_missing: bool = False) -> None:
    """Store the broker's hash of an ingest key (MQTT devices use it as their password)."""
    import psycopg

    from api.stream.broker import SET_BROKER_HASH_SQL, broker_hash_for

    with psycopg.connect(settings.database_url) as conn:
        if only_if_missing and conn.execute("SELECT broker_hash IS NOT NULL FROM telemetry.api_keys WHERE key_id = %s",
                                            (key_id,)).fetchone()[0]:
            return
        hashed = broker_hash_for(key, scopes)
        if hashed:
            conn.execute(SET_BROKER_HASH_SQL, (hashed, key_id))


def _broker_users(settings: Settings, args: argparse.Namespace) -> int:
    from api.stream.broker import main_watch

    return main_watch(settings, args.file, args.pid_file, args.watch)


def _keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from api.db.keys import list_keys

    for key in list_keys(settings.database_url, include_revoked=args.all):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        print(f"{key.key_id}  {','.join(key.scopes):<18} {state:<24} {key.name or ''}")
    return 0


def _keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from api.db.keys import revoke_key

    if revoke_key(settings.database_url, args.key_id):
        print(f"revoked {args.key_id}")
        return 0
    print(f"no active key {args.key_id}", file=sys.stderr)
    return 1


def _days(text: str) -> timedelta:
    return timedelta(days=float(text))


def _retention(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from api.db.retention import read_retention, set_retention

    if args.retention_command == "set":
        try:
            keep = set_retention(settings.owner_database_url, args.raw_days, args.hourly_days,
                                 None if args.late_margin_s is None else timedelta(seconds=args.late_margin_s))
        except psycopg.errors.CheckViolation as exc:
            print(f"retention not changed: {exc.diag.message_primary}; the raw retention must exceed the late "
                  "margin, and the hourly one be at least 5 days longer than the raw one", file=sys.stderr)
            return 2
    else:
        with psycopg.connect(settings.database_url) as conn:
            keep = read_retention(conn)
    print(f"raw readings:      {keep.raw_readings.days} days")
    print(f"hourly aggregates: {keep.hourly_aggregates.days} days")
    print("daily aggregates:  forever")
    print(f"late margin:       {keep.late_margin}  (readings older than {keep.accepted_age} are refused)")
    return 0


def _maintain(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT relation, dropped_chunk FROM telemetry.run_maintenance()").fetchall()
    for relation, chunk in rows:
        print(f"dropped {chunk} from {relation}")
    print(f"maintenance done: {len(rows)} chunks dropped")
    return 0


def _alerts_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from api.ops.alerts import evaluate_once

    with psycopg.connect(settings.database_url) as conn:
        evaluation = evaluate_once(conn, settings)
        (still_open,) = conn.execute("SELECT count(*) FROM telemetry.alerts WHERE state = 'open'").fetchone()
    for event, changes in (("opened", evaluation.opened), ("resolved", evaluation.resolved)):
        for change in changes:
            value = "" if change.value is None else f"{change.value:g}"
            print(f"{event:<9} {change.rule:<18} {change.device_id:<24} {value}")
    print(f"alerts evaluated: {len(evaluation.opened)} opened, {len(evaluation.resolved)} resolved, "
          f"{still_open} open")
    return 0


def _energygrid_pull(settings: Settings, args: argparse.Namespace) -> int:
    from energygrid.connector import PullConfig, poll

    config = PullConfig(url=args.url, token=args.token, devices=args.devices, min_interval_s=args.min_interval)
    return poll(config, settings.database_url, Path(args.out), every_s=args.every)


def main(argv: list[str] | None = None) -> int:
    from energygrid.protocol import DEFAULT_TOKEN

    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="apply the SQL migrations (as MIGRATE_DATABASE_URL's role), set "
                                                  "up the API's role (DATABASE_URL's user) and the log's streams")
    migrate.add_argument("--no-stream", action="store_true", help="leave the log (NATS_URL) alone")
    migrate.set_defaults(func=_migrate)

    commands.add_parser("writer", help="drain the log (NATS JetStream) into the database; run as many as you "
                                       "like").set_defaults(func=_writer)
    stream = commands.add_parser("stream", help="the log (NATS JetStream)").add_subparsers(dest="stream_command",
                                                                                          required=True)
    users = commands.add_parser("broker-users", help="write the MQTT broker's users (one per ingest key) into a NATS "
                                                     "configuration file, and keep it current with --watch")
    users.add_argument("--file", required=True, help="the file NATS includes (e.g. .local/nats/auth.conf)")
    users.add_argument("--pid-file", help="NATS's pid file: the server is told to reload after each change")
    users.add_argument("--watch", action="store_true", help="keep running: rewrite at every key change")
    users.set_defaults(func=_broker_users)
    stream.add_parser("setup", help="create the streams or update them to the configured limits").set_defaults(
        func=_stream_setup)

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
    ensure = keys.add_parser("ensure", help="reuse the key kept in FILE while it is valid, else create one there "
                                            "(mode 0600); prints it on the last line")
    ensure.add_argument("--file", required=True)
    ensure.add_argument("--scope", required=True, help="comma-separated: ingest,read,admin")
    ensure.add_argument("--name")
    ensure.set_defaults(func=_keys_ensure)
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(func=_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_keys_revoke)

    retention = commands.add_parser("retention", help="show or change how long data is kept").add_subparsers(
        dest="retention_command", required=True)
    retention.add_parser("show", help="the retention the database applies").set_defaults(func=_retention)
    change = retention.add_parser("set", help="change retention (as MIGRATE_DATABASE_URL's role): the settings "
                                              "row and, on Community, the policies, in one transaction")
    change.add_argument("--raw-days", type=_days, help="raw readings (default 30)")
    change.add_argument("--hourly-days", type=_days, help="hourly and six-hour aggregates (default 730)")
    change.add_argument("--late-margin-s", type=float, help="refuse readings this close to expiry (default 3600)")
    change.set_defaults(func=_retention)

    commands.add_parser("maintain", help="apply retention now (drops expired chunks)").set_defaults(func=_maintain)

    alerts = commands.add_parser("alerts", help="the alert rules").add_subparsers(dest="alerts_command",
                                                                                  required=True)
    alerts.add_parser("evaluate", help="evaluate the rules now (waits for an evaluation running elsewhere); "
                                       "prints what opened and resolved").set_defaults(func=_alerts_evaluate)

    energygrid = commands.add_parser("energygrid", help="the EnergyGrid vendor connector").add_subparsers(
        dest="energygrid_command", required=True)
    pull = energygrid.add_parser("pull", help="fetch every device once (or every N seconds) and store the readings")
    pull.add_argument("--url", required=True, help="vendor API base URL")
    pull.add_argument("--token", default=DEFAULT_TOKEN)
    pull.add_argument("--out", required=True, help="directory for the JSON export and the text report")
    pull.add_argument("--every", type=float, help="poll forever, every SECONDS")
    pull.add_argument("--devices", type=int, default=500, help="serials SN-000 onwards")
    pull.add_argument("--min-interval", type=float, default=1.02, help="seconds between requests (vendor: 1/s)")
    pull.set_defaults(func=_energygrid_pull)

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    return args.func(settings, args)
