"""Authentication (Bearer API keys, looked up through this process's key cache, which hears every
key change at once through LISTEN/NOTIFY) and scope guards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from api.db.keys import KeyCache, KeyFormatError, listen_for_key_changes, split_key

if TYPE_CHECKING:
    from litestar import Litestar

    from api.settings import Settings

OPEN_PATHS = ["^/health", "^/metrics", "^/schema", "^/$", "^/dashboard/"]
SECURITY_SCHEME = "apiKey"
# The OpenAPI security requirement of every operation outside OPEN_PATHS.
BEARER = [{SECURITY_SCHEME: []}]
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="telemetry"'}


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException("missing API key: send 'Authorization: Bearer <api key>'", headers=_CHALLENGE)
        try:
            key_id, secret = split_key(token.strip())
        except KeyFormatError:
            raise NotAuthorizedException("unknown API key", headers=_CHALLENGE) from None
        state = connection.app.state
        stored = await state.key_cache.lookup(state.pool, key_id)
        scopes = None if stored is None else stored.scopes_for(secret)
        if scopes is None:
            raise NotAuthorizedException("unknown API key", headers=_CHALLENGE)
        return AuthenticationResult(user=key_id, auth=scopes)

    @staticmethod
    def lifespan(settings: Settings) -> Callable[[Litestar], contextlib.AbstractAsyncContextManager[None]]:
        """The app's lifespan entry for the key cache: app.state.key_cache, and the task that keeps
        it current (one listening connection per worker process)."""

        @contextlib.asynccontextmanager
        async def key_cache(app: Litestar) -> AsyncIterator[None]:
            app.state.key_cache = cache = KeyCache(settings.key_cache_s)
            listener = asyncio.create_task(listen_for_key_changes(settings.database_url, cache))
            try:
                yield
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

        return key_cache


def requires(scope: str) -> Callable[[ASGIConnection, BaseRouteHandler], Awaitable[None]]:
    # async: Litestar runs a synchronous guard in a worker thread, a thread hop on every request.
    async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if scope not in connection.auth:
            raise PermissionDeniedException(f"this API key lacks the '{scope}' scope")

    guard.__name__ = f"requires_{scope}"
    return guard
