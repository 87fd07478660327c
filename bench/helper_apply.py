#!/usr/bin/env python3
"""Helper1 Apply throughput through D-Bus against wireguard-go (root; builds one netns box).

One Apply of 1000 peers + 1000 /32 routes onto an empty device (cold), then the same
Apply again (re-apply, must change nothing). Repeated; medians reported. The wall time
includes the D-Bus round trip from this process to the helper in the box.
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
from wg_netmanager.lab.netlab import Lab, net_yaml

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


async def measure(box, n: int, rounds: int) -> dict:
    client = await HelperClient.connect(box.bus_address)
    await client.ensure_device("wg0", 51820, "10.1.0.1/16")
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
            "reapply_max_s": round(max(again), 4), "dbus": LIBRARY}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with Lab() as lab:
        box = lab.box("bench")
        box.start_dbus()
        box.start_helper(box.write_config(NET), verbose=False)
        result = asyncio.run(measure(box, args.peers, args.rounds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
