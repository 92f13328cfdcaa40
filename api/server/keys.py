"""Key management (`admin` scope): create a key (its secret shown once), list keys (never a
secret), revoke a key."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, Parameter, QueryParameter

from api.db.keys import INSERT_KEY_SQL, LIST_KEYS_SQL, REVOKE_KEY_SQL, SCOPES, KeyInfo, new_key, parse_scopes
from api.db.pool import fetch_all
from api.readings import BadInput
from api.server.errors import error_responses
from api.server.security import BEARER, requires

Scope = Annotated[str, msgspec.Meta(pattern="^(ingest|read|admin)$")]


class NewKey(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, description=f"A subset of {', '.join(SCOPES)}")]
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class CreatedKey(KeyInfo, rename="camel", kw_only=True):
    key: str
    """The full API key: shown in this answer only; only a hash of it is stored."""


class KeyList(msgspec.Struct, rename="camel"):
    keys: list[KeyInfo]


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]
    guards = [requires("admin")]
    security = BEARER

    @post("/", status_code=201, summary="Create an API key (the key is shown once)",
          responses=error_responses(401, 403, 422, 503))
    async def create(self, state: State, data: JSONBody[NewKey]) -> CreatedKey:
        try:
            scopes = parse_scopes(data.scopes)
        except ValueError as exc:
            raise BadInput(422, str(exc)) from None
        key_id, key, secret_hash = new_key()
        async with state.pool.connection() as conn:
            await conn.execute(INSERT_KEY_SQL, (key_id, secret_hash, scopes, data.name))
            cur = await conn.execute("SELECT created_at FROM telemetry.api_keys WHERE key_id = %s", (key_id,))
            (created_at,) = await cur.fetchone()
        return CreatedKey(key_id, data.name, scopes, created_at, key=key)

    @get("/", summary="List the API keys (never their secrets)", responses=error_responses(401, 403, 503))
    async def list(self, state: State, include_revoked: Annotated[
            bool, QueryParameter(name="includeRevoked", description="Also list revoked keys")] = False) -> KeyList:
        rows = await fetch_all(state.pool, LIST_KEYS_SQL, {"all": include_revoked})
        return KeyList([KeyInfo(*row) for row in rows])

    @delete("/{key_id:str}", status_code=204, summary="Revoke an API key (at once)",
            responses=error_responses(401, 403, 404, 503))
    async def revoke(self, state: State, key_id: Annotated[str, Parameter(max_length=64)]) -> None:
        async with state.pool.connection() as conn:
            cur = await conn.execute(REVOKE_KEY_SQL, (key_id,))
            if cur.rowcount != 1:
                raise NotFoundException(f"no active key {key_id!r}")
