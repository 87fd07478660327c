"""Meshes on kernel WireGuard: run inside the kernel tier's QEMU guest (tests/test_kernel_vm.py),
where Debian's stock kernel has the module; skipped anywhere without link kind 'wireguard'."""

from __future__ import annotations

import pytest

from wg_netmanager.lab import topologies
from wg_netmanager.lab.meshlab import all_paths, every_pair_pings, wait_for, wg_peers
from wg_netmanager.lab.netlab import Lab, kernel_wireguard

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(not kernel_wireguard(), reason="no kernel WireGuard here (the kernel tier's guest)")]


def kind(box) -> str:
    """The WireGuard device's link kind: 'wireguard' (kernel) or 'tun' (wireguard-go)."""
    out = box.run(["ip", "-d", "link", "show", "wg0"]).stdout
    return "wireguard" if "wireguard" in out.split("\n", 2)[-1] else "tun"


def test_the_original_example_on_kernel_wireguard_relayed_then_direct():
    with Lab() as lab:
        mesh = topologies.original_example(lab)
        mesh.start()
        boxes = mesh.boxes
        assert wait_for(lambda: every_pair_pings(boxes, mesh.overlay) == [], 120, interval=1), all_paths(boxes)
        assert {kind(b) for b in boxes.values()} == {"wireguard"}
        # wg(8) reads the kernel device the helper made: a peer per first hop, with allowed IPs
        assert all(wg_peers(b) for b in boxes.values())
        # charlie and delta share a LAN: direct; alpha (firewalled) and beta (static) too
        assert wait_for(lambda: all_paths(boxes)["charlie"]["delta"] == "direct", 60, interval=1), all_paths(boxes)


def test_a_mixed_mesh_kernel_and_wireguard_go_pings_both_ways():
    with Lab() as lab:
        mesh = topologies.home_lan(lab, public=("bob",))
        bob = mesh.boxes["bob"]
        bob.run(["wireguard-go", "wg0"])  # bob keeps a userspace device (adopted: -e)
        mesh.start(names=["bob"], extra=["-e"])
        mesh.start(names=[n for n in mesh.boxes if n != "bob"])
        boxes = mesh.boxes
        assert wait_for(lambda: every_pair_pings(boxes, mesh.overlay) == [], 120, interval=1), all_paths(boxes)
        assert kind(bob) == "tun" and {kind(b) for n, b in boxes.items() if n != "bob"} == {"wireguard"}
