"""The migration runner: versioned SQL applied once under a checksum ledger, repeatable SQL every run."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

# pg_advisory_lock key: two runners never interleave, whichever process or host they run on.
MIGRATION_LOCK_KEY = 0x7E1E_3E72_0001
NO_TRANSACTION_MARKER = "-- migrate: no-transaction"
EDITIONS = ("community", "apache")
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<edition>community|apache))?\.sql$")
_REPEATABLE_NAME = re.compile(r"^(?P<name>[a-z0-9_]+?)(?:\.(?P<edition>community|apache))?\.sql$")


class MigrationError(RuntimeError):
    """The database and the SQL files disagree in a way the runner must not paper over."""


@dataclass(frozen=True, slots=True)
class SqlFile:
    path: Path
    version: int | None  # None for repeatable files
    edition: str | None  # None: applies to both editions

    @property
    def content(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def transactional(self) -> bool:
        return not self.content.lstrip().startswith(NO_TRANSACTION_MARKER)


@dataclass(frozen=True, slots=True)
class MigrationReport:
    edition: str
    applied: tuple[str, ...]
    repeatable: tuple[str, ...]


def versioned_files(sql_dir: Path, edition: str) -> list[SqlFile]:
    """The numbered files for this edition, in order; one file per number."""
    chosen: dict[int, SqlFile] = {}
    for path in sorted((sql_dir / "versioned").glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: versioned files are named NNNN_name[.community|.apache].sql")
        file_edition = match["edition"]
        if file_edition not in (None, edition):
            continue
        version = int(match["version"])
        if version in chosen:
            raise MigrationError(f"{path}: version {version} is also {chosen[version].path.name}")
        chosen[version] = SqlFile(path, version, file_edition)
    return [chosen[v] for v in sorted(chosen)]


def repeatable_files(sql_dir: Path, edition: str) -> list[SqlFile]:
    files = []
    for path in sorted((sql_dir / "repeatable").glob("*.sql")):
        match = _REPEATABLE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: repeatable files are named name[.community|.apache].sql")
        if match["edition"] in (None, edition):
            files.append(SqlFile(path, None, match["edition"]))
    return files


_LEDGER_DDL = """
CREATE SCHEMA IF NOT EXISTS telemetry;
CREATE TABLE IF NOT EXISTS telemetry.schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    edition     text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer     NOT NULL
);
"""


LEDGER_QUERY = """
SELECT current_setting('timescaledb.license', true),
       coalesce(json_agg(json_build_array(version, name, checksum, edition)), '[]')
FROM telemetry.schema_migrations
"""
LICENSE_QUERY = "SELECT current_setting('timescaledb.license', true), '[]'::json"


def edition_of_license(license_: str | None) -> str:
    return "community" if license_ == "timescale" else "apache"


def _ledger(conn: psycopg.Connection) -> tuple[str, dict[int, tuple[str, str, str]]]:
    has_ledger = conn.execute("SELECT to_regclass('telemetry.schema_migrations') IS NOT NULL").fetchone()[0]
    license_, rows = conn.execute(LEDGER_QUERY if has_ledger else LICENSE_QUERY).fetchone()
    return edition_of_license(license_), ledger_from_rows(rows)


def ledger_from_rows(rows: list[list]) -> dict[int, tuple[str, str, str]]:
    return {version: (name, checksum, edition) for version, name, checksum, edition in rows}


def compare(edition: str, ledger: dict[int, tuple[str, str, str]], sql_dir: Path) -> list[str]:
    """What keeps the schema from being current: pending files, edited files, a foreign edition.

    An empty list means the database is fully migrated for the files on disk.
    """
    problems: list[str] = []
    for name, _checksum, applied_edition in ledger.values():
        if applied_edition != edition:
            problems.append(
                f"{name} was applied for the {applied_edition} edition but the server runs the {edition} edition"
            )
            break
    on_disk = versioned_files(sql_dir, edition)
    known = {f.version for f in on_disk}
    for sql_file in on_disk:
        entry = ledger.get(sql_file.version)
        if entry is None:
            problems.append(f"{sql_file.path.name} is not applied")
        elif entry[1] != sql_file.checksum:
            problems.append(
                f"{sql_file.path.name} was edited after it was applied (checksum differs); "
                "add a new numbered file instead"
            )
    for version, (name, _, _) in sorted(ledger.items()):
        if version not in known:
            problems.append(f"{name} is applied but missing from {sql_dir / 'versioned'}")
    return problems


def check(conn: psycopg.Connection, sql_dir: Path) -> list[str]:
    return compare(*_ledger(conn), sql_dir)


def migrate(conninfo: str, sql_dir: Path) -> MigrationReport:
    """Apply every pending versioned file, then every repeatable file, under an advisory lock."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute(_LEDGER_DDL)
            edition, ledger = _ledger(conn)
            problems = [p for p in compare(edition, ledger, sql_dir) if not p.endswith(" is not applied")]
            if problems:
                raise MigrationError("; ".join(problems))
            applied = []
            for sql_file in versioned_files(sql_dir, edition):
                if sql_file.version in ledger:
                    continue
                _apply_versioned(conn, sql_file, edition)
                applied.append(sql_file.path.name)
            repeatable = repeatable_files(sql_dir, edition)
            for sql_file in repeatable:
                _run(conn, sql_file)
            return MigrationReport(edition, tuple(applied), tuple(f.path.name for f in repeatable))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def _run(conn: psycopg.Connection, sql_file: SqlFile, then: Callable[[], None] | None = None) -> None:
    """Apply one file (in a transaction unless it is marked otherwise); `then` runs in the same
    transaction, or right after a no-transaction file."""
    try:
        if sql_file.transactional:
            with conn.transaction():
                conn.execute(sql_file.content)
                if then:
                    then()
        else:
            conn.execute(sql_file.content)
            if then:
                then()
    except psycopg.Error as exc:
        raise MigrationError(f"{sql_file.path.name}: {exc}") from exc


def _apply_versioned(conn: psycopg.Connection, sql_file: SqlFile, edition: str) -> None:
    started = time.monotonic()

    def record() -> None:
        conn.execute(
            "INSERT INTO telemetry.schema_migrations (version, name, checksum, edition, duration_ms) "
            "VALUES (%s, %s, %s, %s, %s)",
            (sql_file.version, sql_file.path.name, sql_file.checksum, edition,
             int((time.monotonic() - started) * 1000)),
        )

    _run(conn, sql_file, then=record)


APP_ROLE = "telemetry_app"


def ensure_app_login(owner_conninfo: str, app_conninfo: str) -> str | None:
    """Make the API's login role (the user of `app_conninfo`) a member of telemetry_app, creating it
    (with the password in `app_conninfo`, if any) when missing. Returns its name, or None when the
    API connects as the owner itself (a single-role deployment)."""
    owner, app = conninfo_to_dict(owner_conninfo), conninfo_to_dict(app_conninfo)
    user = app.get("user")
    if not user or user == owner.get("user"):
        return None
    password = app.get("password")
    with psycopg.connect(owner_conninfo, autocommit=True) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
                role = sql.Identifier(user)
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
                if password:
                    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(password)))
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(APP_ROLE), role))
        except psycopg.Error as exc:
            raise MigrationError(f"setting up the API role {user!r}: {exc}") from exc
    return user
