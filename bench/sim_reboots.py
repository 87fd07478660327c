#!/usr/bin/env python3
"""Reboots of the chaos mesh in the simulator (pure Python, no root): the tail that the chaos
bench meets about once in 20 reboots on real parts, swept over many seeds in minutes.

Every box of ``simnets.chaos_mesh`` (or ``--boxes``) is rebooted once per seed: 40 s after a
cold start the box stops (daemons and device gone), 1 s later it starts again with its saved
state, as the chaos bench's reboot; the bench's ten pairs ping at 5/s throughout, one way
as the bench's pingers do (``simnets.reboot_outage``). A reboot's outage is the bench's
(``chaoslab.outage``): the longest time any pair went without a reply beyond the ping
interval, from the restart. Simulated time: a real process's start-up (0.4-0.6 s on this
machine) comes on top.
Final stdout line: {"reboots", "max_s", "median_s", "over_1_5_s", "over_2_s", "worst": [[s,
box, seed, pair], ...]}.
"""

from __future__ import annotations

import argparse
import json
import statistics

from wg_netmanager.lab.simnets import reboot_outage

BOXES = ("alpha", "beta", "charlie", "delta", "echo", "foxtrot", "gamma", "golf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1-29", help="a range (1-29) or a list (3,15)")
    parser.add_argument("--boxes", default=",".join(BOXES))
    args = parser.parse_args()
    if "-" in args.seeds:
        lo, hi = (int(x) for x in args.seeds.split("-"))
        seeds = list(range(lo, hi + 1))
    else:
        seeds = [int(x) for x in args.seeds.split(",")]
    results = []
    for seed in seeds:
        for box in args.boxes.split(","):
            s, pair = reboot_outage(box, seed)
            results.append((round(s, 2), box, seed, pair))
    outages = [r[0] for r in results]
    print(json.dumps({"reboots": len(results), "max_s": max(outages), "median_s": statistics.median(outages),
                      "over_1_5_s": sum(o > 1.5 for o in outages), "over_2_s": sum(o > 2 for o in outages),
                      "worst": sorted(results, reverse=True)[:5]}))


if __name__ == "__main__":
    main()
