"""The behaviour oracle: fixed-seed simulated meshes, hashed.

Every node's data plane (peers, routes, version), counters, the simulator's per-node
statistics and the whole event log go into one hash. A refactoring keeps it; a commit that
changes behaviour on purpose updates ``EXPECTED`` and says why in its message.
"""

import hashlib

from wg_netmanager.lab.sim import EPOCH, Sim
from wg_netmanager.lab.simnets import original_example, star

#: update only in a commit that changes behaviour on purpose (and says why)
EXPECTED = "4f07f5ff192d221dd927eb5b4ad4e700d6c5be3a36e5719e8fe6504a28cc6880"


def _digest(sim: Sim, h) -> None:
    for t, name, event in sim.events:
        data = ",".join(f"{k}={event.data[k]!r}" for k in sorted(event.data))
        h.update(f"E {t:.6f} {name} {event.kind!s} {data}\n".encode())
    for name in sorted(sim.nodes):
        node = sim.nodes[name]
        core = node.core
        plane = core.dataplane
        h.update(f"N {name} v{core.dataplane_version} alive={node.alive}\n".encode())
        for p in plane.peers:
            h.update(f"P {p.public_key.hex()} {p.endpoint} {','.join(p.allowed_ips)} {p.keepalive}\n".encode())
        for r in plane.routes:
            h.update(f"R {r.destination} {r.gateway}\n".encode())
        h.update(f"C {sorted(core.counters.items())}\n".encode())
        h.update(f"S {sorted(node.stats.items())}\n".encode())


def _star_scenario(h) -> None:
    """200 nodes (3 hubs, NATed homes), cold start; a leaf dies and returns; a hub dies (every
    node fails over to the other hubs) and returns; a home loses its hub0 path."""
    sim = star(200, seed=11, hubs=3, link_policy="static")
    sim.run_for(6)
    sim.stop("n17")
    sim.run_for(8)
    sim.restart("n17")
    sim.run_for(6)
    sim.stop("hub1")
    sim.run_for(8)
    sim.restart("hub1")
    sim.run_for(6)

    def rule(direction, src, dst):  # home0's NAT cannot reach hub0
        return {src[0], dst[0]} == {"203.0.113.1", "198.51.100.1"}
    sim.underlay.drop_rules.append(rule)
    sim.run_for(8)
    sim.underlay.drop_rules.remove(rule)
    sim.run_for(6)
    _digest(sim, h)


def _small_scenario(h) -> None:
    """The original's first example with the default policy: relayed, then LAN and NAT
    traversal; a failover and back; a key rotation; an idle period; a laptop that roams."""
    sim = original_example(seed=5, idle_timeout=20)
    sim.run_for(6)

    def rule(direction, src, dst):
        ends = {src[0], dst[0]}
        return ends == {"198.51.100.10", "203.0.113.20"} or ends == {"198.51.100.10", "192.168.1.30"}
    sim.underlay.drop_rules.append(rule)
    sim.run_for(8)
    sim.underlay.drop_rules.remove(rule)
    sim.run_for(20)
    node = sim.nodes["delta"]
    new_key = bytes([77]) * 32
    node.core.set_wg_public_key(new_key, EPOCH + sim.now)
    sim.run_for(1)
    node.wg_key = new_key
    node.peers.clear()
    for n in ("alpha", "beta", "charlie"):
        peer = sim.nodes[n].peers.get(new_key)
        if peer is not None:
            peer.last_handshake = 0.0
    sim.run_for(40)
    sim.ping("charlie", "10.1.0.4")
    sim.underlay.site("cafe", nat="eim", outside_ip="203.0.113.70", hairpin=False)
    sim.move("charlie", "192.168.7.23", "cafe")
    sim.run_for(15)
    sim.ping("alpha", "10.1.0.3")
    sim.run_for(5)
    _digest(sim, h)


def oracle_hash() -> str:
    h = hashlib.sha256()
    _star_scenario(h)
    _small_scenario(h)
    return h.hexdigest()


def test_behaviour_is_unchanged():
    assert oracle_hash() == EXPECTED


if __name__ == "__main__":
    print(oracle_hash())
