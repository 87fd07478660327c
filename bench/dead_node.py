#!/usr/bin/env python3
"""How long a node that dies silently keeps its routes at its peers (root; 3-box netns lab).

bob is the static peer, alice and charlie laptops on one home LAN. For each idle time in
--idle (seconds without traffic after a ping of every pair), charlie's daemons are killed and
its wg0 deleted; the time until neither alice nor bob has a route to it is measured; then
charlie is started again and the mesh waits until it is all direct. Links idle for less than
QUIET_AFTER (10 s) are in use: the bound is link_down_after (3 s) and a path update; quiet
links are found dead by their proof of life: within a quiet interval and its grace. (A few
pings are not traffic to a link: its WireGuard bytes must exceed our own admin bytes by
TRAFFIC_SLACK in a second.) With --traffic, alice and bob ping charlie every 20 ms from 2 s
before the kill: a link that sends and hears nothing back is down after SUSPECT_GRACE.
Final stdout line: {"runs": [{"idle_s", "traffic", "alice_s", "bob_s"}...], "busy_max_s", "quiet_max_s"}
"""

from __future__ import annotations

import argparse
import json
import time

from wg_netmanager.lab.helperlab import start_ping
from wg_netmanager.lab.meshlab import OVERLAY, Lab, all_direct, build, every_pair_pings, our_routes, wait_for

QUIET_AFTER = 10.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", default="0,2,5,12,25", help="comma-separated idle times before each kill")
    ap.add_argument("--traffic", action="store_true", help="ping charlie from alice and bob across the kill")
    args = ap.parse_args()
    ip = OVERLAY["charlie"]
    runs = []
    with Lab() as lab:
        boxes = build(lab)
        if not wait_for(lambda: all_direct(boxes), 30):
            raise SystemExit("the mesh did not form")
        charlie = boxes["charlie"]
        for idle in (float(x) for x in args.idle.split(",")):
            every_pair_pings(boxes, OVERLAY)
            time.sleep(idle)
            flows = []
            if args.traffic:
                flows = [start_ping(boxes[n], ip, count=3000, interval=0.02) for n in ("alice", "bob")]
                time.sleep(2)
            for proc in ("controller", "helper"):
                charlie.kill(proc)
            charlie.run(["ip", "link", "del", "wg0"])
            t0 = time.monotonic()
            gone: dict[str, float] = {}
            while len(gone) < 2 and time.monotonic() - t0 < 60:
                for name in ("alice", "bob"):
                    routes = our_routes(boxes[name])
                    if name not in gone and ip not in routes and f"{ip}/32" not in routes:
                        gone[name] = round(time.monotonic() - t0, 2)
                time.sleep(0.1)
            for flow in flows:
                flow.kill()
                flow.wait()
            run = {"idle_s": idle, "traffic": args.traffic, "alice_s": gone.get("alice"), "bob_s": gone.get("bob")}
            print(json.dumps(run), flush=True)
            runs.append(run)
            charlie.start_helper(charlie.dir / "net.yaml")
            charlie.start_controller(charlie.dir / "net.yaml", OVERLAY["charlie"])
            if not wait_for(lambda: all_direct(boxes), 30):
                raise SystemExit("charlie was not readmitted")

    def worst(sel):
        times = [max(r["alice_s"] or 99, r["bob_s"] or 99) for r in runs if sel(r["idle_s"])]
        return max(times) if times else None
    print(json.dumps({"runs": runs, "busy_max_s": worst(lambda i: i < QUIET_AFTER - 1),
                      "quiet_max_s": worst(lambda i: i >= QUIET_AFTER)}))


if __name__ == "__main__":
    main()
