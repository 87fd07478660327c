#!/usr/bin/env python3
"""Liveness on real parts (root): how fast a dead path is left, and what an idle node costs.

  failover_active_s  two laptops on one home LAN, a 10 ms ping flowing between them; their LAN
                     path is cut (the switch drops their frames): time to the first reply via
                     the relay (ping -D)
  failover_idle_s    the same with no traffic when the path is cut; a ping starts 5 s later:
                     time from its start to its first reply
  idle_pps_node      10 boxes (labnets.home_lan), no traffic; after --idle s, the underlay UDP
                     packets/s one laptop sends over a --window s window (WireGuard and admin)
  idle_pps_total     the same for all 10 boxes together
  idle_cpu_pct_node  CPU of that laptop's controller + helper + wireguard-go over the window
                     (idle_cpu_pct_controller / _helper / _wireguard_go: each one's share)
  rss_*_mb           their resident sets at the end (rss_node_mb: the three together)
Final stdout line: {"failover_active_s", "failover_idle_s", "idle_pps_node", "idle_pps_total",
"idle_cpu_pct_node", "rss_helper_mb", "rss_controller_mb", "rss_wireguard_go_mb", "rss_node_mb", ...}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from wg_netmanager.lab import topologies as labnets
from wg_netmanager.lab.demo import paths
from wg_netmanager.lab.meshlab import (
    count_underlay,
    cpu_seconds,
    daemon_pids,
    ping_replies,
    rss_mb,
    underlay_packets,
)
from wg_netmanager.lab.netlab import Lab

NAMES10 = ["alice", "bob", "charlie", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


def wait(pred, timeout: float, interval: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return False


def failover_once(active: bool, tag: str) -> float | None:
    with Lab(tag) as lab:
        mesh = labnets.home_lan(lab, ("alice", "bob", "charlie"))
        mesh.start()
        alice, charlie = mesh.boxes["alice"], mesh.boxes["charlie"]
        if not wait(lambda: paths(alice).get("charlie") == "direct" and paths(charlie).get("alice") == "direct", 60):
            return None
        time.sleep(5 if active else 140)  # idle: the link has gone quiet (120 s idle timeout)
        log = lab.dir / "ping.log"
        command = alice._enter() + ["ping", "-n", "-D", "-i", "0.01", "-W", "1", mesh.overlay["charlie"]]
        with open(log, "wb") as f:
            proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT) if active else None
            time.sleep(2)
            cut = time.time()
            lab.segments["home"].cut("192.168.1.10", "192.168.1.12")  # (home_lan: 192.168.1.10 + index)
            if proc is None:
                time.sleep(5)
                cut = time.time()  # (from the ping's start)
                proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)
            time.sleep(10)
            proc.send_signal(2)
            proc.wait(5)
        after = [t for t in ping_replies(log) if t > cut]
    if not active:
        return round(after[0] - cut, 2) if after else None
    # the first reply after the gap the cut made (replies in flight at the cut excluded)
    first = next((t for prev, t in zip([cut] + after, after, strict=False) if t - prev > 0.05), None)
    return round(first - cut, 2) if first is not None else None


def failover(active: bool, runs: int) -> list[float | None]:
    out = []
    for run in range(runs):
        out.append(failover_once(active, f"lv{'a' if active else 'i'}{run}"))
        print(json.dumps({"active": active, "run": run, "failover_s": out[-1]}), file=sys.stderr)
    return out


def idle_cost(idle: float, window: float) -> dict:
    with Lab("lvq") as lab:
        mesh = labnets.home_lan(lab, NAMES10, public=[x for i, x in enumerate(NAMES10) if i % 2 and x != "bob"])
        for box in mesh.boxes.values():
            count_underlay(box)
        mesh.start()
        every = list(mesh.boxes)
        wait(lambda: all(len(paths(mesh.boxes[n])) == len(every) - 1 for n in every), 120, 0.5)
        time.sleep(idle)
        laptop = mesh.boxes["charlie"]  # on the home LAN, behind the NAT
        pids = daemon_pids(laptop)
        before = {name: underlay_packets(box) for name, box in mesh.boxes.items()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(window)
        cpu_each = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        cpu = sum(cpu_each.values())
        after = {name: underlay_packets(box) for name, box in mesh.boxes.items()}
        sent = {name: sum(after[name][:2]) - sum(before[name][:2]) for name in mesh.boxes}
        rss = {name: rss_mb(pid) for name, pid in pids.items()}
    return {"idle_pps_node": round(sent["charlie"] / window, 2),
            "idle_pps_total": round(sum(sent.values()) / window, 2),
            "idle_cpu_pct_node": round(100 * cpu / window, 2),
            **{f"idle_cpu_pct_{name.replace('-', '_')}": round(100 * x / window, 2) for name, x in cpu_each.items()},
            "rss_helper_mb": round(rss.get("helper", 0), 1), "rss_controller_mb": round(rss.get("controller", 0), 1),
            "rss_wireguard_go_mb": round(rss.get("wireguard-go", 0), 1), "rss_node_mb": round(sum(rss.values()), 1),
            "idle_s": idle, "window_s": window, "boxes": len(every)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="failover runs with traffic")
    parser.add_argument("--idle-runs", type=int, default=2, help="failover runs without (~3 min each)")
    parser.add_argument("--idle", type=float, default=120.0, help="idle time before the counting window (s)")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--skip-idle", action="store_true", help="only the failover part")
    args = parser.parse_args()
    active, idle = failover(True, args.runs), failover(False, args.idle_runs)
    result: dict = {"failover_active_s": max((x for x in active if x is not None), default=None),
                    "failover_idle_s": max((x for x in idle if x is not None), default=None),
                    "failover_active_runs": active, "failover_idle_runs": idle}
    if not args.skip_idle:
        result.update(idle_cost(args.idle, args.window))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
