#!/usr/bin/env python3
"""Chaos: the faults of daily life on an 8-box mesh of real parts (root).

A random fault every --period seconds for --minutes (kill -9 of either daemon, a controller
restart, SIGSTOP 10 s, a box restart, a reboot, a LAN cut of 15 s, a laptop roaming and back)
while ten pairs ping at 5/s, then a quiet minute. What it builds, injects and counts:
wg_netmanager.lab.chaoslab (lab/chaoslab.py), which tests/test_chaos_netns.py also runs, short.

Final stdout line: {"faults": {type: n}, "max_outage_s": {type: s}, "median_outage_s": {type: s},
"quiet_link_downs", "quiet_applies" (most by one node), "stale_peers", "stale_routes",
"cleartext_leaks", "redirects", "rss_growth_mb_per_h", ...}. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from wg_netmanager.lab.chaoslab import FAULTS, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long faults are injected")
    parser.add_argument("--period", type=float, default=20.0, help="seconds between faults")
    parser.add_argument("--quiet", type=float, default=60.0, help="the quiet time measured at the end (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", help="comma-separated fault types to draw from (default: all)")
    parser.add_argument("--targets", help="comma-separated boxes the faults hit (default: all), e.g. beta")
    args = parser.parse_args()
    kinds = args.only.split(",") if args.only else list(FAULTS)
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault types: {', '.join(sorted(unknown))}")
    targets = args.targets.split(",") if args.targets else None
    try:
        result = run(args.minutes, args.period, args.quiet, args.seed, kinds, targets)
    except ValueError as e:
        parser.error(str(e))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
