#!/usr/bin/env bash
# The development database for `make run`: a cluster under .local/ on its own port, created and
# started when needed. Does nothing when DATABASE_URL points elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${DATABASE_URL:-}" ]; then
    echo "local-db: DATABASE_URL is set; using it instead of the local cluster"
    exit 0
fi

PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PORT="${LOCAL_PG_PORT:-55432}"
ROOT="$PWD/.local"
DATA="$ROOT/pgdata"
SOCKETS="$ROOT/run"
LOG="$ROOT/postgresql.log"
DBNAME="${LOCAL_PG_DB:-telemetry}"

if [ ! -f "$DATA/PG_VERSION" ]; then
    echo "local-db: creating a cluster in $DATA (port $PORT)"
    scripts/pg-ctl initdb -D "$DATA" -s -o "--auth=trust --username=postgres --encoding=UTF8 --locale=C.UTF-8" >/dev/null
    cat >>"$DATA/postgresql.conf" <<CONF

# energy telemetry development cluster
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCKETS'
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
max_connections = 200
shared_buffers = 1GB
work_mem = 32MB
maintenance_work_mem = 256MB
max_wal_size = 8GB
checkpoint_timeout = 15min
wal_compression = on
max_worker_processes = 24
timescaledb.max_background_workers = 16
CONF
fi
mkdir -p "$SOCKETS"
[ "$(id -u)" -ne 0 ] || chown "${PG_RUN_AS:-postgres}" "$SOCKETS"

if ! scripts/pg-ctl status -D "$DATA" >/dev/null 2>&1; then
    echo "local-db: starting PostgreSQL on 127.0.0.1:$PORT (log: $LOG)"
    scripts/pg-ctl start -D "$DATA" -l "$LOG" -w -t 60 >/dev/null
fi

if ! "$PG_BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -Atqc \
        "SELECT 1 FROM pg_database WHERE datname = '$DBNAME'" | grep -q 1; then
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DBNAME"
fi
echo "local-db: ready: postgresql://postgres@127.0.0.1:$PORT/$DBNAME"
