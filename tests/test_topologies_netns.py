"""The original README's first example on real parts (slow tier, root): Alpha-VPS behind a
firewall (nothing gets in unasked), Beta-VPS public (the only static peer), a home router doing
NAT (nftables masquerade + stateful filter) with Charlie and Delta on its LAN. As the original
describes: first everyone reaches everyone via Beta, then Charlie<->Delta go direct on the LAN,
then NAT traversal makes every pair direct."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.meshlab import paths, wait_for
from tests.test_mesh_netns import pings
from wg_netmanager.controller.netlab import Lab, net_yaml

pytestmark = pytest.mark.netns

OVERLAY = {"alpha": "10.1.1.1", "beta": "10.1.1.2", "charlie": "10.1.1.3", "delta": "10.1.1.4"}


def build_original_example(lab: Lab) -> dict:
    wan = lab.segment("wan")
    dc = lab.segment("dc")
    home = lab.segment("home")
    lab.router("fw", dc, "203.0.113.1/24", wan, "198.51.100.3/24", nat=False, firewall=True)
    # an endpoint-independent home router (as the original's example assumes): each laptop's
    # WireGuard port keeps one outside port whatever the destination. (Plain masquerade gives the
    # second of two laptops using the same port a new outside port per destination: that is
    # endpoint-dependent mapping, which no hole punching gets through; it stays relayed.)
    lab.router("router", home, "192.168.1.1/24", wan, "198.51.100.1/24", nat=True, firewall=True,
               fixed_ports={("192.168.1.30", 50000): 50030, ("192.168.1.40", 50000): 50040})
    config = net_yaml("198.51.100.2:50000", OVERLAY["beta"])
    boxes = {}
    for name in OVERLAY:
        box = lab.box(name)
        if name == "beta":
            box.attach(wan, "198.51.100.2/24")
            box.run(["ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.3"])
        elif name == "alpha":
            box.attach(dc, "203.0.113.10/24")
            box.default_route("203.0.113.1")
        else:
            box.attach(home, f"192.168.1.{30 if name == 'charlie' else 40}/24")
            box.default_route("192.168.1.1")
        box.start_dbus()
        box.start_helper(box.write_config(config), verbose=False)
        boxes[name] = box
    lab.boxes["router"].run(["ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.3"])
    for name, box in boxes.items():
        box.start_controller(box.dir / "net.yaml", OVERLAY[name])
    return boxes


def test_original_example_relayed_then_lan_then_all_direct():
    with Lab() as lab:
        boxes = build_original_example(lab)
        started = time.monotonic()
        view = {}

        def snapshot():
            for name, box in boxes.items():
                view[name] = paths(box)
            return view

        # everyone reaches everyone (relayed where needed)
        assert wait_for(lambda: all(len(v) == 3 and "unreachable" not in v.values()
                                    for v in snapshot().values()), 20), view
        for a, b in itertools.permutations(OVERLAY, 2):
            assert pings(boxes[a], OVERLAY[b]), f"{a} -> {b}"
        # the LAN pair goes direct; then hole punching makes every pair direct
        assert wait_for(lambda: snapshot()["charlie"]["delta"] == "direct", 20), view
        all_direct = wait_for(lambda: all(p == "direct" for v in snapshot().values() for p in v.values()), 60)
        took = time.monotonic() - started
        assert all_direct, f"not all direct after {took:.0f}s: {view}"
        # and traffic between the NATed and the firewalled VPS really goes direct
        endpoints = boxes["alpha"].run(["wg", "show", "wg0", "endpoints"]).stdout
        assert "198.51.100.1:" in endpoints  # charlie/delta as the home router's NAT shows them
        for a, b in itertools.permutations(OVERLAY, 2):
            assert pings(boxes[a], OVERLAY[b]), f"{a} -> {b}"
        print(f"all pairs direct after {took:.1f}s")


def test_port_hopping_gets_through_a_router_that_blocks_the_wireguard_port():
    """-H: alice's router drops everything from her default WireGuard port (50000); with
    nothing reachable for a while the controller moves WireGuard to another port."""
    with Lab() as lab:
        wan, home = lab.segment("wan"), lab.segment("home")
        router = lab.router("router", home, "192.168.1.1/24", wan, "198.51.100.1/24")
        router.nft("table ip block {\n  chain blockwg { type filter hook forward priority -10;\n"
                   "    ip saddr 192.168.1.10 udp sport 50000 drop\n  }\n}\n")
        config = net_yaml("198.51.100.2:50000", "10.1.1.2")
        bob, alice = lab.box("bob"), lab.box("alice")
        bob.attach(wan, "198.51.100.2/24")
        alice.attach(home, "192.168.1.10/24")
        alice.default_route("192.168.1.1")
        for box, ip, extra in ((bob, "10.1.1.2", ()), (alice, "10.1.1.1", ("-H",))):
            box.start_dbus()
            box.start_helper(box.write_config(config), verbose=False)
            box.start_controller(box.dir / "net.yaml", ip, extra=extra)
        assert wait_for(lambda: paths(alice).get("bob") == "direct", 60), alice.log("controller")[-3000:]
        port = alice.run(["wg", "show", "wg0", "listen-port"]).stdout.strip()
        assert port != "50000" and "hopping to another WireGuard port" in alice.log("controller")
        assert pings(alice, "10.1.1.2")
