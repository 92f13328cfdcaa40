"""The platform's configuration: one frozen object, read from the environment once."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:55432/telemetry"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    """PostgreSQL connection URL (``DATABASE_URL``); defaults to the local development cluster."""

    api_host: str = "127.0.0.1"
    """Address the API listens on (``API_HOST``)."""

    api_port: int = 8000
    """Port the API listens on (``API_PORT``)."""

    workers: int = 1
    """ASGI worker processes (``API_WORKERS``)."""

    pool_min_size: int = 2
    """Connections the pool keeps open (``DB_POOL_MIN``)."""

    pool_max_size: int = 8
    """Most connections the pool opens, per worker (``DB_POOL_MAX``)."""

    pool_timeout_s: float = 2.0
    """Longest wait for a pooled connection before answering 503 (``DB_POOL_TIMEOUT``)."""

    statement_timeout_ms: int = 30_000
    """Server-side limit for one statement (``DB_STATEMENT_TIMEOUT_MS``)."""

    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body accepted; larger gets 413 (``MAX_BODY_BYTES``)."""

    max_rows: int = 50_000
    """Most readings in one request; more gets 413 (``MAX_ROWS``)."""

    max_future_skew: timedelta = timedelta(minutes=5)
    """How far in the future a timestamp may be (``MAX_FUTURE_SKEW_S``, seconds)."""

    raw_retention: timedelta = timedelta(days=30)
    """Raw readings are kept this long; readings older than this minus ``late_margin`` are
    rejected (``RAW_RETENTION_DAYS``)."""

    late_margin: timedelta = timedelta(hours=1)
    """Readings must be this much younger than the raw retention, so that the aggregate refresh
    sees them before their chunk expires (``LATE_MARGIN_S``, seconds)."""

    hourly_retention: timedelta = timedelta(days=730)
    """Hourly aggregates are kept this long (``HOURLY_RETENTION_DAYS``)."""

    maintenance_interval_s: float = 3600.0
    """How often the API runs retention on the Apache edition (``MAINTENANCE_INTERVAL_S``)."""

    retry_after_s: int = 1
    """``Retry-After`` value sent with 503 answers (``RETRY_AFTER_S``)."""

    verdict_healthy: float = 0.85
    """Efficiency at or above which a vehicle is ``healthy`` (``VERDICT_HEALTHY``)."""

    verdict_degraded: float = 0.75
    """Efficiency at or above which a vehicle is ``degraded``, below it ``faulty`` (``VERDICT_DEGRADED``)."""

    verdict_min_ac_kwh: float = 0.1
    """Below this much AC energy the verdict is ``insufficient_data`` (``VERDICT_MIN_AC_KWH``)."""

    sql_dir: Path = field(default=PROJECT_ROOT / "sql")
    """Where the versioned and repeatable SQL files live (``SQL_DIR``)."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            api_host=os.environ.get("API_HOST") or "127.0.0.1",
            api_port=_env_int("API_PORT", 8000),
            workers=_env_int("API_WORKERS", 1),
            pool_min_size=_env_int("DB_POOL_MIN", 2),
            pool_max_size=_env_int("DB_POOL_MAX", 8),
            pool_timeout_s=_env_float("DB_POOL_TIMEOUT", 2.0),
            statement_timeout_ms=_env_int("DB_STATEMENT_TIMEOUT_MS", 30_000),
            max_body_bytes=_env_int("MAX_BODY_BYTES", 16 * 1024 * 1024),
            max_rows=_env_int("MAX_ROWS", 50_000),
            max_future_skew=timedelta(seconds=_env_float("MAX_FUTURE_SKEW_S", 300)),
            raw_retention=timedelta(days=_env_float("RAW_RETENTION_DAYS", 30)),
            late_margin=timedelta(seconds=_env_float("LATE_MARGIN_S", 3600)),
            hourly_retention=timedelta(days=_env_float("HOURLY_RETENTION_DAYS", 730)),
            maintenance_interval_s=_env_float("MAINTENANCE_INTERVAL_S", 3600.0),
            retry_after_s=_env_int("RETRY_AFTER_S", 1),
            verdict_healthy=_env_float("VERDICT_HEALTHY", 0.85),
            verdict_degraded=_env_float("VERDICT_DEGRADED", 0.75),
            verdict_min_ac_kwh=_env_float("VERDICT_MIN_AC_KWH", 0.1),
            sql_dir=Path(os.environ.get("SQL_DIR") or PROJECT_ROOT / "sql"),
        )


@functools.cache
def get_settings() -> Settings:
    return Settings.from_env()
