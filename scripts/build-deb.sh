#!/usr/bin/env bash
# Build the Debian package from this checkout, as root on Debian bookworm (or as a user with
# the build dependencies installed):   bash scripts/build-deb.sh   ->   dist/wg-netmanager_<v>_all.deb
# Then, on a box:  apt install ./dist/wg-netmanager_<v>_all.deb
set -euo pipefail
# Debian's tools and Python only (a python3 earlier on PATH, e.g. pyenv's, would build for the wrong one)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DEPS=(build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian)
if [ "$(id -u)" = 0 ] && ! dpkg-checkbuilddeps "$ROOT/debian/control" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${BUILD_DEPS[@]}" >/dev/null
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# a clean copy (no .git, caches, build output), so the checkout stays as it is
tar -C "$ROOT" --exclude=.git --exclude=dist --exclude=build --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.pytest_cache --exclude=.ruff_cache -cf - . | tar -C "$work" -xf - --one-top-level=src
(cd "$work/src" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || { tail -40 "$work/build.log" >&2; exit 1; }
mkdir -p "$ROOT/dist"
deb="$(ls "$work"/wg-netmanager_*_all.deb)"
cp "$deb" "$ROOT/dist/"
# lintian: errors fail the build; warnings are shown
lintian --fail-on error "$ROOT/dist/$(basename "$deb")" >&2 || { echo "build-deb.sh: lintian found errors" >&2; exit 1; }
echo "$ROOT/dist/$(basename "$deb")"
