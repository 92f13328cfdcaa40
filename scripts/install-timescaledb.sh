#!/usr/bin/env bash
# Installs TimescaleDB (Apache-only edition) for the local PostgreSQL when it is missing, built from
# the Debian source package of the next Debian release, fetched from this machine's own apt mirror.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config}"
SOURCE_SUITE="${TIMESCALEDB_SOURCE_SUITE:-trixie}"
APT_ETC="${APT_ETC:-/etc/apt}"

say() { printf 'install-timescaledb: %s\n' "$*" >&2; }
give_up() {
    say "$*"
    say "This machine cannot be provisioned automatically. Run the platform with Docker Compose instead:"
    say "    docker compose up -d   (see README.md, 'Deploy with Docker Compose')"
    exit 1
}

installed() {
    [ -x "$PG_CONFIG" ] || return 1
    local libdir sharedir
    libdir=$("$PG_CONFIG" --pkglibdir)
    sharedir=$("$PG_CONFIG" --sharedir)
    [ -f "$libdir/timescaledb.so" ] && [ -f "$sharedir/extension/timescaledb.control" ]
}

# The Debian mirror this machine already uses: the first deb URI serving a non-security suite.
mirror_uri() {
    {
        for f in "$APT_ETC"/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            awk 'BEGIN{RS=""; FS="\n"}
                 /(^|\n)Types:[^\n]*deb/ && !/(^|\n)Enabled:[ \t]*no/ {
                     uri=""; suites="";
                     for (i=1;i<=NF;i++) {
                         if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uri=u[1] }
                         if ($i ~ /^Suites:/) { suites=$i }
                     }
                     if (uri != "" && suites !~ /security/) print uri
                 }' "$f"
        done
        for f in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            awk '$1 == "deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                               if ($(i+1) !~ /security/) print $i }' "$f"
        done
    } | grep -E '/debian/?$' | head -n 1
}

if [ "${1:-}" = "--print-mirror" ]; then
    MIRROR=$(mirror_uri || true)
    [ -n "$MIRROR" ] || give_up "no Debian mirror found in the apt configuration under ${APT_ETC}."
    echo "$MIRROR"
    exit 0
fi

if installed; then
    exit 0
fi

[ -x "$PG_CONFIG" ] || [ -x "/usr/lib/postgresql/${PG_MAJOR}/bin/postgres" ] \
    || give_up "PostgreSQL ${PG_MAJOR} server binaries not found under /usr/lib/postgresql/${PG_MAJOR}."
command -v apt-get >/dev/null || give_up "apt-get not found: this installer needs a Debian-based system."
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        exec sudo -n env PG_MAJOR="$PG_MAJOR" PG_CONFIG="$PG_CONFIG" \
            TIMESCALEDB_SOURCE_SUITE="$SOURCE_SUITE" bash "$0" "$@"
    fi
    give_up "TimescaleDB is missing and installing it needs root (or password-less sudo)."
fi

MIRROR=$(mirror_uri || true)
[ -n "$MIRROR" ] || give_up "no Debian mirror found in the apt configuration under ${APT_ETC}."
KEYRING=/usr/share/keyrings/debian-archive-${SOURCE_SUITE}-stable.gpg
[ -f "$KEYRING" ] || KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

say "building TimescaleDB (Apache-only) for PostgreSQL ${PG_MAJOR} from Debian ${SOURCE_SUITE} sources via ${MIRROR}"

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || say "apt-get update reported errors; trying with the package lists at hand"
apt-get install -y -qq --no-install-recommends \
    "postgresql-server-dev-${PG_MAJOR}" cmake gcc make libssl-dev dpkg-dev >/dev/null \
    || give_up "could not install the build dependencies (postgresql-server-dev-${PG_MAJOR}, cmake, gcc, libssl-dev)."

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/archives/partial" "$WORK/src"
echo "deb-src [signed-by=${KEYRING}] ${MIRROR} ${SOURCE_SUITE} main" >"$WORK/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=$WORK/sources.list" -o "Dir::Etc::SourceParts=-" -o "APT::Sandbox::User=root"
          -o "Dir::State::Lists=$WORK/lists" -o "Dir::Cache::Archives=$WORK/archives"
          -o "APT::Get::List-Cleanup=0")
apt-get "${APT_OPTS[@]}" update -qq || give_up "could not read the ${SOURCE_SUITE} source index from ${MIRROR}."
(cd "$WORK/src" && apt-get "${APT_OPTS[@]}" source --download-only -qq timescaledb) \
    || give_up "could not download the timescaledb source package from ${MIRROR}."
dsc=$(ls "$WORK"/src/timescaledb_*.dsc | head -n 1)
dpkg-source --no-check -x "$dsc" "$WORK/src/timescaledb" >/dev/null

cd "$WORK/src/timescaledb"
# The Debian package strips the licence-restricted tsl/ directory: build the Apache-only edition.
LOG="$WORK/build.log"
build() {
    ./bootstrap -DPG_CONFIG="$PG_CONFIG" -DAPACHE_ONLY=ON -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
        -DWARNINGS_AS_ERRORS=OFF -DGENERATE_DOWNGRADE_SCRIPT=OFF -DUSE_TELEMETRY=OFF \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
    make -C build -j"$(nproc)" &&
    make -C build install
}
if ! build >"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    give_up "building TimescaleDB failed (log above)."
fi

installed || give_up "the build finished but timescaledb.so is still missing from $("$PG_CONFIG" --pkglibdir)."
say "installed TimescaleDB $(grep default_version "$("$PG_CONFIG" --sharedir)/extension/timescaledb.control" | cut -d"'" -f2)"
