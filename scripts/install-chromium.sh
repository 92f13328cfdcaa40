#!/usr/bin/env bash
# Installs Debian's `chromium` package when /usr/bin/chromium is missing: the dashboard tests drive it
# headless with Playwright, which cannot download a browser of its own. Packages come from this
# machine's apt configuration.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

say() { printf 'install-chromium: %s\n' "$*" >&2; }

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    say "$CHROMIUM is missing and installing it needs root (or password-less sudo):"
    say "    apt-get install chromium"
    exit 1
fi
command -v apt-get >/dev/null 2>&1 || { say "$CHROMIUM is missing and apt-get is not available: install Chromium by hand"; exit 1; }

say "installing Debian's chromium package (the dashboard tests run it headless)"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
[ -x "$CHROMIUM" ] || { say "apt-get installed chromium but $CHROMIUM is still missing"; exit 1; }
say "installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
