#!/bin/sh
# The primary's side of the "replica" Compose profile: a login role that may stream the WAL, and a
# pg_hba.conf line that lets it connect from the Compose network. Runs once, from
# /docker-entrypoint-initdb.d, when the database volume is created; on an older volume run it by hand:
#   docker compose exec db sh /docker-entrypoint-initdb.d/10-replication.sh
# Idempotent: the role's password is (re)set, the pg_hba.conf line added only when missing.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${REPLICATION_PASSWORD:=replicator}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
     -v password="$REPLICATION_PASSWORD" <<'SQL'
SELECT 'CREATE ROLE replicator WITH REPLICATION LOGIN' WHERE NOT EXISTS (
    SELECT FROM pg_roles WHERE rolname = 'replicator') \gexec
ALTER ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SQL

line="host replication replicator all scram-sha-256"
grep -qxF "$line" "$PGDATA/pg_hba.conf" || echo "$line" >> "$PGDATA/pg_hba.conf"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres -c "SELECT pg_reload_conf()"
