#!/usr/bin/env python3
"""Real-world topologies on real parts (root): network namespaces with nftables routers (see
controller/labnets.py), wireguard-go, a system bus, the helper and the controller per box.

  nat_direct_s      the original's first example (firewalled VPS, public VPS, two laptops behind
                    a NAT router): last controller started -> every pair direct
  failover_s        then the laptops' LAN link is cut (nft drop) -> a ping gets through a relay
  roam_s            a laptop moves from the home LAN to a café behind another NAT -> it pings
                    everyone and everyone pings it (pings every 0.1 s)
  keepalive_pps_on  10 boxes, every pair direct and idle, link policy auto (idle links go quiet;
                    --idle-timeout 10 here, 120 s by default): underlay UDP packets/s sent by all
                    boxes together (WireGuard: keepalives, probes and gossip inside the tunnel;
                    plus admin datagrams outside it), over a 50 s window; keepalive_on/off
                    break it down (wg_keepalive_pps: WireGuard's own empty keepalives)
  keepalive_pps_off the same with link policy all (every pair kept alive: the original's N^2)
Final stdout line: {"nat_direct_s", "failover_s", "roam_s", "keepalive_pps_on", "keepalive_pps_off", ...}
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time

from wg_netmanager.lab import topologies as labnets
from wg_netmanager.lab.demo import paths
from wg_netmanager.lab.meshlab import count_underlay, underlay_packets
from wg_netmanager.lab.netlab import Lab

NAMES10 = ["alice", "bob", "charlie", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


def all_direct(mesh: labnets.Mesh) -> bool:
    view = {name: paths(box) for name, box in mesh.boxes.items()}
    return all(view[a].get(b) == "direct" for a, b in itertools.permutations(mesh.boxes, 2))


def all_reachable(mesh: labnets.Mesh) -> bool:
    view = {name: paths(box) for name, box in mesh.boxes.items()}
    return all(view[a].get(b, "unreachable") != "unreachable" for a, b in itertools.permutations(mesh.boxes, 2))


def wait(pred, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until ``pred()`` held, or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(interval)
    return None


def quick_ping(box, ip: str) -> bool:
    return box.ping(ip, 1, 0.3)


def nat_direct_and_failover() -> dict:
    with Lab("tp1") as lab:
        mesh = labnets.original_example(lab)
        mesh.start()
        took = wait(lambda: all_direct(mesh), 120, 0.2)
        charlie, delta = mesh.boxes["charlie"], mesh.boxes["delta"]
        charlie.block("192.168.1.40")
        failover = wait(lambda: paths(charlie).get("delta", "").startswith("via ") and
                        quick_ping(charlie, mesh.overlay["delta"]), 60, 0.05)
        via = paths(charlie).get("delta")
        back_ok = quick_ping(delta, mesh.overlay["charlie"])
    return {"nat_direct_s": round(took, 2) if took is not None else None,
            "failover_s": round(failover, 2) if failover is not None else None,
            "failover_path": via, "failover_reverse_ping": back_ok}


def roaming() -> dict:
    with Lab("tp4") as lab:
        mesh = labnets.roaming(lab)
        mesh.start()
        wait(lambda: all_direct(mesh), 60, 0.2)
        erin, charlie, beta = (mesh.boxes[n] for n in ("erin", "charlie", "beta"))
        ip = mesh.overlay
        moved = time.monotonic()
        labnets.move_to_cafe(mesh)

        def everyone() -> bool:
            procs = [subprocess.Popen(src._enter() + ["ping", "-n", "-q", "-c", "1", "-W", "0.3", dst],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for src, dst in ((erin, ip["beta"]), (erin, ip["charlie"]), (charlie, ip["erin"]),
                                      (beta, ip["erin"]))]
            return all(p.wait(5) == 0 for p in procs)
        back = wait(everyone, 60, 0.1)
        roam = time.monotonic() - moved if back is not None else None
        direct_again = wait(lambda: paths(erin).get("charlie") == "direct", 60, 0.2)
    return {"roam_s": round(roam, 2) if roam is not None else None,
            "roam_direct_again_s": round(roam + direct_again, 1) if roam and direct_again is not None else None}


def keepalive_pps(policy: str, window: float, idle_timeout: float) -> dict:
    with Lab(f"tk{policy[:2]}") as lab:
        names = NAMES10
        mesh = labnets.home_lan(lab, names, public=[x for i, x in enumerate(names) if i % 2 and x != "bob"])
        for box in mesh.boxes.values():
            count_underlay(box)
        mesh.start(extra=["-l", policy, "--idle-timeout", str(idle_timeout)])
        # all: every pair direct; auto: links come up and (idle) go quiet again meanwhile
        converged = wait(lambda: all_direct(mesh) if policy == "all" else all_reachable(mesh), 180, 0.5)
        time.sleep(idle_timeout + 30)  # no traffic but ours: idle links go quiet (policy auto)
        before = [underlay_packets(box) for box in mesh.boxes.values()]
        time.sleep(window)
        after = [underlay_packets(box) for box in mesh.boxes.values()]
        wg, admin, keepalive = (sum(a[i] - b[i] for a, b in zip(after, before, strict=True)) / window
                                for i in range(3))
        direct = sum(v == "direct" for box in mesh.boxes.values() for v in paths(box).values())
    return {"pps": round(wg + admin, 2), "wg_pps": round(wg, 2), "wg_keepalive_pps": round(keepalive, 2),
            "admin_pps": round(admin, 2),
            "converged_s": round(converged, 1) if converged is not None else None,
            "direct_paths_after": direct}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=50.0, help="keepalive counting window (s)")
    parser.add_argument("--idle-timeout", type=float, default=10.0)
    parser.add_argument("--skip-paths", action="store_true", help="only the keepalive part")
    args = parser.parse_args()
    result: dict = {}
    if not args.skip_paths:
        result.update(nat_direct_and_failover())
        print(json.dumps(result), file=sys.stderr)
        result.update(roaming())
        print(json.dumps(result), file=sys.stderr)
    on = keepalive_pps("auto", args.window, args.idle_timeout)
    off = keepalive_pps("all", args.window, args.idle_timeout)
    result.update({"keepalive_pps_on": on["pps"], "keepalive_pps_off": off["pps"], "keepalive_on": on,
                   "keepalive_off": off, "keepalive_boxes": len(NAMES10), "window_s": args.window,
                   "idle_timeout_s": args.idle_timeout})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
