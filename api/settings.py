"""The platform's configuration: one frozen object, read from the environment once by the process's
entry point and passed to whatever needs it. Each field's default is written here and nowhere else."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import msgspec

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '6h', '1d', or plain seconds."""
    text = text.strip().lower()
    try:
        if text and text[-1] in _UNITS:
            return timedelta(seconds=float(text[:-1]) * _UNITS[text[-1]])
        return timedelta(seconds=float(text))
    except ValueError:
        raise SettingsError(f"not a duration: {text!r} (use e.g. 90s, 15m, 6h, 1d)") from None


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Every field is read from the environment variable named in its ``name=``."""

    database_url: str = msgspec.field(default="postgresql://telemetry_api@127.0.0.1:55432/telemetry",
                                      name="DATABASE_URL")
    """Connection of the API and every long-running process: a role that reads and writes data and
    runs the analytics functions, and nothing else. Defaults to the local development cluster."""

    migrate_database_url: str | None = msgspec.field(default=None, name="MIGRATE_DATABASE_URL")
    """Connection of the schema owner, for ``migrate`` and ``retention``; default: ``DATABASE_URL``."""

    api_host: str = msgspec.field(default="127.0.0.1", name="API_HOST")
    """Address the API listens on."""

    api_port: int = msgspec.field(default=8000, name="API_PORT")
    """Port the API listens on."""

    workers: int = msgspec.field(default=1, name="API_WORKERS")
    """ASGI worker processes."""

    pool_min_size: int = msgspec.field(default=2, name="DB_POOL_MIN")
    """Connections the pool keeps open."""

    pool_max_size: int = msgspec.field(default=8, name="DB_POOL_MAX")
    """Most connections the pool opens, per worker."""

    pool_timeout_s: float = msgspec.field(default=2.0, name="DB_POOL_TIMEOUT")
    """Longest wait for a pooled connection, in seconds, before answering 503."""

    statement_timeout_ms: int = msgspec.field(default=30_000, name="DB_STATEMENT_TIMEOUT_MS")
    """Server-side limit for one statement."""

    max_body_bytes: int = msgspec.field(default=16 * 1024 * 1024, name="MAX_BODY_BYTES")
    """Largest request body accepted; larger gets 413."""

    max_rows: int = msgspec.field(default=50_000, name="MAX_ROWS")
    """Most readings (or links) in one request; more gets 413."""

    max_future_skew_s: float = msgspec.field(default=300.0, name="MAX_FUTURE_SKEW_S")
    """How far in the future a timestamp may be, in seconds."""

    retention_cache_s: float = msgspec.field(default=30.0, name="RETENTION_CACHE_S")
    """How long a process keeps the retention settings it read from the database before reading
    them again (a retention change reaches ingest validation within this time)."""

    maintenance_interval_s: float = msgspec.field(default=3600.0, name="MAINTENANCE_INTERVAL_S")
    """How often the API runs retention on the Apache edition; 0 turns it off."""

    retry_after_s: int = msgspec.field(default=1, name="RETRY_AFTER_S")
    """``Retry-After`` value sent with 503 answers."""

    verdict_healthy: float = msgspec.field(default=0.85, name="VERDICT_HEALTHY")
    """Efficiency at or above which a vehicle is ``healthy``."""

    verdict_degraded: float = msgspec.field(default=0.75, name="VERDICT_DEGRADED")
    """Efficiency at or above which a vehicle is ``degraded``; below it, ``faulty``."""

    verdict_min_ac_kwh: float = msgspec.field(default=0.1, name="VERDICT_MIN_AC_KWH")
    """Below this much AC energy the verdict is ``insufficient_data``."""

    alert_interval_s: float = msgspec.field(default=60.0, name="ALERT_INTERVAL_S")
    """How often the API evaluates the alert rules; 0 turns the periodic evaluation off."""

    alert_window: str = msgspec.field(default="6h", name="ALERT_WINDOW")
    """Trailing window of the efficiency rules (faulty_charger, impossible_energy): 90s, 15m, 6h, 1d."""

    alert_silence: str = msgspec.field(default="15m", name="ALERT_SILENCE")
    """A device that reported within the last day and has been silent this long is device_silent."""

    alert_battery_temp: float = msgspec.field(default=55.0, name="ALERT_BATTERY_TEMP")
    """A vehicle reading above this battery temperature (°C) is battery_overheat."""

    webhook_timeout_s: float = msgspec.field(default=5.0, name="WEBHOOK_TIMEOUT_S")
    """Longest wait for a webhook target's answer."""

    webhook_retry_for: str = msgspec.field(default="24h", name="WEBHOOK_RETRY_FOR")
    """How long a failing delivery is retried (exponential backoff with jitter) before it is given up."""

    database_read_url: str | None = msgspec.field(default=None, name="DATABASE_READ_URL")
    """A streaming replica (hot standby) for analytics and status reads; writes, migrations and
    aggregate refreshes stay on ``DATABASE_URL``. Unset: every read goes to the primary."""

    max_replica_lag_s: float = msgspec.field(default=5.0, name="MAX_REPLICA_LAG_S")
    """A replica further behind than this (seconds of replay lag) is skipped for the primary."""

    key_cache_s: float = msgspec.field(default=300.0, name="KEY_CACHE_S")
    """Longest time a process trusts a key it looked up before looking it up again; revocation reaches
    every process at once through LISTEN/NOTIFY, this only bounds a missed notification."""

    nats_url: str = msgspec.field(default="nats://127.0.0.1:54222", name="NATS_URL")
    """The NATS server (JetStream) of the durable log. Defaults to the local development server."""

    stream_name: str = msgspec.field(default="TELEMETRY", name="STREAM_NAME")
    """The JetStream stream that holds the readings on their way to the database."""

    stream_max_bytes: int = msgspec.field(default=4 * 1024**3, name="STREAM_MAX_BYTES")
    """Size limit of the log; when it is full, new messages are refused (discard new): 503 to HTTP."""

    stream_max_age: str = msgspec.field(default="7d", name="STREAM_MAX_AGE")
    """Age limit of a message in the log (a backlog older than this is dropped by JetStream)."""

    stream_duplicate_window: str = msgspec.field(default="10m", name="STREAM_DUPLICATE_WINDOW")
    """Window in which a message with the same Nats-Msg-Id is recognised as a repeat and stored once."""

    publish_timeout_s: float = msgspec.field(default=5.0, name="PUBLISH_TIMEOUT_S")
    """Longest wait for JetStream's acknowledgement of a publish before answering 503."""

    writer_batch: int = msgspec.field(default=5000, name="WRITER_BATCH")
    """Most messages a writer fetches and commits in one transaction."""

    writer_flush_ms: int = msgspec.field(default=200, name="WRITER_FLUSH_MS")
    """Longest a writer waits to fill a batch before writing what it has."""

    writer_ack_wait_s: float = msgspec.field(default=60.0, name="WRITER_ACK_WAIT_S")
    """A batch a writer has not acknowledged within this time (the writer died) goes to another writer."""

    writer_host: str = msgspec.field(default="127.0.0.1", name="WRITER_HOST")
    """Address of the writer's health and metrics endpoints."""

    writer_port: int = msgspec.field(default=8001, name="WRITER_PORT")
    """Port of the writer's health and metrics endpoints (0: none)."""

    sql_dir: str = msgspec.field(default=str(PROJECT_ROOT / "sql"), name="SQL_DIR")
    """Where the versioned and repeatable SQL files live."""

    @property
    def owner_database_url(self) -> str:
        return self.migrate_database_url or self.database_url

    @property
    def max_future_skew(self) -> timedelta:
        return timedelta(seconds=self.max_future_skew_s)

    @property
    def alert_window_td(self) -> timedelta:
        return parse_duration(self.alert_window)

    @property
    def alert_silence_td(self) -> timedelta:
        return parse_duration(self.alert_silence)

    @property
    def webhook_retry_for_td(self) -> timedelta:
        return parse_duration(self.webhook_retry_for)

    @property
    def stream_max_age_td(self) -> timedelta:
        return parse_duration(self.stream_max_age)

    @property
    def stream_duplicate_window_td(self) -> timedelta:
        return parse_duration(self.stream_duplicate_window)

    @property
    def sql_path(self) -> Path:
        return Path(self.sql_dir)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """The settings named in ``environ`` (default: the process environment); empty values count
        as unset. ``overrides`` take field names, for callers that configure in code (tests)."""
        environ = os.environ if environ is None else environ
        names = {f.encode_name for f in msgspec.structs.fields(cls)}
        given = {name: value for name, value in environ.items() if name in names and value != ""}
        try:
            settings = msgspec.convert(given, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"invalid setting: {exc}") from None
        settings = msgspec.structs.replace(settings, **overrides) if overrides else settings
        for duration in (settings.alert_window, settings.alert_silence, settings.webhook_retry_for,
                         settings.stream_max_age, settings.stream_duplicate_window):
            parse_duration(duration)  # refuse a bad duration at start, not at first use
        return settings
