#!/usr/bin/env bash
# Install wg_netmanager from source where there is no Debian package (on Debian and Ubuntu use
# the package: bash scripts/build-deb.sh, then apt install ./dist/wg-netmanager_*_all.deb).
# As root, once:   bash scripts/install.sh [WHEEL]      (default: build from this source tree)
# The package goes into a venv under /opt, the commands into /usr/local/bin, the units into
# /usr/local/lib/systemd/system (not /etc/systemd/system: that is the admin's, for overrides).
# Then put net.yaml (and peer.yaml) into /etc/wg-netmanager/ and run
#   systemctl enable --now wg-netmanager
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${WGNM_PREFIX:-/opt/wg-netmanager}"
SOURCE="${1:-$ROOT}"
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 2; }

if [ "${WGNM_SKIP_APT:-}" != 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv dbus wireguard-tools iproute2 >/dev/null
    # userspace WireGuard only where the kernel has none
    ip link add wgnm-probe0 type wireguard 2>/dev/null && ip link del wgnm-probe0 \
        || apt-get install -y -qq --no-install-recommends wireguard-go >/dev/null
fi

# the Python package, in its own environment; the two commands on PATH
[ -x "$PREFIX/venv/bin/python" ] || /usr/bin/python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --upgrade "$SOURCE"
ln -sf "$PREFIX/venv/bin/wg_netmanager" /usr/local/bin/wg_netmanager
ln -sf "$PREFIX/venv/bin/wg-netmanager-helper" /usr/local/bin/wg-netmanager-helper
chmod -R a+rX "$PREFIX"

# system files
install -D -m 0644 "$ROOT/dbus/org.wgnetmanager.conf" /usr/share/dbus-1/system.d/org.wgnetmanager.conf
install -D -m 0644 "$ROOT/dbus/org.wgnetmanager.Helper1.service" \
    /usr/share/dbus-1/system-services/org.wgnetmanager.Helper1.service
for unit in wg-netmanager-helper.service wg-netmanager.service; do
    install -d -m 0755 /usr/local/lib/systemd/system
    sed 's#^ExecStart=/usr/bin/#ExecStart=/usr/local/bin/#' "$ROOT/systemd/$unit" >/usr/local/lib/systemd/system/$unit
    chmod 0644 /usr/local/lib/systemd/system/$unit
done
install -D -m 0644 "$ROOT/docs/wg_netmanager.1" /usr/local/share/man/man1/wg_netmanager.1
install -D -m 0644 "$ROOT/docs/wg-netmanager-helper.8" /usr/local/share/man/man8/wg-netmanager-helper.8
install -D -m 0644 "$ROOT/docs/completion/bash/wg_netmanager" /usr/local/share/bash-completion/completions/wg_netmanager
install -D -m 0644 "$ROOT/docs/completion/zsh/_wg_netmanager" /usr/local/share/zsh/site-functions/_wg_netmanager
install -D -m 0644 "$ROOT/systemd/wg-netmanager.sysusers" /usr/lib/sysusers.d/wg-netmanager.conf
install -D -m 0644 "$ROOT/systemd/wg-netmanager.tmpfiles" /usr/lib/tmpfiles.d/wg-netmanager.conf
systemd-sysusers /usr/lib/sysusers.d/wg-netmanager.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/wg-netmanager.conf 2>/dev/null \
    || install -d -m 0750 -o root -g wg-netmanager /etc/wg-netmanager   # e.g. in a chroot without /proc
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl reload dbus 2>/dev/null || true
fi
echo "installed. Next: /etc/wg-netmanager/net.yaml (the same on every node) and peer.yaml"
echo "(this node's name and wgIp), both root:wg-netmanager 0640; then: systemctl enable --now wg-netmanager"
