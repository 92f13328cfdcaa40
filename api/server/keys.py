"""Key management (`admin` scope): create a key (its secret shown once), list keys (never a
secret), revoke a key."""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, Parameter, QueryParameter

from api.db.keys import INSERT_KEY_SQL, LIST_KEYS_SQL, REVOKE_KEY_SQL, SCOPES, KeyInfo, new_key, parse_scopes
from api.db.pool import fetch_all
from api.readings import BadInput
from api.server.errors import ErrorDocumentedOperation, error_responses
from api.stream.broker import SET_BROKER_HASH_SQL, broker_hash_for
from api.server.security import BEARER, requires

Scope = Annotated[str, msgspec.Meta(pattern="^(ingest|read|admin)$")]
# One line of text: PostgreSQL refuses NUL in text, and a line break would garble `python -m api keys list`.
# `(?![\s\S])` is the end of the text; `$` would also match before a final line break.
KeyName = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*(?![\s\S])",
                                      description="What the key is for, shown when keys are listed")]
# Key ids are hex (api.db.keys.new_key); the bound keeps arbitrary text out of the query.
PathKeyId = Annotated[str, Parameter(pattern="^[A-Za-z0-9]{1,64}$", description="The keyId of the key")]


class NewKey(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, description=f"A subset of {', '.join(SCOPES)}")]
    name: KeyName | None = None


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
          responses=error_responses(401, 403, 422, 503), operation_class=ErrorDocumentedOperation)
    async def create(self, state: State, data: JSONBody[NewKey]) -> CreatedKey:
        try:
            scopes = parse_scopes(data.scopes)
        except ValueError as exc:
            raise BadInput(422, str(exc)) from None
        key_id, key, secret_hash = new_key()
        # The MQTT broker's password hash (bcrypt, deliberately slow): off the event loop.
        hashed = await asyncio.to_thread(broker_hash_for, key, scopes)
        async with state.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(INSERT_KEY_SQL, (key_id, secret_hash, scopes, data.name))
            (created_at,) = await cur.fetchone()
            if hashed:
                await conn.execute(SET_BROKER_HASH_SQL, (hashed, key_id))
        return CreatedKey(key_id, data.name, scopes, created_at, key=key)

    @get("/", summary="List the API keys (never their secrets)", responses=error_responses(401, 403, 422, 503),
         operation_class=ErrorDocumentedOperation)
    async def list(self, state: State, include_revoked: Annotated[
            bool, QueryParameter(name="includeRevoked", description="Also list revoked keys")] = False) -> KeyList:
        rows = await fetch_all(state.pool, LIST_KEYS_SQL, {"all": include_revoked})
        return KeyList([KeyInfo(*row) for row in rows])

    @delete("/{key_id:str}", status_code=204, summary="Revoke an API key (at once)",
            responses=error_responses(401, 403, 404, 422, 503), operation_class=ErrorDocumentedOperation)
    async def revoke(self, state: State, key_id: PathKeyId) -> None:
        async with state.pool.connection() as conn:
            cur = await conn.execute(REVOKE_KEY_SQL, (key_id,))
            if cur.rowcount != 1:
                raise NotFoundException(f"no active key {key_id!r}")
        state.key_cache.forget(key_id)  # this worker at once; the others when the notification arrives
