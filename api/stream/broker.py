"""MQTT devices authenticate to NATS, which checks passwords itself against its users file. This module
writes that file from the API keys: the service user of the API and the writers (from NATS_URL's
credentials), and one MQTT-only user per active key with the ingest scope, named by the key's id, its
password the bcrypt hash of the whole key (stored at the key's creation, api_keys.broker_hash). A
device connects with username = its key's id (``etk_<id>_…``) and password = the key.

``python -m api broker-users --file F --pid-file P --watch`` keeps the file current: it listens for key
changes (the telemetry_api_keys notifications), rewrites the file and signals NATS to reload it (SIGHUP)
so a revoked key is refused at the device's next connect."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import bcrypt
import psycopg

from api.settings import Settings

# bcrypt cost: the broker checks the hash at every MQTT connect (about 50 ms at 10 here).
BCRYPT_ROUNDS = 10
CHANNEL = "telemetry_api_keys"
SET_BROKER_HASH_SQL = "UPDATE telemetry.api_keys SET broker_hash = %s WHERE key_id = %s"
MQTT_USERS_SQL = ("SELECT key_id, broker_hash FROM telemetry.api_keys WHERE revoked_at IS NULL "
                  "AND broker_hash IS NOT NULL AND 'ingest' = ANY (scopes) ORDER BY key_id")
# What an MQTT device may do: publish readings (the MQTT topics telemetry/meters/<id> and
# telemetry/vehicles/<id>), nothing else, and only over MQTT.
_DEVICE_PERMISSIONS = {
    "publish": {"allow": ["telemetry.meters", "telemetry.meters.>", "telemetry.vehicles", "telemetry.vehicles.>"]},
    "subscribe": {"deny": [">"]},
}


def broker_hash(key: str) -> str:
    return bcrypt.hashpw(key.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()


def broker_hash_for(key: str, scopes: list[str]) -> str | None:
    """The hash to store with a new key: only ingest keys may publish over MQTT."""
    return broker_hash(key) if "ingest" in scopes else None


def service_credentials(nats_url: str) -> tuple[str, str]:
    parts = urlsplit(nats_url)
    if not parts.username or not parts.password:
        raise ValueError("NATS_URL names no user and password (nats://user:password@host:port): the broker's "
                         "users file needs the service user that the API and the writers connect as")
    return unquote(parts.username), unquote(parts.password)


def users_config(settings: Settings, conn: psycopg.Connection) -> str:
    """The NATS ``authorization`` block (JSON is valid NATS configuration syntax)."""
    user, password = service_credentials(settings.nats_url)
    users = [{"user": user, "password": password}]
    for key_id, hashed in conn.execute(MQTT_USERS_SQL):
        users.append({"user": key_id, "password": hashed, "allowed_connection_types": ["MQTT"],
                      "permissions": _DEVICE_PERMISSIONS})
    return ("# Written by `python -m api broker-users`: do not edit, it is rewritten at every key change.\n"
            f"authorization {json.dumps({'users': users}, indent=2)}\n")


def write_users_file(settings: Settings, conn: psycopg.Connection, path: Path) -> int:
    """Write the file atomically (mode 0600); returns the number of MQTT users."""
    text = users_config(settings, conn)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth-")
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)
    return text.count('"allowed_connection_types"')


def reload_broker(pid_file: Path | None) -> bool:
    if pid_file is None or not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
    except (ValueError, ProcessLookupError):
        return False
    return True


def sync_users(settings: Settings, path: Path, pid_file: Path | None, watch: bool) -> int:
    while True:
        try:
            with psycopg.connect(settings.database_url, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                while True:
                    count = write_users_file(settings, conn, path)
                    reloaded = reload_broker(pid_file)
                    print(f"broker users: {count} MQTT users written to {path}"
                          + ("; NATS reloaded" if reloaded else ""), flush=True)
                    if not watch:
                        return 0
                    # Wait for a key change (or five minutes), then take the notifications that came with it.
                    for _ in conn.notifies(timeout=300, stop_after=1):
                        pass
                    for _ in conn.notifies(timeout=0.1):
                        pass
        except psycopg.OperationalError as exc:
            if not watch:
                raise
            print(f"broker users: database unavailable ({type(exc).__name__}); retrying", file=sys.stderr, flush=True)
            time.sleep(1)


def main_watch(settings: Settings, file: str, pid_file: str | None, watch: bool) -> int:
    try:
        return sync_users(settings, Path(file), Path(pid_file) if pid_file else None, watch)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
