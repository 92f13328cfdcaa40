"""API keys: creation, hashed storage, constant-time verification and the scope guard."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import psycopg

SCOPES = ("ingest", "read", "admin")
KEY_PREFIX = "etk"


class KeyFormatError(ValueError):
    """The presented string is not shaped like one of our keys."""


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


def parse_scopes(raw: str) -> list[str]:
    scopes = sorted({s.strip() for s in raw.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be a comma-separated subset of {', '.join(SCOPES)}; got {raw!r}")
    return scopes


def create_key(conninfo: str, scopes: list[str], name: str | None = None) -> tuple[str, str]:
    """Store a new key and return (key_id, full key). The full key is shown once and never stored."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            "INSERT INTO telemetry.api_keys (key_id, secret_hash, scopes, name) VALUES (%s, %s, %s, %s)",
            (key_id, hash_secret(secret), scopes, name),
        )
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"


def revoke_key(conninfo: str, key_id: str) -> bool:
    with psycopg.connect(conninfo) as conn:
        cur = conn.execute(
            "UPDATE telemetry.api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
        )
        return cur.rowcount == 1
