#!/usr/bin/env bash
# Installs what the durable log needs when it is missing, from Debian's packages through this
# machine's own apt configuration: nats-server (JetStream and its MQTT listener) and, for the tests'
# MQTT devices, mosquitto-clients; libmosquitto1, the C MQTT client library the load generator's MQTT
# transport drives, comes with it.
set -euo pipefail

need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
ldconfig -p 2>/dev/null | grep -q 'libmosquitto\.so\.1 ' || /sbin/ldconfig -p 2>/dev/null | grep -q 'libmosquitto\.so\.1 ' \
    || need+=(libmosquitto1)
[ ${#need[@]} -eq 0 ] && exit 0

echo "install-nats: installing ${need[*]} (Debian packages)" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-nats: run as root or install ${need[*]} yourself" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || true
if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
    echo "install-nats: could not install ${need[*]}; the stream tests and 'make run' need them" >&2
    exit 1
fi
# The package may start its own service on the default port; the project never uses it.
echo "install-nats: installed ${need[*]}" >&2
