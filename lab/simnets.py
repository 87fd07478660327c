"""Simulated topologies shared by tests and benchmarks."""

from wg_netmanager.lab.sim import Sim


def original_example(seed: int = 1, nat: str = "eim", **overrides) -> Sim:
    """The original README's first example: Alpha-VPS behind a firewall (no inbound), Beta-VPS
    public (the only static peer), a home router doing NAT with Charlie and Delta on its LAN."""
    sim = Sim(seed=seed, **overrides)
    u = sim.underlay
    u.site("dc-alpha", nat="firewall", outside_ip="198.51.100.10", latency=0.002)
    u.site("dc-beta", latency=0.002)
    u.site("home", nat=nat, outside_ip="203.0.113.20", latency=0.0005)
    sim.add_static("10.1.0.2", "198.51.100.20")
    sim.add_node("beta", "198.51.100.20", "dc-beta", "10.1.0.2")
    sim.add_node("alpha", "198.51.100.10", "dc-alpha", "10.1.0.1")
    sim.add_node("charlie", "192.168.1.30", "home", "10.1.0.3")
    sim.add_node("delta", "192.168.1.40", "home", "10.1.0.4")
    return sim


def _lan_prefix(site: int) -> str:
    """A /24 of private addresses per home LAN, unique in the simulation (the simulated underlay
    knows each host by its address alone): 192.168.0-249, then 172.16-31.x."""
    if site < 250:
        return f"192.168.{site}"
    site -= 250
    return f"172.{16 + site // 256}.{site % 256}"


def star(n: int, seed: int = 1, hubs: int = 3, **overrides) -> Sim:
    """n nodes: ``hubs`` public static peers, the rest spread over NATed home sites."""
    sim = Sim(seed=seed, **overrides)
    u = sim.underlay
    u.site("dc", latency=0.002)
    for h in range(hubs):
        sim.add_static(f"10.1.0.{h + 1}", f"198.51.100.{h + 1}")
    names = []
    for h in range(hubs):
        names.append(f"hub{h}")
        sim.add_node(f"hub{h}", f"198.51.100.{h + 1}", "dc", f"10.1.0.{h + 1}", start=False)
    sites = max(1, (n - hubs) // 4)
    for s in range(sites):
        u.site(f"home{s}", nat="eim", outside_ip=f"203.0.{113 - s // 250}.{s % 250 + 1}", latency=0.001)
    for i in range(n - hubs):
        site = i % sites
        ip = f"10.1.{(i + 10) // 250}.{(i + 10) % 250 + 1}"
        sim.add_node(f"n{i}", f"{_lan_prefix(site)}.{i // sites + 10}", f"home{site}", ip, start=False)
        names.append(f"n{i}")
    for name in names:
        sim.start(name)
    return sim
