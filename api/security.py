"""Authentication (Bearer API keys, looked up on every request so revocation is immediate) and
scope guards."""

from __future__ import annotations

from collections.abc import Callable

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from api.auth import KeyFormatError, secret_matches, split_key
from api.settings import get_settings

OPEN_PATHS = ["^/health", "^/metrics", "^/schema"]
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
        async with pool.connection(timeout=get_settings().pool_timeout_s) as conn:
            cur = await conn.execute(
                "SELECT secret_hash, scopes FROM telemetry.api_keys WHERE key_id = %s AND revoked_at IS NULL",
                (key_id,),
            )
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
