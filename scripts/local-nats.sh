#!/usr/bin/env bash
# A project-local NATS server (JetStream on file storage, and its MQTT listener), as local-db.sh is for
# PostgreSQL: `scripts/local-nats.sh` starts it when it is not running, `scripts/local-nats.sh stop`
# stops it (`close-mqtt` does only the first step of the stop, below). Settings from the environment:
# NATS_DIR (default .local/nats), NATS_PORT (54222), MQTT_PORT (51883). The last line printed is
# NATS_URL=... (with the service user's credentials).
# Users: the service user (API and writers) is generated here once; the MQTT users (one per API key
# with the ingest scope) are written into auth.conf by `python -m api broker-users`.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_DIR="$(realpath -m "${NATS_DIR:-.local/nats}")"
NATS_PORT="${NATS_PORT:-54222}"
MQTT_PORT="${MQTT_PORT:-51883}"
NATS_SERVER="${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
PID_FILE="$NATS_DIR/nats.pid"

# The server of the pid file, if it is still running (a stale pid may be another process's by now).
running() {
    [ -f "$PID_FILE" ] &&
        [ "$(cat "/proc/$(cat "$PID_FILE")/comm" 2>/dev/null)" = "$(basename "$NATS_SERVER" | cut -c1-15)" ]
}
reloads() { grep -cs 'Reloaded server configuration' "$NATS_DIR/nats.log" || true; }

# Devices are shut out before the server stops. NATS acknowledges an MQTT QoS 1 message once its own
# $MQTT_msgs copy is stored, and at shutdown it stops its streams one by one while MQTT connections are
# still open: a message arriving after TELEMETRY has stopped and before $MQTT_msgs has would be
# acknowledged and not stored. So the configuration is first reloaded with the service user only
# (service-only.conf, written at start): NATS closes the connections of the users it no longer has,
# and refuses them at connect. The API and the writers (the service user) go on; the next start
# writes the whole configuration again.
close_mqtt() {
    local pid="$1" before
    [ -s "$NATS_DIR/service-only.conf" ] && grep -qs '^include "auth.conf"$' "$NATS_DIR/nats.conf" || return 0
    sed -i 's/^include "auth.conf"$/include "service-only.conf"/' "$NATS_DIR/nats.conf"
    before="$(reloads)"
    kill -HUP "$pid" 2>/dev/null || return 0  # gone meanwhile
    for _ in $(seq 50); do
        if [ "$(reloads)" -gt "${before:-0}" ]; then
            sleep 0.2  # a publish read just before the reload completes while JetStream is whole
            return 0
        fi
        sleep 0.1
    done
    echo "local-nats: NATS did not reload its configuration within 5 s; MQTT devices may still be connected" \
        "(see $NATS_DIR/nats.log)" >&2
    return 1
}

case "${1:-start}" in
close-mqtt)
    if running; then
        close_mqtt "$(cat "$PID_FILE")"
        echo "local-nats: MQTT devices shut out until the next start"
    fi
    exit 0
    ;;
stop)
    if running; then
        pid="$(cat "$PID_FILE")"
        close_mqtt "$pid" || true  # stopped anyway; the message above says what may be lost
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        echo "local-nats: stopped"
    fi
    exit 0
    ;;
start) ;;
*) echo "usage: $0 [start|stop|close-mqtt]" >&2; exit 2 ;;
esac

if [ -n "${NATS_URL:-}" ]; then
    echo "local-nats: NATS_URL is set; using it instead of a local server"
    echo "NATS_URL=$NATS_URL"
    exit 0
fi
if [ ! -x "$NATS_SERVER" ]; then
    echo "local-nats: nats-server is not installed (make nats installs Debian's package)" >&2
    exit 1
fi

mkdir -p "$NATS_DIR"
chmod 700 "$NATS_DIR"
if [ ! -s "$NATS_DIR/service-password" ]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$NATS_DIR/service-password")
fi
PASSWORD="$(cat "$NATS_DIR/service-password")"
# The service user alone: the first users file, and what close-mqtt reloads to shut the devices out.
(umask 077; cat >"$NATS_DIR/service-only.conf" <<CONF
authorization {
  users = [
    {user: "telemetry", password: "$PASSWORD"}
  ]
}
CONF
)
if [ ! -s "$NATS_DIR/auth.conf" ]; then
    (umask 077; cp "$NATS_DIR/service-only.conf" "$NATS_DIR/auth.conf")
fi
held=""
if grep -qs '^include "service-only.conf"$' "$NATS_DIR/nats.conf"; then held=1; fi
cat >"$NATS_DIR/nats.conf" <<CONF
# Written by scripts/local-nats.sh: the project's local NATS server.
server_name: "telemetry-local"
listen: "127.0.0.1:$NATS_PORT"
pid_file: "$PID_FILE"
jetstream {
  store_dir: "$NATS_DIR"
}
mqtt {
  listen: "127.0.0.1:$MQTT_PORT"
}
# MQTT devices' subjects (telemetry.<stream>.<deviceId>) onto 256 partitions of their stream, by a hash
# of the device id, before JetStream stores them: api/stream/log.py says why.
mappings {
  "telemetry.meters.*": "telemetry.meters.p256.{{partition(256,1)}}"
  "telemetry.vehicles.*": "telemetry.vehicles.p256.{{partition(256,1)}}"
}
include "auth.conf"
CONF

if ! running; then
    echo "local-nats: starting nats-server on 127.0.0.1:$NATS_PORT, MQTT on 127.0.0.1:$MQTT_PORT (log: $NATS_DIR/nats.log)"
    setsid "$NATS_SERVER" -c "$NATS_DIR/nats.conf" -l "$NATS_DIR/nats.log" </dev/null >/dev/null 2>&1 &
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null; then break; fi
        sleep 0.1
    done
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null; then
        echo "local-nats: nats-server did not start; see $NATS_DIR/nats.log" >&2
        tail -n 20 "$NATS_DIR/nats.log" >&2 || true
        exit 1
    fi
elif [ -n "$held" ]; then
    kill -HUP "$(cat "$PID_FILE")"  # running with the devices shut out (close-mqtt): let them in again
    echo "local-nats: MQTT devices let in again"
fi
URL="nats://telemetry:$PASSWORD@127.0.0.1:$NATS_PORT"
(umask 077; echo "$URL" >"$NATS_DIR/url")
echo "local-nats: ready: MQTT on mqtt://127.0.0.1:$MQTT_PORT"
echo "NATS_URL=$URL"
