"""API keys: every request is authenticated against the stored keys (hashed, revocable within a
second on every worker: each process caches lookups and hears changes through LISTEN/NOTIFY) and
each operation needs its scope; admin keys manage keys over HTTP (POST, GET and DELETE /v1/keys)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.db.keys import KeyCache, revoke_key, split_key
from api.db.pool import create_pool
from api.server.process import ApiProcess
from tests.fix_api import Keys, count_rows, settings_for
from tests.fix_readings import meter

KEYS = "/v1/keys"
M = "/v1/telemetry/meters"
# Answered 404 to a valid read key (no such meter), 403 to a valid key without the read scope,
# 401 once the key is revoked; it writes nothing.
STATUS = "/v1/meters/MTR-NONE/status"
REVOCATION_BOUND_S = 1.0
WORKERS = 2
LISTENERS = ("SELECT pid FROM pg_stat_activity WHERE application_name = 'telemetry-api-keys' "
             "AND datname = current_database()")


def create(client: TestClient, admin: str, scopes: list[str], name: str | None = None) -> dict:
    response = client.post(KEYS, json={"scopes": scopes, **({"name": name} if name else {})},
                           headers=Keys.header(admin))
    assert response.status_code == 201, response.text
    return response.json()


def stored(conn: psycopg.Connection) -> dict[str, tuple]:
    """key_id -> (secret_hash, scopes, name, revoked_at), and the whole row as text."""
    rows = conn.execute("SELECT key_id, secret_hash, scopes, name, revoked_at, t::text FROM telemetry.api_keys t")
    return {row[0]: row[1:] for row in rows}


def refused_within(status: Callable[[], int], seconds: float = REVOCATION_BOUND_S) -> float:
    """Asks until the answer is 401 and returns how long that took; fails once `seconds` have passed."""
    started = time.monotonic()
    while (answer := status()) != 401:
        assert time.monotonic() - started < seconds, f"the revoked key still got {answer} after {seconds} s"
    return time.monotonic() - started


def strings_in(value: object) -> list[str]:
    """Every string anywhere in a decoded JSON document, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings_in(v))]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


# Authentication and scopes


def test_no_key_is_401(client: TestClient, conn) -> None:
    response = client.post(M, json=[meter(0)])
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"] == "unauthorized"
    assert count_rows(conn)["meter_readings"] == 0


@pytest.mark.parametrize("authorization", ["Bearer nonsense", "Bearer etk_000000000000_wrong", "Basic abc", "Bearer "])
def test_an_unknown_key_is_401(client: TestClient, keys: Keys, conn, authorization: str) -> None:
    response = client.post(M, json=[meter(0)], headers={"Authorization": authorization})
    assert response.status_code == 401
    assert count_rows(conn)["meter_readings"] == 0


def test_a_right_key_id_with_a_wrong_secret_is_401(client: TestClient, keys: Keys, conn) -> None:
    key_id, _ = split_key(keys.ingest)
    response = client.post(M, json=[meter(0)], headers=Keys.header(f"etk_{key_id}_{'A' * 43}"))
    assert response.status_code == 401
    assert count_rows(conn)["meter_readings"] == 0


def test_a_key_without_the_scope_is_403(client: TestClient, keys: Keys, conn) -> None:
    assert client.post(M, json=[meter(0)], headers=Keys.header(keys.read)).status_code == 403
    assert client.put("/v1/vehicles/EV-1/meter", json={"meterId": "M-1"},
                      headers=Keys.header(keys.read)).status_code == 403
    assert client.get("/v1/meters/M/status", headers=Keys.header(keys.ingest)).status_code == 403
    assert count_rows(conn) == {k: 0 for k in count_rows(conn)}


def test_a_key_revoked_from_the_command_line_stops_working_within_a_second(
    client: TestClient, keys: Keys, database, conn
) -> None:
    assert client.post(M, json=[meter(0)], headers=Keys.header(keys.ingest)).status_code == 200
    key_id, _ = split_key(keys.ingest)
    assert revoke_key(database.url, key_id)
    refused_within(lambda: client.get(STATUS, headers=Keys.header(keys.ingest)).status_code)
    assert client.post(M, json=[meter(1)], headers=Keys.header(keys.ingest)).status_code == 401
    assert count_rows(conn)["meter_readings"] == 1


def test_keys_are_stored_hashed(keys: Keys, conn) -> None:
    rows = stored(conn)
    secrets = {split_key(k)[1] for k in (keys.ingest, keys.read, keys.admin, keys.all)}
    assert len(rows) == 4
    for secret_hash, _scopes, _name, _revoked, text in rows.values():
        assert len(secret_hash) == 32 and all(s.encode() not in secret_hash and s not in text for s in secrets)


def test_health_metrics_and_the_documentation_need_no_key(client: TestClient) -> None:
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "telemetry_readings_total" in metrics.text
    assert client.get("/schema/openapi.json").status_code == 200


# Key management (admin scope)


def test_an_admin_key_creates_a_key_shown_once_and_stored_only_as_its_hash(
    client: TestClient, keys: Keys, conn
) -> None:
    before = datetime.now(UTC)
    response = client.post(KEYS, json={"scopes": ["read", "ingest"], "name": "charger fleet 7"},
                           headers=Keys.header(keys.admin))

    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == {"key", "keyId", "name", "scopes", "createdAt", "revokedAt"}
    assert created["scopes"] == ["ingest", "read"] and created["name"] == "charger fleet 7"
    assert created["revokedAt"] is None
    key_id, secret = split_key(created["key"])
    assert key_id == created["keyId"] and len(secret) >= 40
    created_at = datetime.fromisoformat(created["createdAt"])
    assert before - timedelta(seconds=5) <= created_at <= datetime.now(UTC) + timedelta(seconds=5)

    secret_hash, scopes, name, revoked_at, text = stored(conn)[key_id]
    assert secret_hash == hashlib.sha256(secret.encode()).digest()
    assert (scopes, name, revoked_at) == (["ingest", "read"], "charger fleet 7", None)
    assert secret not in text and created["key"] not in text


def test_a_created_key_works_at_once_and_only_within_its_scopes(client: TestClient, keys: Keys, conn) -> None:
    ingest = create(client, keys.admin, ["ingest"])["key"]
    read = create(client, keys.admin, ["read"])["key"]

    stored_reading = client.post(M, json=[meter(0)], headers=Keys.header(ingest))
    assert stored_reading.status_code == 200 and stored_reading.json()["inserted"] == 1
    status = client.get("/v1/meters/MTR-0001/status", headers=Keys.header(read))
    assert status.status_code == 200 and status.json()["meterId"] == "MTR-0001"

    assert client.get("/v1/meters/MTR-0001/status", headers=Keys.header(ingest)).status_code == 403
    refused = client.post(M, json=[meter(1)], headers=Keys.header(read))
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    for key in (ingest, read):
        assert client.get(KEYS, headers=Keys.header(key)).status_code == 403
        assert client.post(KEYS, json={"scopes": ["admin"]}, headers=Keys.header(key)).status_code == 403
    assert count_rows(conn)["meter_readings"] == 1


def test_the_list_shows_every_key_and_never_a_secret(client: TestClient, keys: Keys, conn) -> None:
    created = create(client, keys.admin, ["ingest"], name="meter gateway")

    response = client.get(KEYS, headers=Keys.header(keys.admin))

    assert response.status_code == 200
    listed = {k["keyId"]: k for k in response.json()["keys"]}
    assert set(listed) == set(stored(conn)) and len(listed) == 5
    assert listed[created["keyId"]] == {"keyId": created["keyId"], "name": "meter gateway", "scopes": ["ingest"],
                                        "createdAt": created["createdAt"], "revokedAt": None}
    every_key = [created["key"], keys.ingest, keys.read, keys.admin, keys.all]
    secrets = [split_key(key)[1] for key in every_key]
    assert not any(secret in response.text for secret in secrets)
    assert not any(secret in value for value in strings_in(response.json()) for secret in secrets)


def test_a_revoked_key_is_refused_within_a_second_and_listed_only_with_include_revoked(
    client: TestClient, keys: Keys, conn
) -> None:
    created = create(client, keys.admin, ["ingest"])
    key, key_id = created["key"], created["keyId"]
    assert client.post(M, json=[meter(0)], headers=Keys.header(key)).status_code == 200

    revoked = client.delete(f"{KEYS}/{key_id}", headers=Keys.header(keys.admin))

    assert revoked.status_code == 204 and revoked.content == b""
    assert stored(conn)[key_id][3] is not None
    refused_within(lambda: client.get(STATUS, headers=Keys.header(key)).status_code)
    refused = client.post(M, json=[meter(1)], headers=Keys.header(key))
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    again = client.delete(f"{KEYS}/{key_id}", headers=Keys.header(keys.admin))
    assert again.status_code == 404 and again.json()["error"] == "not_found"

    active = client.get(KEYS, headers=Keys.header(keys.admin)).json()["keys"]
    assert key_id not in {k["keyId"] for k in active}
    everything = client.get(KEYS, params={"includeRevoked": "true"}, headers=Keys.header(keys.admin))
    listed = {k["keyId"]: k for k in everything.json()["keys"]}
    assert datetime.fromisoformat(listed[key_id]["revokedAt"]) >= datetime.fromisoformat(listed[key_id]["createdAt"])
    assert set(listed) == set(stored(conn)) == {k["keyId"] for k in active} | {key_id}
    assert split_key(key)[1] not in everything.text
    assert count_rows(conn)["meter_readings"] == 1


def test_an_admin_key_can_revoke_itself(client: TestClient, keys: Keys) -> None:
    admin_id, _ = split_key(keys.admin)
    assert client.delete(f"{KEYS}/{admin_id}", headers=Keys.header(keys.admin)).status_code == 204
    refused_within(lambda: client.get(KEYS, headers=Keys.header(keys.admin)).status_code)
    assert admin_id not in {k["keyId"] for k in client.get(KEYS, headers=Keys.header(keys.all)).json()["keys"]}


@pytest.mark.parametrize("key_name", ["none", "ingest", "read"])
def test_only_admin_keys_manage_keys(client: TestClient, keys: Keys, conn, key_name: str) -> None:
    headers = {} if key_name == "none" else Keys.header(getattr(keys, key_name))
    expected = 401 if key_name == "none" else 403
    target_id, _ = split_key(keys.all)
    before = stored(conn)

    created = client.post(KEYS, json={"scopes": ["admin"]}, headers=headers)
    listed = client.get(KEYS, params={"includeRevoked": "true"}, headers=headers)
    revoked = client.delete(f"{KEYS}/{target_id}", headers=headers)

    assert [created.status_code, listed.status_code, revoked.status_code] == [expected] * 3
    assert "keys" not in listed.json() and target_id not in listed.text
    assert stored(conn) == before
    assert client.get(KEYS, headers=Keys.header(keys.all)).status_code == 200  # the target still works


@pytest.mark.parametrize("body", [
    {"scopes": []},
    {"scopes": ["root"]},
    {"scopes": ["read", "superuser"]},
    {"scopes": "read"},
    {},
    {"scopes": ["read"], "expiresAt": "2030-01-01T00:00:00Z"},
    {"scopes": ["read"], "name": "x" * 201},
    {"scopes": ["read"], "name": "nul\u0000byte"},
    {"scopes": ["read"], "name": "trailing line break\n"},
    '{"scopes": ["read"]',
    "[]",
], ids=["empty", "unknown", "one-unknown", "not-a-list", "no-scopes", "unknown-field", "long-name", "nul-in-name",
        "line-break-in-name", "truncated-json", "not-an-object"])
def test_an_invalid_new_key_is_422_and_stores_nothing(client: TestClient, keys: Keys, conn, body: object) -> None:
    before = stored(conn)
    content = body if isinstance(body, str) else json.dumps(body)

    response = client.post(KEYS, content=content,
                           headers={**Keys.header(keys.admin), "Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input" and response.json()["message"]
    assert stored(conn) == before


@pytest.mark.parametrize(("key_id", "status"), [("0123456789ab", 404), ("x" * 65, 422), ("bad%00id", 422)])
def test_revoking_an_unknown_or_malformed_key_id_revokes_nothing(
    client: TestClient, keys: Keys, conn, key_id: str, status: int
) -> None:
    before = stored(conn)
    response = client.delete(f"{KEYS}/{key_id}", headers=Keys.header(keys.admin))
    assert response.status_code == status, response.text
    assert response.json()["error"] == ("not_found" if status == 404 else "invalid_input")
    assert stored(conn) == before


# The key cache: every worker process caches lookups and forgets a key when the database notifies a change


def per_worker(server: ApiProcess, name: str) -> dict[str, float]:
    """A per-process gauge of every worker (scraped over a new connection): pid -> value."""
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    return {s.labels["pid"]: s.value for family in text_string_to_metric_families(response.text)
            for s in family.samples if s.name == name}


def status_over_a_new_connection(server: ApiProcess, key: str) -> int:
    """A new connection each time, so that the kernel hands the requests to any worker."""
    return httpx.get(f"{server.url}{STATUS}", headers=Keys.header(key), timeout=10).status_code


def serving_with_warm_caches(live_server_factory: Callable[..., ApiProcess], key: str) -> ApiProcess:
    """A server of WORKERS processes, each listening for key changes and holding `key` in its cache."""
    server = live_server_factory(workers=WORKERS)
    deadline = time.monotonic() + 30
    while list(per_worker(server, "telemetry_api_key_listener_up").values()).count(1) < WORKERS:
        assert time.monotonic() < deadline, "the workers did not all start listening for key changes"
    while len([n for n in per_worker(server, "telemetry_api_key_cache_entries").values() if n >= 1]) < WORKERS:
        assert status_over_a_new_connection(server, key) == 404
        assert time.monotonic() < deadline, "the requests did not reach every worker"
    return server


def assert_refused_by_every_worker(server: ApiProcess, key: str) -> None:
    refused_within(lambda: status_over_a_new_connection(server, key))
    # Then every worker refuses it: no process still trusts its cached copy (KEY_CACHE_S is 300 s).
    assert [status_over_a_new_connection(server, key) for _ in range(8 * WORKERS)] == [401] * 8 * WORKERS


@pytest.mark.parametrize("how", ["http", "sql"])
def test_a_revoked_key_stops_working_within_a_second_on_every_worker(
    live_server_factory, keys: Keys, conn, how: str
) -> None:
    server = serving_with_warm_caches(live_server_factory, keys.read)
    key_id, _ = split_key(keys.read)

    if how == "http":
        revoked = httpx.delete(f"{server.url}{KEYS}/{key_id}", headers=Keys.header(keys.admin), timeout=10)
        assert revoked.status_code == 204
    else:
        assert conn.execute("UPDATE telemetry.api_keys SET revoked_at = now() WHERE key_id = %s",
                            (key_id,)).rowcount == 1

    assert_refused_by_every_worker(server, keys.read)
    assert status_over_a_new_connection(server, keys.all) == 404  # other keys still work


def test_the_cache_does_not_outlive_a_lost_listener(live_server_factory, keys: Keys, conn) -> None:
    server = serving_with_warm_caches(live_server_factory, keys.read)
    key_id, _ = split_key(keys.read)
    listeners = [pid for (pid,) in conn.execute(LISTENERS)]
    assert len(listeners) == WORKERS

    # The revocation commits after every listener is gone: no worker is ever notified of it.
    with conn.transaction():
        terminated = conn.execute(f"SELECT pg_terminate_backend(pid, 5000) FROM ({LISTENERS}) l").fetchall()
        conn.execute("UPDATE telemetry.api_keys SET revoked_at = now() WHERE key_id = %s", (key_id,))
    assert terminated == [(True,)] * WORKERS

    assert_refused_by_every_worker(server, keys.read)
    # The workers listen again (on new connections) and cache again.
    def listening_again() -> bool:
        now = {pid for (pid,) in conn.execute(LISTENERS)}
        return len(now) == WORKERS and not now & set(listeners)

    deadline = time.monotonic() + 30
    while not listening_again():
        assert time.monotonic() < deadline, "the workers did not listen again"
    while list(per_worker(server, "telemetry_api_key_listener_up").values()).count(1) < WORKERS:
        assert time.monotonic() < deadline, "the workers did not trust their caches again"
    assert status_over_a_new_connection(server, keys.all) == 404


def test_unknown_key_ids_are_cached_in_bounded_memory(database, keys: Keys) -> None:
    async def scenario() -> tuple[list, int, int]:
        pool = create_pool(settings_for(database))
        await pool.open(wait=True)
        try:
            cache = KeyCache(ttl_s=300, max_entries=16)
            cache.trust(True)  # as the listener does once it listens
            answers = [await cache.lookup(pool, secrets.token_hex(6)) for _ in range(200)]
            known_id, known_secret = split_key(keys.read)
            stored = await cache.lookup(pool, known_id)
            again = await cache.lookup(pool, known_id)
            return answers, len(cache), int(stored is again and stored.scopes_for(known_secret) == {"read"})
        finally:
            await pool.close()

    answers, size, cached = asyncio.run(scenario())
    assert answers == [None] * 200
    assert size == 16 + 1  # the bound of unknown ids, and the one real key
    assert cached == 1
