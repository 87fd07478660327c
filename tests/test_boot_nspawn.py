"""Installed like a user: the Debian package (scripts/build-deb.sh) installed with dpkg into a
Debian bookworm rootfs, booted with systemd-nspawn; two systemd units, the bus policy, busctl,
the CLI, and three containers forming a mesh over WireGuard (boot tier, root)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from wg_netmanager.dbus import CONTROLLER_XML, HELPER_XML, contract_file, contract_structure
from wg_netmanager.lab import bootlab
from wg_netmanager.lab.netlab import Lab

pytestmark = [pytest.mark.boot, pytest.mark.skipif(
    shutil.which("systemd-nspawn") is None or shutil.which("debootstrap") is None,
    reason="needs systemd-nspawn and debootstrap (scripts/dev.sh setup installs them)")]

from wg_netmanager.lab.bootlab import NET_YAML  # noqa: E402

NAMES = ("c1", "c2", "c3")


def overlay(i: int) -> str:
    return f"10.1.1.{i + 1}"


def ping_while(c, address: str, count: int, interval: float, action) -> str:
    """ping's summary line for ``count`` pings from container ``c`` while ``action()`` runs."""
    ping = subprocess.Popen(["nsenter", "-t", str(c.pid), "-a", "--", "ping", "-n", "-q", "-i", str(interval),
                             "-c", str(count), "-W", "1", address], stdout=subprocess.PIPE, text=True)
    action()
    out, _ = ping.communicate(timeout=30)
    return next(x for x in out.splitlines() if "packets transmitted" in x)


@pytest.fixture(scope="module")
def containers():
    image = bootlab.install_product(bootlab.build_rootfs(), Path(__file__).resolve().parent.parent)
    lab = Lab("boot")
    try:
        lan = lab.segment("lan")
        out = {}
        for i, name in enumerate(NAMES):
            box = lab.box(name)
            box.attach(lan, f"198.51.100.{11 + i}/24")
            c = bootlab.Container(image, box)
            # what README tells a user to do after installing the package
            c.sh(f"cat > /etc/wg-netmanager/net.yaml <<'EOF'\n{NET_YAML}EOF\n"
                 f"printf 'name: {name}\\nwgIp: {overlay(i)}\\n' > /etc/wg-netmanager/peer.yaml\n"
                 "chown root:wg-netmanager /etc/wg-netmanager/*.yaml && chmod 0640 /etc/wg-netmanager/*.yaml\n"
                 "systemctl enable --now wg-netmanager")
            out[name] = c
        yield out
    finally:
        lab.close()


def test_both_units_active_and_both_names_on_the_bus(containers):
    for c in containers.values():
        assert c.sh("systemctl is-active wg-netmanager-helper wg-netmanager").stdout.split() == ["active", "active"]
        names = c.sh("busctl list --no-pager --acquired").stdout
        assert "org.wgnetmanager.Helper1" in names and "org.wgnetmanager.Controller1" in names
        # the controller runs unprivileged, the helper as root
        assert c.sh("systemctl show -p User --value wg-netmanager").stdout.strip() == "wg-netmanager"


@pytest.mark.parametrize("name,xml", [("Helper1", HELPER_XML), ("Controller1", CONTROLLER_XML)])
def test_busctl_introspect_matches_the_shipped_xml(containers, name, xml):
    c = containers["c2"]
    live = c.sh(f"busctl introspect --xml-interface org.wgnetmanager.{name} /org/wgnetmanager/{name}").stdout
    iface = f"org.wgnetmanager.{name}"
    assert contract_structure(live, iface) == contract_structure(contract_file(xml).read_text(), iface)


def test_status_for_group_members_and_the_helper_refuses_others(containers):
    c = containers["c1"]
    c.sh("id tester >/dev/null 2>&1 || useradd -M -G wg-netmanager tester; "
         "id stranger >/dev/null 2>&1 || useradd -M stranger")
    status = c.sh("runuser -u tester -- wg_netmanager status --json").stdout
    assert '"overlay_ip": "10.1.1.2"' in status
    refused = c.sh("runuser -u stranger -- wg_netmanager status", check=False)
    assert refused.returncode == 4 and "not allowed" in refused.stderr
    denied = c.sh("runuser -u stranger -- busctl call org.wgnetmanager.Helper1 /org/wgnetmanager/Helper1 "
                  "org.wgnetmanager.Helper1 GetState s wg0", check=False)
    assert denied.returncode != 0 and "Access denied" in denied.stderr


def test_three_containers_form_a_mesh_and_ping(containers):
    for i, src in enumerate(NAMES):
        for j, _dst in enumerate(NAMES):
            if i != j:
                ok = containers[src].sh(f"for n in $(seq 40); do ping -c1 -W1 {overlay(j)} >/dev/null && exit 0; "
                                        "sleep 0.25; done; exit 1", check=False, timeout=90)
                assert ok.returncode == 0, f"{src} -> {overlay(j)}"


def test_names_resolve_through_systemd_resolved_and_follow_a_rename(containers):
    """ping <name>.mesh.internal works in booted containers: the helper pointed systemd-resolved
    at the controller's DNS server for the mesh domain; a renamed node resolves under its new
    name within seconds (and its old name goes)."""
    c1, c3 = containers[NAMES[0]], containers[NAMES[-1]]
    assert json.loads(c1.sh("wg_netmanager status --json").stdout)["self"]["names"] == "resolved"
    for name in NAMES[1:]:
        ok = c1.sh(f"for n in $(seq 20); do ping -c1 -W1 {name}.mesh.internal >/dev/null && exit 0; sleep 0.25; "
                   "done; exit 1", check=False, timeout=60)
        assert ok.returncode == 0, c1.sh(f"resolvectl query {name}.mesh.internal", check=False)
    assert c1.sh("resolvectl query nobody.mesh.internal", check=False).returncode != 0
    c3.sh("sed -i 's/^name: .*/name: renamed/' /etc/wg-netmanager/peer.yaml && systemctl restart wg-netmanager")
    try:
        found = c1.sh("for n in $(seq 40); do getent hosts renamed.mesh.internal && exit 0; sleep 0.25; done; exit 1",
                      check=False, timeout=60)
        assert found.returncode == 0 and overlay(len(NAMES) - 1) in found.stdout
        gone = c1.sh(f"sleep 6; getent hosts {NAMES[-1]}.mesh.internal", check=False)
        assert gone.returncode != 0, gone.stdout
    finally:
        c3.sh(f"sed -i 's/^name: .*/name: {NAMES[-1]}/' /etc/wg-netmanager/peer.yaml && "
              "systemctl restart wg-netmanager")


def test_restarting_the_helper_unit_keeps_a_ping_flowing(containers):
    c1 = containers["c1"]
    before = c1.sh("pidof wireguard-go").stdout.strip()
    line = ping_while(c1, overlay(1), 150, 0.02, lambda: c1.sh("sleep 0.5; systemctl restart wg-netmanager-helper"))
    assert line.startswith("150 packets transmitted, 150 received"), line
    assert c1.sh("pidof wireguard-go").stdout.strip() == before, "the data plane process lived on"
    assert c1.sh("systemctl is-active wg-netmanager-helper wg-netmanager").stdout.split() == ["active", "active"]


def test_a_config_error_stops_the_unit_with_the_message_at_error_priority(containers):
    """A refused configuration is one line at error priority and exit status 6, on which the
    unit does not restart; fixed, it starts again."""
    c3 = containers[NAMES[-1]]
    c3.sh("cp -p /etc/wg-netmanager/peer.yaml /root/peer.yaml.good"
          " && echo 'adminport: 5' >> /etc/wg-netmanager/peer.yaml && systemctl restart wg-netmanager", check=False)
    try:
        c3.sh("for n in $(seq 50); do systemctl is-failed -q wg-netmanager && exit 0; sleep 0.1; done; exit 1")
        assert c3.sh("systemctl show -p ExecMainStatus --value wg-netmanager").stdout.strip() == "6"
        errors = c3.sh("journalctl -p err -u wg-netmanager -o cat --no-pager").stdout
        assert "peer.yaml:3: unknown key 'adminport' - fix: did you mean 'adminPort'?" in errors, errors
        c3.sh("sleep 3")  # RestartSec=2: it would have been restarted by now
        assert c3.sh("systemctl show -p NRestarts --value wg-netmanager").stdout.strip() == "0"
        assert "Traceback" not in c3.sh("journalctl -u wg-netmanager -o cat --no-pager").stdout
    finally:
        c3.sh("cp -p /root/peer.yaml.good /etc/wg-netmanager/peer.yaml && systemctl restart wg-netmanager")
    assert c3.sh("systemctl is-active wg-netmanager").stdout.strip() == "active"


def test_systemctl_reload_under_a_10ms_ping_loses_nothing(containers):
    """systemctl reload wg-netmanager (the controller, and the helper by PropagatesReloadTo)
    re-reads the configuration and changes nothing that holds: a 10 ms ping loses nothing."""
    c1, c2 = containers[NAMES[0]], containers[NAMES[1]]
    line = ping_while(c1, overlay(1), 300, 0.01, lambda: c2.sh("sleep 0.5; systemctl reload wg-netmanager"))
    assert line.startswith("300 packets transmitted, 300 received"), line
    journal = c2.sh("journalctl -u wg-netmanager -u wg-netmanager-helper -o cat --no-pager").stdout
    assert journal.count("configuration reloaded") >= 2, journal[-2000:]  # both daemons
    assert c2.sh("systemctl is-active wg-netmanager-helper wg-netmanager").stdout.split() == ["active", "active"]


def test_stopping_the_unit_leaves_the_mesh_and_restarting_it_does_not(containers):
    """systemctl stop (and disable --now, shutdown): the node's departure reaches the others at
    once, and its device goes. systemctl restart: nothing changes for the others (fail-static)."""
    c1, c3 = containers[NAMES[0]], containers[NAMES[-1]]
    ip3 = overlay(len(NAMES) - 1)

    def seen_by_c1() -> str:
        nodes = json.loads(c1.sh("wg_netmanager status --json").stdout)["nodes"]
        n = next(n for n in nodes if n["overlay_ip"] == ip3)
        return "left" if n.get("left") else ("reachable" if n["reachable"] else "unreachable")
    assert seen_by_c1() == "reachable"
    c3.sh("systemctl restart wg-netmanager")
    time.sleep(2)
    assert seen_by_c1() == "reachable"
    assert c3.sh("ip link show wg0", check=False).returncode == 0
    c3.sh("systemctl stop wg-netmanager")
    deadline = time.monotonic() + 3
    while seen_by_c1() != "left" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen_by_c1() == "left"
    assert ip3 not in c1.sh("ip route show proto 157").stdout
    assert c3.sh("ip link show wg0", check=False).returncode != 0, "its device is removed"
    c3.sh("systemctl start wg-netmanager")
    ok = c1.sh(f"for n in $(seq 60); do ping -c1 -W1 {ip3} >/dev/null && exit 0; sleep 0.25; done; exit 1",
               check=False, timeout=90)
    assert ok.returncode == 0



def test_the_package_upgrades_hitless_and_purge_leaves_nothing(containers):
    """dpkg -i of the same package again (an upgrade): the units restart, the mesh is not
    disturbed; apt purge: the node leaves, and nothing of ours stays: no files, user, units or
    interface."""
    c1, c2 = containers[NAMES[0]], containers[NAMES[1]]
    ip2 = overlay(1)
    deb = c2.sh("ls /root/wg-netmanager_*_all.deb").stdout.strip()
    c2.sh(f"dpkg -i {deb}", timeout=120)
    assert c2.sh("systemctl is-active wg-netmanager-helper wg-netmanager").stdout.split() == ["active", "active"]
    ok = c1.sh(f"for n in $(seq 40); do ping -c1 -W1 {ip2} >/dev/null && exit 0; sleep 0.25; done; exit 1",
               check=False, timeout=60)
    assert ok.returncode == 0
    c2.sh("apt-get purge -y -q wg-netmanager", timeout=120)
    nodes = json.loads(c1.sh("wg_netmanager status --json").stdout)["nodes"]
    assert next(n for n in nodes if n["overlay_ip"] == ip2)["left"], "the purged node left the mesh"
    left = c2.sh("ls -d /etc/wg-netmanager /var/lib/wg-netmanager* /var/lib/private/wg-netmanager "
                 "/usr/lib/python3/dist-packages/wg_netmanager /usr/bin/wg_netmanager /usr/bin/wg-netmanager-helper "
                 "/lib/systemd/system/wg-netmanager*.service /etc/systemd/system/*/wg-netmanager*.service "
                 "/usr/share/dbus-1/system.d/org.wgnetmanager.conf 2>/dev/null", check=False).stdout
    assert left == "", left
    assert c2.sh("getent passwd wg-netmanager; getent group wg-netmanager", check=False).stdout == ""
    assert c2.sh("ip link show wg0", check=False).returncode != 0, "no interface"
    assert c2.sh("pgrep -x wireguard-go", check=False).stdout == "", "no wireguard-go left running"
