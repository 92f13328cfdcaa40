#!/usr/bin/env bash
# Installs the dashboard's charting library (dashboard/package-lock.json) into dashboard/node_modules,
# which the API serves under /dashboard/assets/: runs `npm ci` when node_modules is missing or older
# than the lock file.
set -euo pipefail

DASHBOARD_DIR="${DASHBOARD_DIR:-$(cd "$(dirname "$0")/.." && pwd)/dashboard}"
say() { printf 'dashboard-assets: %s\n' "$*" >&2; }

lock="$DASHBOARD_DIR/package-lock.json"
stamp="$DASHBOARD_DIR/node_modules/.package-lock.json"  # npm writes it on every install
if [ -f "$stamp" ] && [ ! "$lock" -nt "$stamp" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    say "npm is missing: the dashboard's chart library is installed with it (Debian: apt-get install npm)"
    exit 1
fi
say "installing the dashboard's chart library (npm ci in $DASHBOARD_DIR)"
cd "$DASHBOARD_DIR"
npm ci --no-audit --no-fund --loglevel=error
touch "$stamp"
