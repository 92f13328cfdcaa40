"""API keys: creation, hashed storage, listing, revocation and constant-time verification."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

import msgspec
import psycopg

SCOPES = ("ingest", "read", "admin")
KEY_PREFIX = "etk"

INSERT_KEY_SQL = ("INSERT INTO telemetry.api_keys (key_id, secret_hash, scopes, name) VALUES (%s, %s, %s, %s) "
                  "RETURNING created_at")
LIST_KEYS_SQL = ("SELECT key_id, name, scopes, created_at, revoked_at FROM telemetry.api_keys "
                 "WHERE %(all)s OR revoked_at IS NULL ORDER BY created_at, key_id")
REVOKE_KEY_SQL = "UPDATE telemetry.api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL"
ACTIVE_KEY_SQL = "SELECT secret_hash, scopes FROM telemetry.api_keys WHERE key_id = %s AND revoked_at IS NULL"


class KeyFormatError(ValueError):
    """The presented string is not shaped like one of our keys."""


class KeyInfo(msgspec.Struct, rename="camel"):
    """A key as listed: never its secret."""

    key_id: str
    name: str | None
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None = None


def hash_secret(secret: str) -> bytes:
    # Keys carry 256 random bits, so a fast hash is safe; a slow KDF would only cost latency.
    return hashlib.sha256(secret.encode()).digest()


def split_key(api_key: str) -> tuple[str, str]:
    parts = api_key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        raise KeyFormatError("malformed API key")
    return parts[1], parts[2]


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def parse_scopes(raw: str | list[str]) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else raw
    scopes = sorted({s.strip() for s in items if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}; got {raw!r}")
    return scopes


def new_key() -> tuple[str, str, bytes]:
    """(key_id, the full key to hand out once, the hash to store)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}", hash_secret(secret)


def create_key(conninfo: str, scopes: list[str], name: str | None = None) -> tuple[str, str]:
    """Store a new key and return (key_id, full key). The full key is shown once and never stored."""
    key_id, key, secret_hash = new_key()
    with psycopg.connect(conninfo) as conn:
        conn.execute(INSERT_KEY_SQL, (key_id, secret_hash, scopes, name))
    return key_id, key


def key_is_active(conninfo: str, api_key: str, scopes: list[str]) -> bool:
    """Whether the full key is valid, unrevoked and has at least these scopes."""
    try:
        key_id, secret = split_key(api_key.strip())
    except KeyFormatError:
        return False
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(ACTIVE_KEY_SQL, (key_id,)).fetchone()
    return row is not None and secret_matches(secret, row[0]) and set(scopes) <= set(row[1])


def list_keys(conninfo: str, include_revoked: bool = False) -> list[KeyInfo]:
    with psycopg.connect(conninfo) as conn:
        return [KeyInfo(*row) for row in conn.execute(LIST_KEYS_SQL, {"all": include_revoked})]


def revoke_key(conninfo: str, key_id: str) -> bool:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(REVOKE_KEY_SQL, (key_id,)).rowcount == 1
