"""The EnergyGrid vendor protocol, written once for both sides (the connector and the mock): the
query path, the signature, the serials, the limits and the answers' shapes."""

from __future__ import annotations

import hashlib

QUERY_PATH = "/device/real/query"
DEFAULT_TOKEN = "interview_token_123"
MAX_SERIALS = 10
"""Serials in one request."""
MIN_INTERVAL_S = 1.0
"""One request a second, for all clients together."""
RATE_LIMIT_ERROR = "Too Many Requests. Limit: 1 req/sec."


def sign(path: str, token: str, timestamp_ms: str) -> str:
    """The vendor's signature: lowercase hex MD5 of path + token + timestamp (milliseconds)."""
    return hashlib.md5((path + token + timestamp_ms).encode()).hexdigest()


def serials(count: int = 500) -> list[str]:
    """The vendor's device serials: SN-000, SN-001, ..."""
    return [f"SN-{i:03d}" for i in range(count)]
