#!/usr/bin/env bash
# Build the Debian package (dh-virtualenv) from this source tree into dist/ and check it with
# lintian: what `make deb` runs.
#
#   packaging/build-deb.sh [--out DIR] [--no-lintian]
#
# Installs the build dependencies (debhelper, dh-virtualenv, lintian) when they are missing.
# The build runs in a copy of the files that go into the package (build/deb/src), so the
# working tree gets no debian/ingestd/ or debhelper stamps, and dpkg-buildpackage writes
# nothing outside build/. A build is skipped when DIR already holds a package built from the
# same files (a SHA-256 over their names and contents, recorded in DIR/ingestd-deb.sha256),
# and so is lintian once it passed on that package.
# pip reads PyPI, through a download cache that outlives the build ($PIP_CACHE_DIR, default
# ~/.cache/pip).
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist
lint=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --no-lintian) lint=0; shift ;;
        *) echo "usage: $0 [--out DIR] [--no-lintian]" >&2; exit 2 ;;
    esac
done

# Everything the package is built from; tests, benchmarks and the like do not change it.
PACKAGE_SOURCES=(pyproject.toml README.md ingestd ingestd_console etc/ingestd.toml packaging/systemd
                 docs/man debian packaging/build-deb.sh packaging/manpage.py)

BUILD_DEBS=(debhelper dh-virtualenv dpkg-dev python3-venv)
[ $lint -eq 1 ] && BUILD_DEBS+=(lintian)

apt_install_missing() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "build-deb: installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# NUL-separated file list: git's view when this is a checkout (tracked and untracked files,
# minus ignored ones such as __pycache__), otherwise whatever is on disk.
list_sources() {
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard -- "${PACKAGE_SOURCES[@]}" |
            while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done
    else
        find "${PACKAGE_SOURCES[@]}" \( -name __pycache__ -o -name '*.egg-info' \) -prune -o \
            \( -type f -o -type l \) -print0
    fi | sort -z
}

sources_hash() {
    list_sources | while IFS= read -r -d '' f; do
        if [ -L "$f" ]; then printf '%s -> %s\n' "$f" "$(readlink "$f")"
        else printf '%s %s\n' "$f" "$(sha256sum < "$f" | cut -d' ' -f1)"; fi
    done | sha256sum | cut -d' ' -f1
}

apt_install_missing "${BUILD_DEBS[@]}"

version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -q DEB_HOST_ARCH)
deb="ingestd_${version}_${arch}.deb"
hash=$(sources_hash)
mkdir -p "$out"
if [ -f "$out/$deb" ] && [ "$(cat "$out/ingestd-deb.sha256" 2>/dev/null)" = "$hash" ]; then
    echo "build-deb: $out/$deb is up to date (sources $hash)"
else
    rm -f "$out/ingestd-deb.sha256" "$out/ingestd-deb.lintian-clean"
    rm -rf build/deb
    mkdir -p build/deb/src
    list_sources | tar --null -T - -cf - | tar -xf - -C build/deb/src
    echo "build-deb: building $deb (dpkg-buildpackage, log in build/deb/build.log)"
    start=$(date +%s)
    if ! (cd build/deb/src &&
          PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}" DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:-nocheck}" \
              dpkg-buildpackage -b -us -uc) > build/deb/build.log 2>&1; then
        tail -n 40 build/deb/build.log >&2
        echo "build-deb: dpkg-buildpackage failed; the whole log is build/deb/build.log" >&2
        exit 1
    fi
    mv "build/deb/$deb" "$out/$deb"
    echo "$hash" > "$out/ingestd-deb.sha256"
    echo "build-deb: built $out/$deb in $(( $(date +%s) - start )) s"
fi

if [ $lint -eq 1 ]; then
    if [ "$(cat "$out/ingestd-deb.lintian-clean" 2>/dev/null)" = "$hash" ]; then
        echo "build-deb: lintian found $out/$deb clean before"
    else
        # Warnings and errors fail; debian/ingestd.lintian-overrides documents the rest.
        rm -f "$out/ingestd-deb.lintian-clean"
        lintian --fail-on error,warning "$out/$deb"
        echo "$hash" > "$out/ingestd-deb.lintian-clean"
        echo "build-deb: lintian clean"
    fi
fi
