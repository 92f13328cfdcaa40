#!/usr/bin/env bash
# The benchmarks' load client written in C, wrk (Debian package), installed when missing through this
# machine's own apt configuration. pgbench comes with the PostgreSQL server binaries.
set -euo pipefail
command -v wrk >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-bench-tools: installing wrk (Debian package)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null || true; $SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null; } \
    || echo "install-bench-tools: wrk could not be installed; the analytics bench skips its C-client figures" >&2
