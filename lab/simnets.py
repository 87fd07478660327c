"""Simulated topologies shared by tests and benchmarks."""

from wg_netmanager.lab.chaoslab import INTERVAL, PAIRS, outage
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


HOME_LAN = "192.168.1."


def chaos_mesh(seed: int = 1, **overrides) -> Sim:
    """The chaos bench's eight boxes (lab/chaoslab.py) in the simulator: beta the static peer
    and gamma public, alpha behind a firewall, charlie, delta, echo, foxtrot and golf behind one
    home NAT; golf roams to a café NAT (see :func:`inject`)."""
    sim = Sim(seed=seed, **overrides)
    u = sim.underlay
    u.site("dc-alpha", nat="firewall", outside_ip="198.51.100.10", latency=0.002)
    u.site("dc", latency=0.002)
    u.site("home", nat="eim", outside_ip="203.0.113.20", latency=0.0005)
    u.site("cafe", nat="eim", outside_ip="203.0.113.50", latency=0.001)
    sim.add_static("10.1.0.2", "198.51.100.20")
    sim.add_node("beta", "198.51.100.20", "dc", "10.1.0.2")
    sim.add_node("gamma", "198.51.100.30", "dc", "10.1.0.7")
    sim.add_node("alpha", "198.51.100.10", "dc-alpha", "10.1.0.1")
    for i, name in enumerate(("charlie", "delta", "echo", "foxtrot", "golf")):
        sim.add_node(name, f"{HOME_LAN}{30 + 10 * i}", "home", f"10.1.0.{3 + i if i < 4 else 8}")
    return sim


#: the faults :func:`inject` draws from, as the chaos bench's (a box's restart and a kill -9 of
#: the helper are the data plane's, which the simulator's does not model apart), plus a
#: departure (``wg_netmanager down``, ``up`` 10 s later)
SIM_FAULTS = ("kill_controller", "restart_controller", "pause", "reboot", "lan_cut", "roam", "leave")


def inject(sim: Sim, kind: str, target: str) -> None:
    """One fault of daily life, undone by itself (a pause 10 s, a reboot's box down 5 s, a LAN
    cut 15 s, golf at the café 10 s, a departure 10 s): the chaos bench's, in the simulator."""
    if kind == "kill_controller":
        sim.model_saves = True
        sim.restart_controller(target, down_for=1.0, killed=True)
    elif kind == "restart_controller":
        sim.restart_controller(target, down_for=1.0)
    elif kind == "pause":
        sim.pause(target, 10.0)
    elif kind == "reboot":
        sim.stop(target)
        sim.schedule(5.0, sim.restart, target, True)
    elif kind == "lan_cut":
        def cut(_direction, src, dst) -> bool:
            return src[0].startswith(HOME_LAN) and dst[0].startswith(HOME_LAN)
        sim.underlay.drop_rules.append(cut)
        sim.schedule(15.0, sim.underlay.drop_rules.remove, cut)
    elif kind == "roam":
        home = sim.nodes["golf"].underlay_ip
        sim.move("golf", "192.168.77.70", "cafe")
        sim.schedule(10.0, sim.move, "golf", home, "home")
    elif kind == "leave":
        sim.leave(target)
        sim.schedule(10.0, sim.come_back, target)
    else:
        raise ValueError(f"unknown fault {kind!r}")


def reboot_outage(box: str, seed: int, down: float = 1.0) -> tuple[float, str]:
    """The chaos bench's reboot in its mesh: 40 s after a cold start ``box`` stops (daemons and
    device gone) and ``down`` s later starts again with its saved state, while the bench's ten
    pairs ping at 5/s, from the pair's first box to its second as the bench's pingers do
    (``Sim.pinger``; pinging both ways hid the static peer's reboot tail: the other end's own
    echoes made it find the dead link early). Returns the worst pair's outage from the
    restart, as the bench measures it (``chaoslab.outage``), and that pair ("a-b")."""
    sim = chaos_mesh(seed=seed)
    sim.keep_events = False
    replies = {(a, b): sim.pinger(a, b, INTERVAL, 40 + down + 25) for a, b in PAIRS}
    sim.run_for(40)
    sim.stop(box)
    sim.run_for(down)
    started = sim.now
    sim.restart(box, keep_state=True)
    sim.run_for(25)
    worst, pair = max((outage(times, started, sim.now, started), pair) for pair, times in replies.items())
    return worst, "-".join(pair)
