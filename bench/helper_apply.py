#!/usr/bin/env python3
"""Helper1 Apply throughput through D-Bus (root; builds one netns box).

One Apply of 1000 peers + 1000 /32 routes onto an empty device (cold), then the same
Apply again (re-apply, must change nothing). Repeated; medians reported. The wall time
includes the D-Bus round trip from this process to the helper in the box.
--backend wireguard-go (default here) or kernel; without kernel WireGuard on this machine,
--backend kernel boots the kernel tier's QEMU guest (lab/vmlab.py) and runs both backends in
it, one after the other, reporting each and their ratio (absolute times under TCG emulation
are not comparable with the host's).
Final stdout line: {"apply_1000_s": ..., "reapply_1000_s": ..., ...}
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import os
import statistics
import sys
import time

from wg_netmanager.controller.helper_client import HelperClient
from wg_netmanager.dbus.compat import LIBRARY
from wg_netmanager.lab.netlab import Lab, kernel_wireguard, net_yaml

NET = net_yaml("198.51.100.1:51820", "10.1.0.1", subnet="10.1.0.0/16")


def desired(n: int) -> tuple[list, list]:
    hosts = ipaddress.ip_network("10.1.0.0/16").hosts()
    next(hosts)  # 10.1.0.1 is the box itself
    peers, routes = [], []
    for i in range(n):
        ip = str(next(hosts))
        key = base64.b64encode(os.urandom(32)).decode()
        peers.append([key, f"203.0.113.{i % 250 + 1}:{20000 + i}", [f"{ip}/32"], 25])
        routes.append([f"{ip}/32", ""])
    return peers, routes


async def measure(box, n: int, rounds: int, backend: str) -> dict:
    client = await HelperClient.connect(box.bus_address)
    if backend == "wireguard-go" and kernel_wireguard():
        box.run(["wireguard-go", "wg0"])  # (the helper would pick the kernel: adopt a userspace device)
        _, got = await client.ensure_device("wg0", 51820, "10.1.0.1/16", adopt=True)
    else:
        _, got = await client.ensure_device("wg0", 51820, "10.1.0.1/16")
    assert got == backend, (got, backend)
    cold, again, empty = [], [], []
    for _ in range(rounds):
        peers, routes = desired(n)
        t0 = time.perf_counter()
        first = await client.apply("wg0", peers, routes)
        t1 = time.perf_counter()
        second = await client.apply("wg0", peers, routes)
        t2 = time.perf_counter()
        cleared = await client.apply("wg0", [], [])
        t3 = time.perf_counter()
        assert first["peers_added"] == n and first["routes_added"] == n, first
        assert second["changes"] == 0, second
        assert cleared["peers_removed"] == n and cleared["routes_removed"] == n, cleared
        cold.append(t1 - t0)
        again.append(t2 - t1)
        empty.append(t3 - t2)
    client.disconnect()
    return {"apply_1000_s": round(statistics.median(cold), 4), "reapply_1000_s": round(statistics.median(again), 4),
            "remove_1000_s": round(statistics.median(empty), 4), "peers": n, "rounds": rounds,
            "apply_min_s": round(min(cold), 4), "apply_max_s": round(max(cold), 4),
            "reapply_max_s": round(max(again), 4), "dbus": LIBRARY, "backend": backend}


def run_box(n: int, rounds: int, backend: str) -> dict:
    with Lab() as lab:
        box = lab.box("bench")
        box.start_dbus()
        box.start_helper(box.write_config(NET), verbose=False)
        return asyncio.run(measure(box, n, rounds, backend))


def in_guest(n: int, rounds: int) -> dict:
    from pathlib import Path

    from wg_netmanager.lab import vmlab

    source = Path(__file__).resolve().parent.parent
    script = (f"python3 bench/helper_apply.py --backend kernel --peers {n} --rounds {rounds}; "
              f"python3 bench/helper_apply.py --backend wireguard-go --peers {n} --rounds {rounds}")
    rc, out, wall = vmlab.run_in_guest(source, ["sh", "-c", script], timeout=1800)
    results = [json.loads(line[line.index("{"):]) for line in out.splitlines() if '"apply_1000_s"' in line]
    if rc != 0 or len(results) != 2:
        raise SystemExit(f"helper_apply in the guest failed (status {rc}):\n{out[-3000:]}")
    kernel, userspace = results
    return {"where": "qemu-tcg-guest", "kernel": kernel, "wireguard_go": userspace,
            "kernel_over_wireguard_go": {k: round(kernel[k] / userspace[k], 3) for k in
                                         ("apply_1000_s", "reapply_1000_s", "remove_1000_s")},
            "guest_wall_s": round(wall, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", choices=("wireguard-go", "kernel"), default="wireguard-go")
    args = parser.parse_args()
    if args.backend == "kernel" and not kernel_wireguard():
        result = in_guest(args.peers, args.rounds)
    else:
        result = run_box(args.peers, args.rounds, args.backend)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
