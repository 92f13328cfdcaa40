"""Benchmark environment: fresh databases on the configured server."""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.schema.migrations import migrate
from api.server.process import ApiProcess, free_port  # noqa: F401  (the benchmarks' API subprocess)
from api.settings import Settings


def _admin_url() -> str:
    base = conninfo_to_dict(Settings.from_env().owner_database_url)
    return make_conninfo(**{**base, "dbname": "postgres"})


def drop_database(name: str) -> None:
    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def fresh_database(name: str) -> str:
    """Drop and recreate database `name` on the configured server, migrate it, return its URL."""
    settings = Settings.from_env()
    base = conninfo_to_dict(settings.owner_database_url)
    drop_database(name)
    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(**{**base, "dbname": name})
    migrate(url, settings.sql_path)
    return url


def edition(url: str) -> str:
    with psycopg.connect(url) as conn:
        license_ = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()[0]
    return "community" if license_ == "timescale" else "apache"


def create_key(url: str) -> str:
    from api.db.keys import create_key as create

    return create(url, ["ingest", "read", "admin"], "bench")[1]
