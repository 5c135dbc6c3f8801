#!/usr/bin/env bash
# Install what the test suite needs on Debian 12 (bookworm): the real Kamailio 5.6.3 with the
# modules the differential tests load, PostgreSQL 15 (server binaries only: tests start a
# private cluster), sqlite3, redis-server (benchmarks), a C compiler with ASan/UBSan runtimes,
# tmux (drives `pymqueue top` in a real terminal) and git (the packaging test clones the repo).
#
# Idempotent: when everything is already installed it does not touch apt at all.
# No system service is left running: a policy-rc.d forbids starting services while apt runs,
# and anything a package still started is stopped afterwards.
set -euo pipefail

PACKAGES=(
    kamailio
    kamailio-sqlite-modules
    kamailio-postgres-modules
    kamailio-json-modules
    kamailio-extra-modules
    postgresql
    postgresql-client
    sqlite3
    redis-server
    gcc
    libc6-dev
    libffi-dev
    libasan8
    libubsan1
    procps
    tmux
    git
)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else
        echo "install-test-deps: need root (or sudo) to install: ${PACKAGES[*]}" >&2
        exit 1
    fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-test-deps: installing ${missing[*]}"
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# installed by pymqueue scripts/install-test-deps.sh\nexit 101\n' \
            | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        created_policy=1
    fi
    cleanup() { if [ "$created_policy" = 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi; }
    trap cleanup EXIT
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}"
    cleanup
    trap - EXIT
else
    echo "install-test-deps: all packages already installed"
fi

# Stop what a package may have started anyway (by the PID in its pid file, never by name).
stop_pidfile() {
    local f=$1 pid
    [ -r "$f" ] || return 0
    pid=$(head -n1 "$f" | tr -dc 0-9)
    [ -n "$pid" ] || return 0
    if "${SUDO[@]}" kill -0 "$pid" 2>/dev/null; then
        echo "install-test-deps: stopping service pid $pid ($f)"
        "${SUDO[@]}" kill -TERM "$pid" 2>/dev/null || true
    fi
}
if command -v pg_lsclusters >/dev/null 2>&1; then
    while read -r ver name _port status _rest; do
        if [ "$status" = online ]; then
            echo "install-test-deps: stopping PostgreSQL cluster $ver/$name"
            "${SUDO[@]}" pg_ctlcluster "$ver" "$name" stop -m fast || true
        fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
fi
stop_pidfile /run/redis/redis-server.pid
stop_pidfile /run/kamailio/kamailio.pid

# Sanity: the binaries the fixtures use.
for b in /usr/sbin/kamailio /usr/sbin/kamcmd; do
    [ -x "$b" ] || { echo "install-test-deps: $b missing" >&2; exit 1; }
done
[ -f /usr/lib/x86_64-linux-gnu/kamailio/modules/mqueue.so ] \
    || { echo "install-test-deps: Kamailio mqueue module missing" >&2; exit 1; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    || { echo "install-test-deps: PostgreSQL server binaries missing" >&2; exit 1; }
echo "install-test-deps: ok ($(/usr/sbin/kamailio -v 2>/dev/null | head -n1))"
