#!/usr/bin/env python3
"""The mesh on real parts (root): network namespaces, wireguard-go, a system bus per box, the
helper as root and the controller as user wg-netmanager.

Topology: bob (the static peer) on a "public" segment, a NAT router, and the other boxes
alternately on the router's LAN and on the public segment; alice and charlie share the LAN.
Per size (3, 5, 10 boxes) it measures:
  join_s            last controller started -> every pair pings (all pairs pinged in parallel)
  shortcut_s        alice sees charlie via bob -> alice and charlie both see each other direct
  switch_loss_pkts  pings (10 ms spacing) lost while alice<->charlie moves from relayed to
                    direct (LAN blocked by nft until relayed, then unblocked and Connect called)
  failover_s        the alice<->charlie LAN is cut (nft drop) -> a ping gets through via bob
  controller_rss_mb largest controller resident set size
Final stdout line: {"results": [{"boxes", "join_s", "shortcut_s", "failover_s", "switch_loss_pkts",
"controller_rss_mb"}, ...]}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from wg_netmanager.lab import topologies as labnets
from wg_netmanager.lab.demo import controller_call, paths
from wg_netmanager.lab.meshlab import rss_mb
from wg_netmanager.lab.netlab import Lab

NAMES = ["alice", "bob", "charlie", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


def build(lab: Lab, n: int) -> tuple[dict, dict]:
    """labnets.home_lan: bob public (static peer), alice/charlie on the NATed LAN, the rest
    alternately on the LAN and on the public segment."""
    names = NAMES[:n]
    mesh = labnets.home_lan(lab, names, public=[x for i, x in enumerate(names) if i % 2 and x != "bob"])
    return mesh.boxes, mesh.overlay


def ping_matrix(boxes, overlay) -> bool:
    procs = [subprocess.Popen(box._enter() + ["ping", "-n", "-q", "-c", "1", "-W", "1", overlay[dst]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for src, box in boxes.items() for dst in boxes if dst != src]
    return all(p.wait(10) == 0 for p in procs)


def measure(n: int) -> dict:
    with Lab(f"b{n}") as lab:
        boxes, overlay = build(lab, n)
        t_start = time.monotonic()
        for name, box in boxes.items():
            box.start_controller(box.dir / "net.yaml", overlay[name], extra=())
        t_last = time.monotonic()
        t_relay = t_direct = None
        deadline = t_last + 60
        while time.monotonic() < deadline:
            a, c = paths(boxes["alice"]), paths(boxes["charlie"])
            if t_relay is None and a.get("charlie", "").startswith("via"):
                t_relay = time.monotonic()
            if t_direct is None and a.get("charlie") == "direct" and c.get("alice") == "direct":
                t_direct = time.monotonic()
            if t_direct:
                break
            time.sleep(0.05)
        join = None
        while time.monotonic() < deadline:
            if ping_matrix(boxes, overlay):
                join = time.monotonic() - t_last
                break
            time.sleep(0.1)
        shortcut = (t_direct - t_relay) if t_relay and t_direct else (0.0 if t_direct else None)

        # switch loss: force the pair onto the relay, then let it go direct under a 10 ms ping
        alice, charlie = boxes["alice"], boxes["charlie"]
        charlie_lan = charlie.run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.split()[3].split("/")[0]
        alice.block(charlie_lan)
        relayed = time.monotonic() + 30
        while time.monotonic() < relayed and not paths(alice).get("charlie", "").startswith("via"):
            time.sleep(0.1)
        failover = None
        ping = subprocess.Popen(alice._enter() + ["ping", "-n", "-q", "-i", "0.01", "-W", "1", overlay["charlie"]],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)
        alice.block(charlie_lan, on=False)
        asyncio.run(controller_call(alice, "Connect", "s", ["charlie"]))
        end = time.monotonic() + 30
        while time.monotonic() < end and not (paths(alice).get("charlie") == "direct" and
                                              paths(charlie).get("alice") == "direct"):
            time.sleep(0.05)
        time.sleep(1.0)
        ping.send_signal(2)
        out, _ = ping.communicate(10)
        line = next(x for x in out.splitlines() if "packets transmitted" in x)
        sent, received = int(line.split()[0]), int(line.split(",")[1].split()[0])

        # failover: cut the direct LAN link; time until traffic flows again via bob
        alice.block(charlie_lan)
        t_cut = time.monotonic()
        while time.monotonic() < t_cut + 30:
            if paths(alice).get("charlie", "").startswith("via") and alice.ping(overlay["charlie"], 1, 0.3):
                failover = time.monotonic() - t_cut
                break
            time.sleep(0.05)
        rss = max(rss_mb(box.procs["controller"].pid) for box in boxes.values())
        return {"boxes": n, "join_s": round(join, 2) if join else None,
                "shortcut_s": round(shortcut, 2) if shortcut is not None else None,
                "failover_s": round(failover, 2) if failover else None,
                "shortcut_relay_seen": t_relay is not None,  # False: direct before a 50 ms poll saw it relayed
                "switch_loss_pkts": sent - received, "switch_pings_sent": sent,
                "controller_rss_mb": round(rss, 1), "setup_s": round(t_last - t_start, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,5,10")
    args = parser.parse_args()
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        results.append(measure(n))
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
