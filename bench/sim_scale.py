#!/usr/bin/env python3
"""Controller cores at scale in the simulator (pure Python, no root).

Topology: 3 public static peers (hubs) and N-3 nodes on NATed home LANs (4 per LAN), all
started at t=0 (cold start), link policy "static" (direct links to the hubs and to LAN
neighbours; everything else relayed). Measures the simulated time until every node knows
every node and has a route to it, with a sample of pairs tracing a working, symmetric path
through the WireGuard model (converged_s); then the steady-state admin traffic per node
(bytes/s sent, averaged over all nodes over 20 simulated seconds, from 10 s after convergence;
``--settle 40``: once links are quiet and anti-entropy calm); the largest admin
datagram sent (bytes, and its type) over the whole run; the signature verifications per node
(records and link pages each node accepted - a node verifies each version once - plus signed datagrams
it received: datagrams between linked nodes carry the pair's MAC instead); and the wall time.
Final stdout line: {"results": [{"n", "converged_s", "bytes_per_node_s", "peak_datagram",
"peak_datagram_type", "sig_verify_per_node", "wall_s", ...}, ...]}
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from wg_netmanager.controller import wire
from wg_netmanager.lab.sim import admin_inner
from wg_netmanager.lab.simnets import star


def run(n: int, seed: int, steady: float, settle: float = 10.0) -> dict:
    wall0 = time.perf_counter()
    sim = star(n, seed=seed, hubs=3, link_policy="static")
    sim.keep_events = False
    peak = [0, 0]  # size, type
    signed = [0]

    def capture(_name, data, _addr):
        mtype = admin_inner(data)[0]
        if not mtype & wire.AUTH_MAC:
            signed[0] += 1
        if len(data) > peak[0]:
            peak[:] = [len(data), mtype & ~wire.AUTH_MAC]
    sim.capture = capture
    sample = min(300, n * (n - 1) // 2)
    t = sim.run_until_true(lambda: sim.converged(sample=sample), 30, step=0.1)
    converged_wall = time.perf_counter() - wall0
    sim.run_for(settle)
    settled_wall = time.perf_counter() - wall0
    before = sum(node.stats.get("admin_tx_bytes", 0) for node in sim.nodes.values())
    sim.run_for(steady)
    after = sum(node.stats.get("admin_tx_bytes", 0) for node in sim.nodes.values())
    wall = time.perf_counter() - wall0
    accepted = sum(node.core.counters.get("records_accepted", 0) + node.core.counters.get("pages_accepted", 0)
                   for node in sim.nodes.values())
    return {"n": n, "converged_s": round(t, 3) if t is not None else None,
            "bytes_per_node_s": round((after - before) / steady / n, 1),
            "peak_datagram": peak[0], "peak_datagram_type": wire.TYPE_NAMES[peak[1]],
            "sig_verify_per_node": round((accepted + signed[0]) / n, 1),
            "wall_s": round(wall, 2), "converge_wall_s": round(converged_wall, 2),
            "settle_wall_s": round(settled_wall - converged_wall, 2), "steady_wall_s": round(wall - settled_wall, 2),
            "steady_sim_s": steady, "settle_sim_s": settle}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steady", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=10.0,
                        help="simulated seconds between convergence and the steady window (a calm mesh: 40)")
    args = parser.parse_args()
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        results.append(run(n, args.seed, args.steady, args.settle))
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
