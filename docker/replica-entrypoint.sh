#!/bin/sh
# The "replica" Compose profile's standby: on an empty data volume, a base backup of the primary with
# pg_basebackup -R (which writes primary_conninfo and standby.signal); then PostgreSQL as a hot standby
# with the primary's TimescaleDB settings. Runs as the postgres account (compose: user: postgres).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${PRIMARY_HOST:=db}"
: "${PRIMARY_PORT:=5432}"
: "${REPLICATION_PASSWORD:=replicator}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT"; do
        echo "replica: waiting for the primary at $PRIMARY_HOST:$PRIMARY_PORT"
        sleep 1
    done
    # The password goes into the connection string so that -R writes it into primary_conninfo.
    pg_basebackup -R -X stream --checkpoint=fast --progress -D "$PGDATA" \
        -d "host=$PRIMARY_HOST port=$PRIMARY_PORT user=replicator password=$REPLICATION_PASSWORD"
    chmod 700 "$PGDATA"
fi

# Settings a hot standby needs at least as high as the primary's (max_connections), TimescaleDB
# loaded as on the primary; feedback keeps the primary's vacuum from cancelling analytics queries.
exec postgres -c hot_standby=on -c hot_standby_feedback=on -c shared_preload_libraries=timescaledb \
    -c timescaledb.telemetry_level=off -c max_connections=200 -c shared_buffers=1GB "$@"
