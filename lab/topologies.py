"""The emulated networks of the demo, the end-to-end tests and the benchmarks, built from one
set of parts (see :mod:`.netlab`): "public" hosts in the documentation ranges, home routers
doing NAT, a firewalled data centre, laptops that move.

Every builder returns a :class:`Mesh` whose boxes already run their system bus and the helper;
:meth:`Mesh.start` then starts the controllers (so that callers can time the start).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .netlab import Box, Lab, Segment, net_yaml

WG_PORT = 50000
#: every topology here has one static peer: a public box at 198.51.100.2 with overlay IP 10.1.1.2
NET_YAML = net_yaml(f"198.51.100.2:{WG_PORT}", "10.1.1.2")


@dataclass
class Mesh:
    lab: Lab
    config: str = NET_YAML
    boxes: dict[str, Box] = field(default_factory=dict)
    overlay: dict[str, str] = field(default_factory=dict)  # name -> overlay IP

    def add(self, name: str, overlay_ip: str, segment: Segment, address: str, gateway: str | None = None,
            routes: Iterable[tuple[str, str]] = (), verbose: bool = False) -> Box:
        """A node: a box on ``segment`` at ``address`` (CIDR) with its system bus and helper."""
        box = self.lab.box(name)
        box.attach(segment, address)
        if gateway:
            box.default_route(gateway)
        for prefix, via in routes:
            box.run(["ip", "route", "add", prefix, "via", via])
        box.start_dbus()
        box.start_helper(box.write_config(self.config), verbose=verbose)
        self.boxes[name] = box
        self.overlay[name] = overlay_ip
        return box

    def start(self, extra: Sequence[str] = (), names: Iterable[str] | None = None) -> None:
        """The controllers (as user wg-netmanager), in insertion order."""
        for name in names if names is not None else self.boxes:
            box = self.boxes[name]
            box.start_controller(box.dir / "net.yaml", self.overlay[name], extra=extra)


def home_lan(lab: Lab, names: Sequence[str] = ("alice", "bob", "charlie"), public: Sequence[str] = ()) -> Mesh:
    """bob: a public VPS (the static peer, 198.51.100.2, overlay 10.1.1.2); a NAT router
    (198.51.100.1 / 192.168.1.1); alice and charlie on its LAN; further ``names`` on the LAN
    too, except those in ``public`` (on the public segment). Overlay IPs follow the order of
    ``names`` (alice .1, bob .2, ...)."""
    mesh = Mesh(lab)
    wan, home = lab.segment("wan"), lab.segment("home")
    lab.router("router", home, "192.168.1.1/24", wan, "198.51.100.1/24")
    for i, name in enumerate(names):
        overlay = f"10.1.1.{i + 1}"
        if name == "bob":
            mesh.add(name, "10.1.1.2", wan, "198.51.100.2/24")
        elif name in public:
            mesh.add(name, overlay, wan, f"198.51.100.{10 + i}/24")
        else:
            mesh.add(name, overlay, home, f"192.168.1.{10 + i}/24", "192.168.1.1")
    return mesh


def overlay_over_lan(lab: Lab) -> Mesh:
    """The original README's ``subnet: 10.1.1.0/8`` on a 10.x network: the overlay 10.0.0.0/8
    contains the underlay. alice, charlie and delta on the LAN 10.128.1.0/24 (overlay .1, .3,
    .4), bob the static peer (overlay 10.1.1.2) in another site, 10.200.0.2, reached through
    the LAN's router (10.128.1.1 / 10.200.0.1, no NAT) by the default route: WireGuard's own
    packets to bob go to an address inside the overlay subnet."""
    mesh = Mesh(lab, config=net_yaml(f"10.200.0.2:{WG_PORT}", "10.1.1.2", subnet="10.0.0.0/8"))
    lan, site = lab.segment("lan"), lab.segment("site")
    lab.router("router", lan, "10.128.1.1/24", site, "10.200.0.1/24", nat=False, firewall=False)
    mesh.add("alice", "10.1.1.1", lan, "10.128.1.10/24", "10.128.1.1")
    mesh.add("bob", "10.1.1.2", site, "10.200.0.2/24", "10.200.0.1")
    mesh.add("charlie", "10.1.1.3", lan, "10.128.1.30/24", "10.128.1.1")
    mesh.add("delta", "10.1.1.4", lan, "10.128.1.40/24", "10.128.1.1")
    return mesh


def original_example(lab: Lab) -> Mesh:
    """The original README's first example: Alpha-VPS behind a firewall (nothing gets in
    unasked; 203.0.113.10), Beta-VPS public (the only static peer; 198.51.100.2), a home router
    doing NAT (masquerade + stateful filter; 198.51.100.1) with Charlie (.30) and Delta (.40)
    on its LAN 192.168.1.0/24. The home router maps each laptop's WireGuard port to one outside
    port whatever the destination (endpoint-independent, as the original's example assumes)."""
    mesh = Mesh(lab)
    wan, dc, home = lab.segment("wan"), lab.segment("dc"), lab.segment("home")
    lab.router("fw", dc, "203.0.113.1/24", wan, "198.51.100.3/24", nat=False, firewall=True)
    router = lab.router("router", home, "192.168.1.1/24", wan, "198.51.100.1/24", fixed_ports={
        ("192.168.1.30", WG_PORT): 50030, ("192.168.1.40", WG_PORT): 50040})
    router.run(["ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.3"])
    mesh.add("alpha", "10.1.1.1", dc, "203.0.113.10/24", "203.0.113.1")
    mesh.add("beta", "10.1.1.2", wan, "198.51.100.2/24", routes=[("203.0.113.0/24", "198.51.100.3")])
    mesh.add("charlie", "10.1.1.3", home, "192.168.1.30/24", "192.168.1.1")
    mesh.add("delta", "10.1.1.4", home, "192.168.1.40/24", "192.168.1.1")
    return mesh


def nat_in_series(lab: Lab) -> Mesh:
    """The original's second example: router 1 (public 198.51.100.1) NATs 192.168.1.0/24,
    where charlie (.30) lives and router 2 (.2) sits, which NATs 192.168.2.0/24 with delta
    (.40) and echo (.50) behind it: delta and echo are behind two NATs. beta is public (the
    static peer)."""
    mesh = Mesh(lab)
    wan, lan1, lan2 = lab.segment("wan"), lab.segment("lan1"), lab.segment("lan2")
    lab.router("router1", lan1, "192.168.1.1/24", wan, "198.51.100.1/24", fixed_ports={
        ("192.168.1.30", WG_PORT): 50030, ("192.168.1.2", 50040): 50040, ("192.168.1.2", 50050): 50050})
    lab.router("router2", lan2, "192.168.2.1/24", lan1, "192.168.1.2/24", gateway="192.168.1.1", fixed_ports={
        ("192.168.2.40", WG_PORT): 50040, ("192.168.2.50", WG_PORT): 50050})
    mesh.add("beta", "10.1.1.2", wan, "198.51.100.2/24")
    mesh.add("charlie", "10.1.1.3", lan1, "192.168.1.30/24", "192.168.1.1")
    mesh.add("delta", "10.1.1.4", lan2, "192.168.2.40/24", "192.168.2.1")
    mesh.add("echo", "10.1.1.5", lan2, "192.168.2.50/24", "192.168.2.1")
    return mesh


def two_homes(lab: Lab, mapping: str = "eim", udp_timeout: int | None = None) -> Mesh:
    """beta public (the static peer); carol behind home router 1 (endpoint-independent), dave
    behind home router 2 with ``mapping`` "eim" (one outside port per inside port) or
    "symmetric" (a fresh random outside port per destination: no hole punching gets through).
    Both LANs are 192.168.1.0/24, as at most homes. ``udp_timeout`` shortens both routers'
    conntrack UDP timeouts (seconds): mappings then live only as long as keepalives renew them."""
    mesh = Mesh(lab)
    wan, home1, home2 = lab.segment("wan"), lab.segment("home1"), lab.segment("home2")
    routers = [
        lab.router("router1", home1, "192.168.1.1/24", wan, "198.51.100.11/24",
                   fixed_ports={("192.168.1.30", WG_PORT): 50030}),
        lab.router("router2", home2, "192.168.1.1/24", wan, "198.51.100.12/24",
                   fixed_ports={("192.168.1.40", WG_PORT): 50040} if mapping == "eim" else None,
                   mapping="symmetric" if mapping == "symmetric" else "masquerade"),
    ]
    if udp_timeout is not None:
        for router in routers:
            router.sysctl("net.netfilter.nf_conntrack_udp_timeout", str(udp_timeout))
            router.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", str(udp_timeout))
    mesh.add("beta", "10.1.1.2", wan, "198.51.100.2/24")
    mesh.add("carol", "10.1.1.3", home1, "192.168.1.30/24", "192.168.1.1")
    mesh.add("dave", "10.1.1.4", home2, "192.168.1.40/24", "192.168.1.1")
    return mesh


def roaming(lab: Lab) -> Mesh:
    """beta public (the static peer); charlie at home (router 1, 192.168.1.0/24); erin's
    laptop on the same home LAN (.50) - and a café (router 2, 192.168.7.0/24) she can move
    to with :func:`move_to_cafe`."""
    mesh = Mesh(lab)
    wan, home, cafe = lab.segment("wan"), lab.segment("home"), lab.segment("cafe")
    lab.router("router1", home, "192.168.1.1/24", wan, "198.51.100.11/24",
               fixed_ports={("192.168.1.30", WG_PORT): 50030, ("192.168.1.50", WG_PORT): 50050})
    lab.router("router2", cafe, "192.168.7.1/24", wan, "198.51.100.12/24")
    mesh.add("beta", "10.1.1.2", wan, "198.51.100.2/24")
    mesh.add("charlie", "10.1.1.3", home, "192.168.1.30/24", "192.168.1.1")
    mesh.add("erin", "10.1.1.5", home, "192.168.1.50/24", "192.168.1.1")
    return mesh


def move_to_cafe(mesh: Mesh) -> None:
    mesh.boxes["erin"].move(mesh.lab.segments["cafe"], "192.168.7.23/24", "192.168.7.1")


#: the chaos mesh's home LAN: name -> (underlay address, overlay IP); golf is the laptop that roams
CHAOS_HOME = {"charlie": ("192.168.1.30", "10.1.1.3"), "delta": ("192.168.1.40", "10.1.1.4"),
              "echo": ("192.168.1.50", "10.1.1.5"), "foxtrot": ("192.168.1.60", "10.1.1.6"),
              "golf": ("192.168.1.70", "10.1.1.7")}
#: every box of the chaos mesh
CHAOS_NAMES = ("alpha", "beta", *CHAOS_HOME, "gamma")


def chaos(lab: Lab) -> Mesh:
    """Eight boxes as a user's mesh looks: beta (the static peer, 198.51.100.2) and gamma
    (198.51.100.8) public; alpha in a firewalled data centre (203.0.113.10, nothing gets in
    unasked); charlie, delta, echo, foxtrot and the laptop golf behind one home NAT router
    (198.51.100.1, endpoint-independent mapping per box); a café NAT (198.51.100.12,
    192.168.7.0/24) golf can roam to with :func:`roam` and back with :func:`come_home`."""
    mesh = Mesh(lab)
    wan, dc, home, cafe = (lab.segment(name) for name in ("wan", "dc", "home", "cafe"))
    dc_route = [("203.0.113.0/24", "198.51.100.3")]  # the data centre, through its firewall
    lab.router("fw", dc, "203.0.113.1/24", wan, "198.51.100.3/24", nat=False, firewall=True)
    for name, inside, lan, outside, fixed in (
            ("router", home, "192.168.1.1/24", "198.51.100.1/24",
             {(ip, WG_PORT): 50000 + int(ip.rsplit(".", 1)[1]) for ip, _ in CHAOS_HOME.values()}),
            ("cafe-nat", cafe, "192.168.7.1/24", "198.51.100.12/24", None)):
        router = lab.router(name, inside, lan, wan, outside, fixed_ports=fixed)
        router.run(["ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.3"])
    mesh.add("alpha", "10.1.1.1", dc, "203.0.113.10/24", "203.0.113.1")
    mesh.add("beta", "10.1.1.2", wan, "198.51.100.2/24", routes=dc_route)
    for name, (address, overlay) in CHAOS_HOME.items():
        mesh.add(name, overlay, home, f"{address}/24", "192.168.1.1")
    mesh.add("gamma", "10.1.1.8", wan, "198.51.100.8/24", routes=dc_route)
    return mesh


def roam(mesh: Mesh, name: str = "golf") -> None:
    """The laptop leaves home for the café."""
    mesh.boxes[name].move(mesh.lab.segments["cafe"], "192.168.7.23/24", "192.168.7.1")


def come_home(mesh: Mesh, name: str = "golf") -> None:
    mesh.boxes[name].move(mesh.lab.segments["home"], f"{CHAOS_HOME[name][0]}/24", "192.168.1.1")
