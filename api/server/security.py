"""Authentication (Bearer API keys, looked up on every request so revocation is immediate) and
scope guards."""

from __future__ import annotations

from collections.abc import Callable

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from api.db.keys import ACTIVE_KEY_SQL, KeyFormatError, secret_matches, split_key

OPEN_PATHS = ["^/health", "^/metrics", "^/schema"]
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
        pool = connection.app.state.pool
        async with pool.connection() as conn:
            cur = await conn.execute(ACTIVE_KEY_SQL, (key_id,))
            row = await cur.fetchone()
        if row is None or not secret_matches(secret, row[0]):
            raise NotAuthorizedException("unknown API key", headers=_CHALLENGE)
        return AuthenticationResult(user=key_id, auth=frozenset(row[1]))


def requires(scope: str) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if scope not in connection.auth:
            raise PermissionDeniedException(f"this API key lacks the '{scope}' scope")

    guard.__name__ = f"requires_{scope}"
    return guard
