"""API keys: creation, hashed storage, listing, revocation and constant-time verification; the
per-process cache of key lookups, kept current by PostgreSQL LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from datetime import datetime
from typing import NamedTuple

import msgspec
import psycopg
from prometheus_client import Counter, Gauge
from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = logging.getLogger("api.keys")

SCOPES = ("ingest", "read", "admin")
KEY_PREFIX = "etk"

INSERT_KEY_SQL = ("INSERT INTO telemetry.api_keys (key_id, secret_hash, scopes, name) VALUES (%s, %s, %s, %s) "
                  "RETURNING created_at")
LIST_KEYS_SQL = ("SELECT key_id, name, scopes, created_at, revoked_at FROM telemetry.api_keys "
                 "WHERE %(all)s OR revoked_at IS NULL ORDER BY created_at, key_id")
REVOKE_KEY_SQL = "UPDATE telemetry.api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL"
ACTIVE_KEY_SQL = "SELECT secret_hash, scopes FROM telemetry.api_keys WHERE key_id = %s AND revoked_at IS NULL"
LOOKUP_KEY_SQL = "SELECT secret_hash, scopes, revoked_at IS NOT NULL FROM telemetry.api_keys WHERE key_id = %s"
# The channel the trigger of sql/repeatable/15_key_notify.sql notifies with the key id of each change.
KEY_CHANNEL = "telemetry_api_keys"

KEY_LOOKUPS = Counter("telemetry_api_key_lookups_total", "API key lookups, by where the answer came from",
                      ["source"])
_FROM_CACHE, _FROM_DATABASE = KEY_LOOKUPS.labels("cache"), KEY_LOOKUPS.labels("database")
# Per worker process (multiprocess mode "all" keeps each worker's pid as a label).
CACHED_KEYS = Gauge("telemetry_api_key_cache_entries", "Key ids this worker's key cache holds",
                    multiprocess_mode="all")
KEY_LISTENER_UP = Gauge("telemetry_api_key_listener_up",
                        "1 while this worker listens for key changes (and trusts its key cache), else 0",
                        multiprocess_mode="all")


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


class StoredKey(NamedTuple):
    """What the database says about a key id: its hash and scopes, and whether it is revoked."""

    secret_hash: bytes
    scopes: frozenset[str]
    revoked: bool

    def scopes_for(self, secret: str) -> frozenset[str] | None:
        """The key's scopes if the secret is this key's and the key is not revoked, else None."""
        return None if self.revoked or not secret_matches(secret, self.secret_hash) else self.scopes


class KeyCache:
    """This process's key lookups (key id -> StoredKey, or "no such key"), trusted only while the
    process listens for key changes (listen_for_key_changes) and for at most ttl_s.

    Unknown key ids are cached too, so a client retrying a bad key costs no query, in a separate
    table bounded by max_entries (oldest forgotten first): random key ids cannot grow memory."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.listening = False
        self._known: dict[str, tuple[float, StoredKey]] = {}
        self._unknown: dict[str, float] = {}
        # Keys verified in the database, kept across a lost listener for database outages only.
        self._verified: dict[str, tuple[float, StoredKey]] = {}
        # Bumped by every invalidation: a lookup that was in flight across one is used once, not stored,
        # since its answer may predate the change.
        self._generation = 0

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)

    async def lookup(self, pool: AsyncConnectionPool, key_id: str) -> StoredKey | None:
        """The key's row, from the cache when it may be trusted, else from the database."""
        if self.listening:
            now = time.monotonic()
            known = self._known.get(key_id)
            if known is not None and now - known[0] < self.ttl_s:
                _FROM_CACHE.inc()
                return known[1]
            unknown_since = self._unknown.get(key_id)
            if unknown_since is not None and now - unknown_since < self.ttl_s:
                _FROM_CACHE.inc()
                return None
        generation = self._generation
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(LOOKUP_KEY_SQL, (key_id,))
                row = await cur.fetchone()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            # The database is down: nobody can revoke a key meanwhile, so a key this process verified
            # within ttl_s still opens the paths that work without the database (asynchronous ingestion
            # into the log). Without such a lookup, the request fails as before (503).
            seen = self._verified.get(key_id)
            if seen is not None and time.monotonic() - seen[0] < self.ttl_s:
                KEY_LOOKUPS.labels("outage").inc()
                return seen[1]
            raise exc
        _FROM_DATABASE.inc()
        stored = None if row is None else StoredKey(row[0], frozenset(row[1]), row[2])
        if stored is not None and generation == self._generation:
            self._verified.pop(key_id, None)
            if len(self._verified) >= self.max_entries:
                del self._verified[next(iter(self._verified))]
            self._verified[key_id] = (time.monotonic(), stored)
        if self.listening and generation == self._generation:
            self._remember(key_id, stored)
        return stored

    def _remember(self, key_id: str, stored: StoredKey | None) -> None:
        table: dict = self._unknown if stored is None else self._known
        table.pop(key_id, None)
        if len(table) >= self.max_entries:
            del table[next(iter(table))]  # dicts keep insertion order: the oldest entry
        table[key_id] = time.monotonic() if stored is None else (time.monotonic(), stored)
        CACHED_KEYS.set(len(self))

    def forget(self, key_id: str) -> None:
        """A key changed (or, for an empty key id, any number of keys did)."""
        if not key_id:
            self.forget_all()
            return
        self._generation += 1
        self._known.pop(key_id, None)
        self._unknown.pop(key_id, None)
        self._verified.pop(key_id, None)
        CACHED_KEYS.set(len(self))

    def forget_all(self, keep_verified: bool = False) -> None:
        self._generation += 1
        self._known.clear()
        self._unknown.clear()
        if not keep_verified:
            self._verified.clear()
        CACHED_KEYS.set(0)

    def trust(self, listening: bool) -> None:
        """Start or stop trusting the cache; either way, what it held may have missed changes."""
        self.listening = listening
        self.forget_all(keep_verified=not listening)
        KEY_LISTENER_UP.set(int(listening))


async def listen_for_key_changes(conninfo: str, cache: KeyCache, heartbeat_s: float = 5.0,
                                 reconnect_s: float = 0.5) -> None:
    """Run until cancelled: one connection LISTENs for key changes and makes the cache forget each
    changed key. While that connection is down (or not yet up) the cache is not trusted: every
    request looks its key up in the database. A heartbeat query finds a silently dead connection."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, application_name="telemetry-api-keys", connect_timeout=5,
            ) as conn:
                await conn.execute(f"LISTEN {KEY_CHANNEL}")
                cache.trust(True)  # after LISTEN: every change from now on will be heard
                while True:
                    async for notify in conn.notifies(timeout=heartbeat_s):
                        cache.forget(notify.payload)
                    await conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            if cache.listening:
                log.warning("lost the key-change listener (%s); looking keys up in the database until it is back",
                            exc)
        finally:
            cache.trust(False)
        await asyncio.sleep(reconnect_s)
