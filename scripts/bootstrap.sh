#!/usr/bin/env bash
# Install what ingestd needs to run its demo (default) or its whole test suite (--test),
# on a fresh Debian machine or a developer's. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# Debian packages the test suite drives as real servers, installed only where missing: the tests
# start their own PostgreSQL (initdb into a temp dir) and redis-server on free loopback ports.
# tmux runs ingestd-console in a real terminal. (The Kafka-protocol broker, Tansu, comes from PyPI
# with the test extras.)
TEST_DEBS=(postgresql redis-server tmux)
# The system test (tests/system) builds the Debian package (dh-virtualenv, checked by lintian)
# and boots a debootstrapped bookworm under a real systemd to install it.
TEST_DEBS+=(debootstrap debhelper dh-virtualenv dpkg-dev lintian)

apt_install_missing() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

pick_python() {
    for py in python3.13 python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "$py"; return 0
        fi
    done
    echo "bootstrap: Python >= 3.11 is required" >&2
    return 1
}

if [ ! -x .venv/bin/python ]; then
    py=$(pick_python)
    if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
        apt_install_missing python3-venv
    fi
    echo "bootstrap: creating .venv with $py"
    "$py" -m venv .venv
fi

extras=""
[ $want_test -eq 1 ] && extras="[test]"
stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing Python dependencies${extras:+ (with test extras)}"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".${extras}"
    touch "$stamp"
fi

if [ $want_test -eq 1 ] && [ ${#TEST_DEBS[@]} -gt 0 ]; then
    apt_install_missing "${TEST_DEBS[@]}"
fi

# promtool checks the shipped Prometheus alert rules. It comes only inside Debian's `prometheus`
# package, whose installation would also start a Prometheus server; so the package is downloaded
# and just that one static binary is unpacked into the venv.
unpack_promtool() {
    local work
    work=$(mktemp -d)
    chmod 755 "$work"  # apt downloads as the _apt user where it can
    (cd "$work" && apt-get download -qq prometheus 2>/dev/null) &&
        dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -xO ./usr/bin/promtool > .venv/bin/promtool.new &&
        chmod 755 .venv/bin/promtool.new && mv .venv/bin/promtool.new .venv/bin/promtool
    local status=$?
    rm -rf "$work" .venv/bin/promtool.new
    return $status
}
if [ $want_test -eq 1 ] && ! command -v promtool >/dev/null && [ ! -x .venv/bin/promtool ]; then
    echo "bootstrap: unpacking promtool from Debian's prometheus package into .venv/bin"
    unpack_promtool || echo "bootstrap: could not get promtool; the alert-rule test will be skipped" >&2
fi
