#!/usr/bin/env bash
# wg_netmanager developer entry point (Debian/Ubuntu, as root):
#   sudo bash scripts/dev.sh demo                 install what is needed, run the namespace demo
#   sudo bash scripts/dev.sh test [pytest args]   install what is needed, run every test tier
#   sudo bash scripts/dev.sh setup                only install (system packages, users, venvs)
#   sudo bash scripts/dev.sh clean                remove leftover lab namespaces and processes
# Fast pure-Python tier alone, after setup:
#   /opt/wg-netmanager-dev/venv/bin/pytest -m "not netns and not boot and not kernel" tests
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="${WGNM_DEV_DIR:-/opt/wg-netmanager-dev}"   # world-readable: unprivileged test users run this Python
VENV="$DEV/venv"            # dbus-fast (the dependency)
VENV_NEXT="$DEV/venv-next"  # dbus-next only: the D-Bus tests run a second time against it
VENV_DEBIAN="$DEV/venv-debian"  # Debian's own python3-* packages (what the .deb depends on)
APT_PACKAGES=(python3 python3-venv python3-pip wireguard-go wireguard-tools dbus iproute2 iputils-ping
              nftables procps util-linux psmisc systemd-container debootstrap
              python3-dbus-fast python3-nacl python3-yaml python3-click python3-pytest python3-prometheus-client python3-dnslib
              build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian
              qemu-system-x86 busybox-static cpio kmod e2fsprogs)

log() { printf '\n== %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "dev.sh: run as root (the tests build network namespaces): sudo bash scripts/dev.sh $*" >&2
        exit 2
    fi
}

setup() {
    log "system packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
    log "users"
    # the controller's user; an unrelated user for refusals; a member of group wg-netmanager
    for user in wg-netmanager wgnm-other wgnm-member; do
        id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$user"
    done
    usermod -a -G wg-netmanager wgnm-member
    log "virtualenvs in $DEV (from /usr/bin/python3)"
    install -d -m 0755 "$DEV"
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
    [ -x "$VENV_NEXT/bin/python" ] || /usr/bin/python3 -m venv "$VENV_NEXT"
    "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
    "$VENV_NEXT/bin/pip" install -q --upgrade pip setuptools wheel
    "$VENV/bin/pip" install -q "$ROOT[test]"
    "$VENV/bin/pip" install -q --no-deps --force-reinstall --no-build-isolation "$ROOT" "$ROOT/lab"
    "$VENV_NEXT/bin/pip" install -q dbus-next pyyaml pynacl click dnslib pytest hypothesis prometheus-client
    "$VENV_NEXT/bin/pip" uninstall -q -y dbus-fast 2>/dev/null || true
    "$VENV_NEXT/bin/pip" install -q --no-deps --force-reinstall --no-build-isolation "$ROOT" "$ROOT/lab"
    # Debian bookworm's versions (dbus-fast 1.84, pynacl 1.5, click 8.1.3, PyYAML 6.0,
    # pytest 7.2) from the system's dist-packages; only our own two distributions are added
    [ -x "$VENV_DEBIAN/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$VENV_DEBIAN"
    "$VENV_DEBIAN/bin/pip" install -q --no-deps --force-reinstall --no-build-isolation "$ROOT" "$ROOT/lab"
    rm -rf "$ROOT/build" "$ROOT/lab/build" "$ROOT"/*.egg-info "$ROOT"/lab/*.egg-info
    chmod -R a+rX "$DEV"
}

clean() {
    # everything the lab makes is named wgnm-*; kill what runs inside, then delete
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^wgnm-' || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}

run_tests() {
    trap clean EXIT
    clean
    cd "$ROOT"
    log "ruff"
    "$VENV/bin/ruff" check .
    log "all tiers, dbus-fast"
    "$VENV/bin/python" -m pytest "$@"
    log "D-Bus tests again with dbus-next only"
    "$VENV_NEXT/bin/python" -c 'import wg_netmanager.dbus.compat as c; assert c.LIBRARY == "dbus-next", c.LIBRARY'
    # (the chaos run and the pause tests exercise the core's liveness rules, not the D-Bus
    # library: once, above, is enough)
    "$VENV_NEXT/bin/python" -m pytest -m "netns and not boot" -q -p no:cacheprovider \
        --deselect tests/test_chaos_netns.py -k "not paused_controller" "$@"
    log "helper and mesh on real parts again with Debian's python3-* packages"
    "$VENV_DEBIAN/bin/python" -c 'import dbus_fast, nacl; assert dbus_fast.__file__.startswith("/usr/lib/python3/")'
    "$VENV_DEBIAN/bin/python" -m pytest -q -p no:cacheprovider tests/test_helper_netns.py tests/test_mesh_netns.py \
        -k "not paused_controller" "$@"
}

cmd="${1:-test}"
shift || true
case "$cmd" in
    setup) need_root "$cmd"; setup ;;
    demo) need_root "$cmd"; setup; trap clean EXIT; "$VENV/bin/wg_netmanager" demo "$@" ;;
    test) need_root "$cmd"; setup; run_tests "$@" ;;
    clean) need_root "$cmd"; clean ;;
    *) echo "usage: sudo bash scripts/dev.sh {demo|test|setup|clean} [args]" >&2; exit 2 ;;
esac
