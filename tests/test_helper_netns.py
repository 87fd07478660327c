"""Helper1 on real parts: wireguard-go devices, a system-type dbus-daemon with our policy
per box, real routes and pings, in network namespaces (slow tier, root)."""

from __future__ import annotations

import signal
import stat
import sys
import time

import pytest

from wg_netmanager.dbus import HELPER_INTERFACE, HELPER_XML, HelperErrors, contract_file, contract_structure
from wg_netmanager.lab.helperlab import NET_YAML, OPEN_POLICY, Helper, call_as, ping_loss, start_ping
from wg_netmanager.lab.netlab import Lab, kernel_wireguard

pytestmark = pytest.mark.netns

A, B, C = "10.1.1.1", "10.1.1.2", "10.1.1.3"
UNDER = {"a": "198.51.100.1", "b": "198.51.100.2", "c": "198.51.100.3"}
OVER = {"a": A, "b": B, "c": C}
PING_INTERVAL = 0.01


@pytest.fixture(scope="module")
def mesh():
    lab = Lab()
    try:
        lan = lab.segment("lan")
        boxes, helpers, keys = {}, {}, {}
        for name in ("a", "b", "c"):
            box = lab.box(name)
            box.attach(lan, f"{UNDER[name]}/24")
            box.start_dbus(extra_policy=OPEN_POLICY if name == "c" else None)
            cfg = box.write_config(NET_YAML)
            box.start_helper(cfg, interfaces=("wg0", "wg9") if name == "c" else ("wg0",))
            boxes[name], helpers[name] = box, Helper(box)
            keys[name], backend = helpers[name].ensure(f"{OVER[name]}/24")
            assert backend == expected_backend()  # (kernel WireGuard where there is one: the kernel tier's guest)
        boxes["b"].sysctl("net.ipv4.ip_forward", "1")
        boxes["b"].sysctl("net.ipv4.conf.all.send_redirects", "0")
        yield lab, boxes, helpers, keys
    finally:
        lab.close()


def peer(keys, name, ips, keepalive=0, endpoint=True):
    return (keys[name], f"{UNDER[name]}:51820" if endpoint else "", [f"{ip}/32" for ip in ips], keepalive)


def routes(*ips, via=None):
    return [(f"{ip}/32", via or "") for ip in ips]


def our_routes(box) -> list[str]:
    shown = box.run(["ip", "-4", "route", "show", "proto", "157", "type", "unicast"]).stdout
    return [line.strip() for line in shown.splitlines()]


def direct_ab(keys):
    return {"a": ([peer(keys, "b", [B])], routes(B)), "b": ([peer(keys, "a", [A])], routes(A))}


def relay_state(keys):
    """a and c reach each other through b."""
    return {
        "a": ([peer(keys, "b", [B, C])], routes(B) + routes(C, via=B)),
        "b": ([peer(keys, "a", [A]), peer(keys, "c", [C])], routes(A, C)),
        "c": ([peer(keys, "b", [B, A])], routes(B) + routes(A, via=B)),
    }


def apply_all(helpers, state):
    return {name: helpers[name].apply(*state[name]) for name in state}


def test_live_introspection_matches_shipped_contract(mesh):
    _, boxes, _, _ = mesh
    # an unrelated user may introspect (policy), and what it sees is the contract
    r = boxes["a"].run(["busctl", "--system", "introspect", "--xml-interface", "org.wgnetmanager.Helper1",
                        "/org/wgnetmanager/Helper1"], user="wgnm-other")
    assert contract_structure(r.stdout, HELPER_INTERFACE) == \
        contract_structure(contract_file(HELPER_XML).read_text(), HELPER_INTERFACE)


def test_public_key_matches_wg_and_private_key_stays_in_state_dir(mesh):
    _, boxes, helpers, keys = mesh
    box = boxes["a"]
    assert box.run(["wg", "show", "wg0", "public-key"]).stdout.strip() == keys["a"]
    key_file = box.dir / "state" / "wg0.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    pub, port, _ = helpers["a"].state()
    assert (pub, port) == (keys["a"], 51820)
    # the same key after a second EnsureDevice
    assert helpers["a"].ensure(f"{A}/24")[0] == keys["a"]


def test_two_boxes_ping_through_the_tunnel_and_reapply_is_a_noop(mesh):
    _, boxes, helpers, keys = mesh
    first = apply_all(helpers, direct_ab(keys))
    assert first["a"]["peers_added"] == 1 and first["a"]["routes_added"] == 1
    assert boxes["a"].ping(B, count=3, wait=2)
    assert our_routes(boxes["a"]) == [f"{B} via {B} dev wg0 src {A} onlink"]
    again = apply_all(helpers, direct_ab(keys))
    assert again["a"]["changes"] == 0 and again["b"]["changes"] == 0
    _, _, peers = helpers["a"].state()
    (pb,) = peers
    assert pb.public_key == keys["b"] and pb.last_handshake > 0 and pb.rx_bytes > 0
    assert pb.endpoint == f"{UNDER['b']}:51820" and pb.allowed_ips == [f"{B}/32"]


def test_relay_then_direct_switch_loses_at_most_one_ping(mesh):
    _, boxes, helpers, keys = mesh
    apply_all(helpers, relay_state(keys))
    assert boxes["a"].ping(C, count=2, wait=2), "relayed path a->b->c"
    assert f"{C} via {B} dev wg0 src {A} onlink" in our_routes(boxes["a"])
    ping = start_ping(boxes["a"], C, count=300, interval=PING_INTERVAL)
    time.sleep(0.7)
    # handshake first: the direct peers come without allowed IPs; c (added last) initiates
    relay = relay_state(keys)
    helpers["a"].apply(relay["a"][0] + [peer(keys, "c", [])], relay["a"][1])
    helpers["c"].apply(relay["c"][0] + [peer(keys, "a", [], keepalive=25)], relay["c"][1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ha = {p.public_key: p.last_handshake for p in helpers["a"].state()[2]}
        hc = {p.public_key: p.last_handshake for p in helpers["c"].state()[2]}
        if ha.get(keys["c"]) and hc.get(keys["a"]):
            break
        time.sleep(0.02)
    else:
        pytest.fail("no direct handshake between a and c")
    # Each end's Apply moves the other's address from b to the direct peer in one step (no gap
    # on that box). Between the two Applies a's requests go direct while c's replies still come
    # through b, whom a no longer accepts them from (WireGuard's cryptokey routing): that window
    # is the test's, not the helper's. Beyond it, at most one ping may be lost.
    started = time.monotonic()
    helpers["a"].apply([peer(keys, "b", [B]), peer(keys, "c", [C])], routes(B, C))
    helpers["c"].apply([peer(keys, "b", [B]), peer(keys, "a", [A], keepalive=25)], routes(B, A))
    window = time.monotonic() - started
    sent, received = ping_loss(ping)
    assert sent == 300
    allowed = 1 + int(window / PING_INTERVAL) + 1
    assert sent - received <= allowed, \
        f"lost {sent - received} pings during the switch ({window * 1000:.0f} ms between the Applies)"
    assert our_routes(boxes["a"]) == [f"{B} via {B} dev wg0 src {A} onlink", f"{C} via {C} dev wg0 src {A} onlink"]
    assert boxes["a"].ping(C, count=2, wait=2)


def test_callers_root_and_controller_user_allowed_others_refused(mesh):
    _, boxes, _, keys = mesh
    ok = call_as(boxes["a"], "wg-netmanager", "GetState", "wg0")
    assert ok["reply"][0] == keys["a"]
    denied = call_as(boxes["a"], "wgnm-other", "GetState", "wg0")
    assert denied["error"] == "org.freedesktop.DBus.Error.AccessDenied"  # the bus policy
    # on c the policy lets wgnm-other through: the helper's own UID check refuses it
    refused = call_as(boxes["c"], "wgnm-other", "Apply", "wg0", [], [])
    assert refused["error"] == HelperErrors.NOT_AUTHORIZED
    assert "UID" in refused["message"] and "Traceback" not in refused["message"]


BAD = [
    ("Apply", ["wg0", [["AAAA", "", [], 0]], []], HelperErrors.INVALID_ARGS, "not 32"),
    ("SetDNS", ["wg0", "10.1.1.99:53535", "mesh.internal"], HelperErrors.INVALID_ARGS, "own overlay address"),
    ("SetDNS", ["wg0", "nonsense", "mesh.internal"], HelperErrors.INVALID_ARGS, "ip:port"),
    ("SetDNS", ["wg0", "10.1.1.1:70000", "mesh.internal"], HelperErrors.INVALID_ARGS, "port must be"),
    ("SetDNS", ["wg0", "10.1.1.1:53535", "other.internal"], HelperErrors.INVALID_ARGS, "not net.yaml's"),
    ("SetDNS", ["wg0", "10.1.1.1:53535", "mesh.internal"], HelperErrors.NO_RESOLVER, "systemd-resolved is not"),
    ("Apply", ["wg0", [], [["10.1.1.0/24", ""]]], HelperErrors.INVALID_ARGS, "not a host route"),
    ("Apply", ["wg0", [], [["0.0.0.0/0", ""]]], HelperErrors.INVALID_ARGS, "not a host route"),
    ("Apply", ["wg0", [], [["192.168.7.7/32", ""]]], HelperErrors.INVALID_ARGS, "outside the managed subnet"),
    ("Apply", ["wg0", [["K" * 43 + "=", "", ["10.2.0.1/32"], 0]], []], HelperErrors.INVALID_ARGS, "outside"),
    ("Apply", ["wg0", [["K" * 43 + "=", "1.2.3.4", [], 0]], []], HelperErrors.INVALID_ARGS, "ip:port"),
    ("Apply", ["wg0", [["K" * 43 + "=", "1.2.3.4:99999", [], 0]], []], HelperErrors.INVALID_ARGS, "port"),
    ("Apply", ["wg0", [["K" * 43 + "=", "", [], 99999]], []], HelperErrors.INVALID_ARGS, "keepalive"),
    # an endpoint inside the subnet is fine, a /32 on it is a routing loop (common.endpoints.collision)
    ("Apply", ["wg0", [["K" * 43 + "=", "10.1.1.50:51820", ["10.1.1.50/32"], 0]], []], HelperErrors.INVALID_ARGS,
     "10.1.1.50 is peer #0's endpoint: routing it into the tunnel would loop"),
    ("Apply", ["wg0", [["K" * 43 + "=", "10.1.1.50:51820", [], 0]], [["10.1.1.50/32", ""]]],
     HelperErrors.INVALID_ARGS, "route #0: destination 10.1.1.50 is peer #0's endpoint"),
    ("Apply", ["wg0", [["K" * 43 + "=", "", [], 0]] * 5000, []], HelperErrors.INVALID_ARGS, "cap"),
    ("Apply", ["eth0", [], []], HelperErrors.NOT_MANAGED, "not managed"),
    ("Apply", ["../x", [], []], HelperErrors.INVALID_ARGS, "not valid"),
    ("EnsureDevice", ["wg0", 51820, "192.168.0.1/24", False], HelperErrors.INVALID_ARGS, "outside"),
    ("EnsureDevice", ["lo", 51820, "10.1.1.1/24", False], HelperErrors.NOT_MANAGED, "not managed"),
    ("Teardown", ["eth0"], HelperErrors.NOT_MANAGED, "not managed"),
]


@pytest.mark.parametrize("member,args,error,words", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_refused_with_a_named_error(mesh, member, args, error, words):
    _, boxes, helpers, _ = mesh
    before = our_routes(boxes["a"])
    name, message = helpers["a"].error(member, *args)
    assert name == error
    assert words in message and "Traceback" not in message
    assert our_routes(boxes["a"]) == before  # nothing was applied


def test_wrong_signature_is_a_named_error(mesh):
    _, boxes, _, _ = mesh
    r = boxes["a"].run(["busctl", "--system", "call", "org.wgnetmanager.Helper1", "/org/wgnetmanager/Helper1",
                        "org.wgnetmanager.Helper1", "Teardown", "u", "7"], check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_a_large_apply_is_idempotent(mesh):
    """100 peers and routes: the re-apply changes nothing (a kernel dump splits such a device over
    several messages - a peer continued in the next one must read back as it was set)."""
    import base64

    _, boxes, helpers, _ = mesh
    helpers["c"].ensure("10.1.1.33/24", port=51821, ifname="wg9")
    peers, routes = [], []
    for i in range(100):
        ip = f"10.1.1.{40 + i}"
        peers.append([base64.b64encode(bytes([i % 256, i // 256]) + bytes(range(2, 32))).decode(),
                      f"203.0.113.{i % 250 + 1}:{20000 + i}", [f"{ip}/32"], 25])
        routes.append([f"{ip}/32", ""])
    try:
        first = helpers["c"].apply(peers, routes, ifname="wg9")
        assert first["peers_added"] == 100 and first["routes_added"] == 100, first
        assert helpers["c"].apply(peers, routes, ifname="wg9")["changes"] == 0
    finally:
        helpers["c"].teardown("wg9")


def test_missing_device_and_adopting_an_existing_one(mesh):
    _, boxes, helpers, _ = mesh
    assert helpers["c"].error("GetState", "wg9")[0] == HelperErrors.NO_DEVICE
    assert helpers["c"].error("EnsureDevice", "wg9", 0, "10.1.1.33/24", True)[0] == HelperErrors.NO_DEVICE
    boxes["c"].run(["wireguard-go", "wg9"])  # made by someone else, e.g. by hand
    pub, backend = helpers["c"].ensure("10.1.1.33/24", port=0, adopt=True, ifname="wg9")
    assert backend == "wireguard-go"
    assert boxes["c"].run(["wg", "show", "wg9", "public-key"]).stdout.strip() == pub
    assert helpers["c"].teardown("wg9") == {"routes_removed": 0, "device_removed": 1}


def test_kill_9_helper_keeps_forwarding_and_restart_reapplies_nothing(mesh):
    _, boxes, helpers, keys = mesh
    state = direct_ab(keys)
    apply_all(helpers, state)
    ping = start_ping(boxes["a"], B, count=100, interval=0.02)
    time.sleep(0.5)
    boxes["a"].kill("helper", signal.SIGKILL)
    sent, received = ping_loss(ping)
    assert sent == received == 100, "the data plane must not notice the helper's death"
    assert our_routes(boxes["a"]) == [f"{B} via {B} dev wg0 src {A} onlink"]
    boxes["a"].start_helper(boxes["a"].dir / "net.yaml")
    assert helpers["a"].ensure(f"{A}/24")[0] == keys["a"]
    assert helpers["a"].apply(*state["a"])["changes"] == 0
    assert boxes["a"].ping(B, count=1, wait=2)


def test_teardown_leaves_no_routes_and_no_device(mesh):
    _, boxes, helpers, keys = mesh
    apply_all(helpers, relay_state(keys))
    assert len(our_routes(boxes["c"])) == 2
    summary = helpers["c"].teardown()
    assert summary == {"routes_removed": 2, "device_removed": 1}
    assert our_routes(boxes["c"]) == []
    assert boxes["c"].run(["ip", "route", "show", "proto", "157"]).stdout.strip() == ""  # the guard too
    assert boxes["c"].run(["ip", "link", "show", "wg0"], check=False).returncode != 0
    assert helpers["c"].teardown() == {"routes_removed": 0, "device_removed": 0}
    # comes back with the same identity
    assert helpers["c"].ensure(f"{C}/24")[0] == keys["c"]


def test_an_overlay_address_without_a_route_never_leaves_in_clear_text(mesh):
    """The leak guard: with a default route out of the box, an overlay address that has no /32
    of ours (a peer not yet known, a route being replaced) must not follow it: the kernel says
    'network unreachable' instead, and the guard gives way to every /32 of ours."""
    _, boxes, helpers, keys = mesh
    a = boxes["a"]
    apply_all(helpers, direct_ab(keys))
    a.run(["ip", "route", "replace", "default", "via", "198.51.100.254"])
    try:
        guard = a.run(["ip", "-4", "route", "show", "proto", "157", "type", "unreachable"]).stdout.split()
        assert guard[:2] == ["unreachable", "10.1.1.0/24"] and "4294967295" in guard
        leak = a.run(["ip", "route", "get", "10.1.1.77"], check=False)
        assert leak.returncode != 0 and "no route to host" in (leak.stderr + leak.stdout).lower()
        assert "dev wg0" in a.run(["ip", "route", "get", B]).stdout  # our /32 wins over the guard
        ping = a.run(["ping", "-c", "1", "-W", "1", "10.1.1.77"], check=False)
        assert ping.returncode != 0 and "no route to host" in (ping.stderr + ping.stdout).lower()
        # and outside the overlay the default route still works as before
        assert "via 198.51.100.254" in a.run(["ip", "route", "get", "203.0.113.9"]).stdout
    finally:
        a.run(["ip", "route", "del", "default"], check=False)


def test_the_leak_guard_is_set_as_soon_as_the_helper_starts(mesh):
    """A booting box's programs may send to the overlay before any controller asked for a
    device: the helper sets the guard when it starts (a box restarted without its routes)."""
    _, boxes, _, _ = mesh
    c = boxes["c"]
    c.kill("helper")
    c.run(["ip", "route", "del", "unreachable", "10.1.1.0/24"])
    c.start_helper(c.dir / "net.yaml")
    guard = c.run(["ip", "-4", "route", "show", "proto", "157", "type", "unreachable"]).stdout.split()
    assert guard[:2] == ["unreachable", "10.1.1.0/24"], guard


def test_a_relay_sends_no_redirects_and_the_device_accepts_none(mesh):
    """b relays between a and c with net.ipv4.conf.all.send_redirects left at the kernel's 1: it
    must not tell a and c to bypass it (a plain device route made it send one redirect per
    relayed packet)."""
    _, boxes, helpers, keys = mesh
    b = boxes["b"]
    b.sysctl("net.ipv4.conf.all.send_redirects", "1")
    try:
        apply_all(helpers, relay_state(keys))
        before = b.run(["nstat", "-az", "IcmpOutRedirects"]).stdout.split()[-2]
        assert ping_loss(start_ping(boxes["a"], C, count=20, interval=0.05)) == (20, 20)
        assert b.run(["nstat", "-az", "IcmpOutRedirects"]).stdout.split()[-2] == before
    finally:
        b.sysctl("net.ipv4.conf.all.send_redirects", "0")
    for box in boxes.values():
        assert box.run(["sysctl", "-n", "net.ipv4.conf.wg0.accept_redirects"]).stdout.strip() == "0"


def test_helper_refuses_a_config_others_can_write(mesh):
    _, boxes, _, _ = mesh
    cfg = boxes["b"].write_config(NET_YAML, name="loose.yaml", mode=0o666)
    r = boxes["b"].run([sys.executable, "-m", "wg_netmanager.helper", "-c", str(cfg)], check=False, timeout=20)
    assert r.returncode == 6  # EXIT_CONFIG: the unit does not restart on it
    assert "must not be writable by group or others" in r.stderr and "Traceback" not in r.stderr


def expected_backend() -> str:
    return "kernel" if kernel_wireguard() else "wireguard-go"


@pytest.mark.kernel_wg
@pytest.mark.skipif(not kernel_wireguard(), reason="no kernel WireGuard (link kind 'wireguard') here")
def test_kernel_backend_two_boxes_ping():
    with Lab() as lab:
        lan = lab.segment("lan")
        helpers, keys = {}, {}
        for name in ("a", "b"):
            box = lab.box(name)
            box.attach(lan, f"{UNDER[name]}/24")
            box.start_dbus()
            box.start_helper(box.write_config(NET_YAML))
            helpers[name] = Helper(box)
            keys[name], backend = helpers[name].ensure(f"{OVER[name]}/24")
            assert backend == "kernel"
        apply_all(helpers, direct_ab(keys))
        assert lab.boxes["a"].ping(B, count=2, wait=2)
        assert helpers["a"].apply(*direct_ab(keys)["a"])["changes"] == 0
