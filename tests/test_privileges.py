"""The API and every long-running process connect as a role that reads and writes data and runs the
analytics, and nothing else: no DDL, no dropping data, no touching the ledger or the retention."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.fix_api import Keys
from tests.fix_db import APP_USER, Database
from tests.fix_readings import meter, post

FORBIDDEN = [
    "CREATE TABLE telemetry.scratch (id int)",
    "CREATE TABLE public.scratch (id int)",
    "DROP TABLE telemetry.meter_readings",
    "ALTER TABLE telemetry.meter_readings ADD COLUMN x int",
    "TRUNCATE telemetry.vehicle_readings",
    "DELETE FROM telemetry.meter_readings",
    "CREATE INDEX ON telemetry.meter_readings (voltage)",
    "CREATE FUNCTION telemetry.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "UPDATE telemetry.schema_migrations SET checksum = 'x'",
    "UPDATE telemetry.retention SET raw_readings = '1 day'",
    "SELECT telemetry.set_retention('60 days')",
    "SELECT drop_chunks('telemetry.meter_readings', older_than => now())",
    "SELECT remove_retention_policy('telemetry.meter_readings')",
]


def test_the_api_role_is_no_superuser_and_owns_nothing(database: Database) -> None:
    with psycopg.connect(database.app_url) as conn:
        user, superuser, create_role, create_db = conn.execute(
            "SELECT current_user, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert (user, superuser, create_role, create_db) == (APP_USER, False, False, False)
        assert conn.execute("SELECT pg_has_role(current_user, 'telemetry_app', 'member')").fetchone()[0]
        owned = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'telemetry' AND pg_get_userbyid(c.relowner) = current_user").fetchone()[0]
        assert owned == 0


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_the_api_role_cannot_change_the_schema_or_drop_data(database: Database, statement: str) -> None:
    if "policy" in statement and database.edition == "apache":
        pytest.skip("the Apache edition has no policies to remove")
    with psycopg.connect(database.app_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_the_api_role_does_all_the_api_needs(client, keys: Keys, database: Database) -> None:
    """Ingest, state, links, analytics and maintenance through the API's own connections."""
    assert post(client, "/v1/telemetry/meters", [meter(i) for i in range(5)], keys.ingest).json()["inserted"] == 5
    assert client.put("/v1/vehicles/EV-0001/meter", json={"meterId": "MTR-0001"},
                      headers=Keys.header(keys.ingest)).status_code == 200
    assert client.get("/v1/analytics/fleet", headers=Keys.header(keys.read)).status_code == 200
    assert client.get("/v1/meters/MTR-0001/status", headers=Keys.header(keys.read)).status_code == 200
    with psycopg.connect(database.app_url) as conn:
        # Retention on the Apache edition runs in the API process: a SECURITY DEFINER function.
        conn.execute("SELECT count(*) FROM telemetry.run_maintenance()")
        sessions = conn.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name = 'telemetry-api' "
            "AND datname = current_database()").fetchall()
    assert sessions == [(APP_USER,)]


def test_migrate_creates_the_api_login_role_from_database_url(empty_database: Database) -> None:
    """`python -m api migrate` runs as MIGRATE_DATABASE_URL's owner and sets up DATABASE_URL's user."""
    app = make_conninfo(empty_database.url, user="telemetry_api_deploy", password="s3cret-pw")
    result = subprocess.run([sys.executable, "-m", "api", "migrate"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DATABASE_URL": app, "MIGRATE_DATABASE_URL": empty_database.url})
    assert result.returncode == 0, result.stderr
    assert "API role: telemetry_api_deploy" in result.stdout
    with empty_database.connect() as conn:
        login, superuser, member = conn.execute(
            "SELECT rolcanlogin, rolsuper, pg_has_role(oid, 'telemetry_app', 'member') FROM pg_roles "
            "WHERE rolname = 'telemetry_api_deploy'").fetchone()
        owner = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class "
                             "WHERE oid = 'telemetry.meter_readings'::regclass").fetchone()[0]
    assert (login, superuser, member) == (True, False, True)
    assert owner == empty_database.server.user
    with psycopg.connect(app) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DROP TABLE telemetry.meter_readings")


def test_only_the_api_role_may_run_the_owners_maintenance_function(database: Database) -> None:
    """telemetry.run_maintenance() drops chunks with the owner's rights: not for every role of the cluster."""
    with database.connect(autocommit=True) as conn:
        conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'telemetry_outsider') "
                     "THEN CREATE ROLE telemetry_outsider LOGIN; END IF; END $$")
        conn.execute("GRANT USAGE ON SCHEMA telemetry TO telemetry_outsider")
    outsider = make_conninfo(database.url, user="telemetry_outsider")
    with psycopg.connect(outsider) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM telemetry.run_maintenance()")
    with psycopg.connect(database.app_url) as conn:
        conn.execute("SELECT * FROM telemetry.run_maintenance()")
