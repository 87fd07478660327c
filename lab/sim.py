"""A deterministic in-memory network for many controller cores and a hand-driven clock.

Underlay: *sites* (LANs) form a tree under the public internet (the root site). A site
either is public (routed, no translation) or sits behind a NAT box whose outside address
lives in the parent site: ``eim`` (endpoint-independent mapping, address-and-port-dependent
filtering, like Linux masquerade), ``symmetric`` (a new mapping per destination) or
``firewall`` (no translation, stateful: nothing gets in that was not asked for). Sites have
one-way latency and loss; hosts can be partitioned or given drop rules.

Data plane: a model of WireGuard per node: peers with endpoint, allowed IPs and keepalive;
handshakes (initiation/response over the underlay, through NATs, with roaming and a 5 s
retry); sessions that expire after 180 s; a staged queue while a handshake is pending;
cryptokey routing (an inner packet whose source is not in the sending peer's allowed IPs is
dropped); /32 routes; forwarding on relays. The desired state of each core is applied the
way Helper1 applies it (empty endpoint = keep what WireGuard roamed to).

Everything is driven by one event queue and ``random.Random(seed)``: same seed, same run.
"""

from __future__ import annotations

import bisect
import collections
import functools
import gc
import heapq
import ipaddress
import random
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from wg_netmanager.controller import crypto, wire
from wg_netmanager.controller.core import Core, CoreConfig, PeerObservation, StaticPeerConfig
from wg_netmanager.controller.core.node import STATE_SAVE_INTERVAL

EPOCH = 1_800_000_000.0  # sim time 0 as wall-clock seconds
SHARED_KEY = bytes(range(32))
SUBNET = "10.1.0.0/16"
WG_PORT = 51820
ADMIN_PORT = 55555
HS_SIZE = 148
KEEPALIVE_SIZE = 32
DATA_OVERHEAD = 32
SESSION_LIFETIME = 180.0
REKEY_AFTER = 120.0
HANDSHAKE_RETRY = 5.0

Addr = tuple[str, int]


# ============================================================================ underlay


@dataclass
class Nat:
    kind: str  # eim | symmetric | firewall
    outside_ip: str
    timeout: float = 120.0
    hairpin: bool = True  # inside hosts reach each other through the outside address
    next_port: int = 40000
    # eim: (in_ip, in_port) -> out_port; symmetric: (in_ip, in_port, dst) -> out_port
    mappings: dict = field(default_factory=dict)
    reverse: dict = field(default_factory=dict)  # out_port -> [(in_ip, in_port), allowed remotes, expiry]


@dataclass
class Site:
    name: str
    parent: Site | None
    latency: float  # one-way seconds across this site
    nat: Nat | None = None
    loss: float = 0.0
    hosts: set = field(default_factory=set)
    children: dict = field(default_factory=dict)  # address reachable below -> child site


class Underlay:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.root = Site("internet", None, 0.010)
        self.sites = {"internet": self.root}
        self.host_site: dict[str, Site] = {}
        self.blocked: set[frozenset] = set()  # partitioned host pairs
        self.drop_rules: list[Callable[[str, Addr, Addr], bool]] = []

    def site(self, name: str, parent: str = "internet", nat: str | None = None, outside_ip: str | None = None,
             latency: float = 0.0005, nat_timeout: float = 120.0, hairpin: bool = True) -> Site:
        parent_site = self.sites[parent]
        site = Site(name, parent_site, latency)
        if nat is not None:
            if outside_ip is None:
                raise ValueError("a NAT needs its outside address")
            site.nat = Nat(nat, outside_ip, timeout=nat_timeout, hairpin=hairpin)
            self._announce(parent_site, outside_ip, site)
        self.sites[name] = site
        return site

    def _announce(self, site: Site, ip: str, child: Site) -> None:
        """Make ``ip`` (below ``child``) routable from ``site`` and, while public, its ancestors."""
        site.children[ip] = child
        while site.nat is None and site.parent is not None:
            site.parent.children[ip] = site
            site = site.parent

    def _withdraw(self, site: Site, ip: str) -> None:
        while site is not None:
            site.children.pop(ip, None)
            if site.nat is not None:
                break
            site = site.parent

    def add_host(self, ip: str, site: str) -> None:
        if ip in self.host_site:  # one address, one host: this model has no overlapping private ranges
            raise ValueError(f"{ip} is already a host (in {self.host_site[ip].name})")
        s = self.sites[site]
        s.hosts.add(ip)
        self.host_site[ip] = s
        if s.nat is None and s.parent is not None:
            self._announce(s.parent, ip, s)

    def remove_host(self, ip: str) -> None:
        s = self.host_site.pop(ip)
        s.hosts.discard(ip)
        if s.nat is None and s.parent is not None:  # (as add_host announced it; behind a NAT the
            self._withdraw(s.parent, ip)          # outside address stays, e.g. a firewall's own)

    def move_host(self, ip: str, new_ip: str, site: str) -> None:
        self.remove_host(ip)
        self.add_host(new_ip, site)

    def route(self, src: Addr, dst: Addr, now: float, commit: bool = True) -> tuple[Addr, Addr, float] | None:
        """Deliver a UDP packet: (source as seen by the receiver, receiving host addr, latency) or None."""
        site = self.host_site.get(src[0])
        if site is None:
            return None
        if self.blocked and frozenset((src[0], dst[0])) in self.blocked:
            return None
        for rule in self.drop_rules:
            if rule("out", src, dst):
                return None
        cur_src = src
        latency = 0.0
        while True:
            latency += site.latency
            if commit and site.loss and self.rng.random() < site.loss:
                return None
            if dst[0] in site.hosts:
                return self._deliver(cur_src, dst, latency)
            child = site.children.get(dst[0])
            if child is not None:
                return self._descend(child, cur_src, dst, latency, now, commit)
            if site.parent is None:
                return None
            if site.nat is not None:
                cur_src = self._outbound(site.nat, cur_src, dst, now, commit)
                if cur_src is None:
                    return None
            site = site.parent

    def _deliver(self, src: Addr, dst: Addr, latency: float):
        for rule in self.drop_rules:
            if rule("in", src, dst):
                return None
        return src, dst, latency

    def _outbound(self, nat: Nat, src: Addr, dst: Addr, now: float, commit: bool) -> Addr | None:
        if nat.kind == "firewall":
            key = (src[0], src[1])
            entry = nat.reverse.get(key)
            if commit:
                if entry is None or entry[2] < now:
                    entry = [key, set(), 0.0]
                    nat.reverse[key] = entry
                entry[1].add(dst)
                entry[2] = now + nat.timeout
            return src
        key = (src[0], src[1]) if nat.kind == "eim" else (src[0], src[1], dst)
        port = nat.mappings.get(key)
        if port is not None and nat.reverse[port][2] < now:
            if commit:
                del nat.reverse[port]
                del nat.mappings[key]
            port = None
        if port is None:
            if not commit:
                return None
            port = nat.next_port
            nat.next_port += 1
            nat.mappings[key] = port
            nat.reverse[port] = [(src[0], src[1]), set(), 0.0]
        if commit:
            entry = nat.reverse[port]
            entry[1].add(dst)
            entry[2] = now + nat.timeout
        return nat.outside_ip, port

    def _descend(self, site: Site, src: Addr, dst: Addr, latency: float, now: float, commit: bool):
        nat = site.nat
        latency += site.latency
        if nat is None:
            inner = dst
        elif src[0] == nat.outside_ip and not nat.hairpin:
            return None
        elif nat.kind == "firewall":
            entry = nat.reverse.get((dst[0], dst[1]))
            if entry is None or entry[2] < now or src not in entry[1]:
                return None
            if commit:
                entry[2] = now + nat.timeout  # conntrack refreshes on replies too
            inner = dst
        else:
            entry = nat.reverse.get(dst[1])
            if entry is None or entry[2] < now or src not in entry[1]:
                return None
            if commit:
                entry[2] = now + nat.timeout
            inner = entry[0]
        if inner[0] in site.hosts:
            return self._deliver(src, inner, latency)
        child = site.children.get(inner[0])
        if child is not None:
            return self._descend(child, src, inner, latency, now, commit)
        return None


@functools.lru_cache(maxsize=4)
def _admin_key(shared_key: bytes) -> bytes:
    return crypto.derive_admin_key(shared_key)


def admin_inner(data: bytes, shared_key: bytes = SHARED_KEY) -> bytes:
    """An admin datagram's inner message, for measurements (decrypts, does not authenticate);
    its first byte is the type (``& ~wire.AUTH_MAC``)."""
    start = len(wire.HEADER) + wire.NONCE_LEN
    return wire.aead_open(data[start:], wire.HEADER, data[len(wire.HEADER):start], _admin_key(shared_key))


# ============================================================================ WireGuard model


@functools.lru_cache(maxsize=65536)
def _host(prefix: str) -> str:
    """"10.1.0.5/32" -> "10.1.0.5" (one string for all nodes)."""
    return prefix.split("/")[0]


@functools.lru_cache(maxsize=65536)
def _fmt_addr(addr: Addr) -> str:
    """("10.0.0.1", 51820) -> "10.0.0.1:51820" as wg shows an endpoint (every poll, every peer)."""
    return f"{addr[0]}:{addr[1]}"


@dataclass
class WgPeer:
    key: bytes
    endpoint: Addr | None = None
    allowed: set = field(default_factory=set)
    allowed_from: tuple | None = None  # the desired allowed IPs ``allowed`` was made from
    keepalive: int = 0
    last_handshake: float = 0.0  # sim seconds, 0 = never
    pending_since: float | None = None
    last_sent: float = -1e9
    rx: int = 0
    tx: int = 0
    staged: list = field(default_factory=list)


@dataclass(slots=True)
class Packet:
    """An overlay IP packet."""

    src: str
    dst: str
    proto: str  # "admin" | "echo" | "echo_reply"
    payload: bytes = b""
    sport: int = 0
    dport: int = 0
    ident: int = 0
    size: int = 100


class SimNode:
    def __init__(self, sim: Sim, name: str, underlay_ip: str, overlay_ip: str, core: Core, wg_key: bytes,
                 lan_prefix: int, forwarding: bool = True) -> None:
        self.sim = sim
        self.name = name
        self.underlay_ip = underlay_ip
        self.overlay_ip = overlay_ip
        self.core = core
        self.wg_key = wg_key
        self.wg_port = WG_PORT
        self.lan_prefix = lan_prefix
        self.forwarding = forwarding
        self.peers: dict[bytes, WgPeer] = {}
        self.routes: dict[str, str | None] = {}
        self.owners: dict[str, bytes] = {}  # allowed IP -> peer (cryptokey routing)
        self.routes_from: tuple = ()  # the desired routes self.routes was made from
        self.applied_version = -1
        self.apply_due = -1  # the data-plane version an apply event is scheduled for, of apply_due_core
        self.apply_due_core: Core | None = None
        self.timer_at: float | None = None
        self.alive = True
        self.paused = False  # the controller is stopped (SIGSTOP); WireGuard goes on
        self.backlog_drop = False  # ... or not running at all: its datagrams are lost
        self.settle_gate = False  # applies wait for core.settled() (after a controller restart)
        self.backlog: list[tuple[bytes, Addr, bool]] = []  # admin datagrams waiting in the socket meanwhile
        self.stats: dict[str, int] = {}
        self.apply_count = 0
        self.poll_at = 0.0
        #: what the runtime saved last (state.json): it saves every STATE_SAVE_INTERVAL while
        #: the state changed, and on a clean stop; a controller killed with -9 resumes from it
        self.saved_state: dict | None = None
        self.save_due = 0.0

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    # ---------------------------------------------------------------- apply (Helper1 semantics)

    def apply(self) -> None:
        plane = self.core.dataplane
        self.applied_version = self.core.dataplane_version
        self.apply_count += 1
        wanted = {p.public_key: p for p in plane.peers}
        owners = self.owners  # (invariant: ip in peers[key].allowed <=> owners[ip] == key)
        for key in list(self.peers):
            if key not in wanted:
                for ip in self.peers.pop(key).allowed:
                    if owners.get(ip) == key:
                        del owners[ip]
        for p in plane.peers:
            peer = self.peers.get(p.public_key)
            if peer is None:
                peer = self.peers[p.public_key] = WgPeer(p.public_key)
            if p.endpoint:
                host, _, port = p.endpoint.rpartition(":")
                peer.endpoint = (host.strip("[]"), int(port))
            if p.keepalive and not peer.keepalive:
                peer.keepalive = p.keepalive
                self.sim.schedule(0, self._keepalive_now, peer.key)  # like WireGuard: send one at once
            peer.keepalive = p.keepalive
            if p.allowed_ips is peer.allowed_from:
                continue  # (the core hands on the same tuple while a peer's allowed IPs stay)
            allowed = {_host(ip) for ip in p.allowed_ips}
            for ip in peer.allowed - allowed:
                if owners.get(ip) == p.public_key:
                    del owners[ip]
            for ip in allowed - peer.allowed:
                previous = self.peers.get(owners.get(ip))  # (a test may have cleared the peers)
                if previous is not None and previous.key != p.public_key:
                    previous.allowed.discard(ip)  # like WireGuard: an allowed IP moves
                owners[ip] = p.public_key
            peer.allowed, peer.allowed_from = allowed, p.allowed_ips
        if plane.routes is not self.routes_from:
            self.routes = {_host(r.destination): r.gateway for r in plane.routes}
            self.routes_from = plane.routes

    def _keepalive_now(self, key: bytes) -> None:
        peer = self.peers.get(key)
        if peer is not None and peer.keepalive and self.alive:
            self.send_keepalive(peer)

    # ---------------------------------------------------------------- sending

    def peer_for(self, dst: str) -> WgPeer | None:
        key = self.owners.get(dst)
        return self.peers.get(key) if key is not None else None

    def send_overlay(self, pkt: Packet) -> None:
        if pkt.dst not in self.routes:
            self.count("drop_no_route")
            return
        peer = self.peer_for(pkt.dst)
        if peer is None or peer.endpoint is None:
            self.count("drop_no_peer")
            return
        now = self.sim.now
        if peer.last_handshake and now - peer.last_handshake < SESSION_LIFETIME:
            self._send_data(peer, pkt)
            if now - peer.last_handshake > REKEY_AFTER and peer.pending_since is None:
                self.initiate(peer)
        else:
            if len(peer.staged) < 128:
                peer.staged.append(pkt)
            if peer.pending_since is None or now - peer.pending_since > HANDSHAKE_RETRY:
                self.initiate(peer)

    def _send_data(self, peer: WgPeer, pkt: Packet | None) -> None:
        size = (pkt.size + DATA_OVERHEAD) if pkt is not None else KEEPALIVE_SIZE
        peer.tx += size
        peer.last_sent = self.sim.now
        self.count("wg_data" if pkt is not None else "wg_keepalive")
        self.sim.udp((self.underlay_ip, self.wg_port), peer.endpoint, ("data", self.wg_key, pkt), size)

    def send_keepalive(self, peer: WgPeer) -> None:
        now = self.sim.now
        if peer.endpoint is None:
            return
        if peer.last_handshake and now - peer.last_handshake < SESSION_LIFETIME:
            self._send_data(peer, None)
        elif peer.pending_since is None or now - peer.pending_since > HANDSHAKE_RETRY:
            self.initiate(peer)

    def initiate(self, peer: WgPeer) -> None:
        if peer.endpoint is None:
            return
        peer.pending_since = self.sim.now
        peer.tx += HS_SIZE
        peer.last_sent = self.sim.now
        self.count("wg_handshake")
        self.sim.udp((self.underlay_ip, self.wg_port), peer.endpoint, ("hs_init", self.wg_key, None), HS_SIZE)

    def wg_tick(self) -> None:
        """Persistent keepalives and handshake retries (WireGuard's timers, at 1 s granularity)."""
        now = self.sim.now
        for peer in list(self.peers.values()):
            if peer.pending_since is not None and now - peer.pending_since > HANDSHAKE_RETRY:
                if peer.staged or peer.keepalive:
                    self.initiate(peer)
                else:
                    peer.pending_since = None
            elif peer.keepalive and now - peer.last_sent >= peer.keepalive:
                self.send_keepalive(peer)

    # ---------------------------------------------------------------- receiving

    def wg_receive(self, src: Addr, msg: tuple, size: int) -> None:
        kind, sender_key, pkt = msg
        peer = self.peers.get(sender_key)
        if peer is None:
            self.count("wg_drop_unknown_peer")
            return
        now = self.sim.now
        peer.rx += size
        if kind == "hs_init":
            peer.endpoint = src  # roaming
            peer.last_handshake = now
            peer.pending_since = None
            peer.tx += HS_SIZE
            peer.last_sent = now
            self.sim.udp((self.underlay_ip, self.wg_port), src, ("hs_resp", self.wg_key, None), HS_SIZE)
            self._flush(peer)
        elif kind == "hs_resp":
            if peer.pending_since is None:
                return
            peer.endpoint = src
            peer.last_handshake = now
            peer.pending_since = None
            if peer.staged:
                self._flush(peer)
            else:
                self._send_data(peer, None)  # confirm the session to the responder
        elif kind == "data":
            if not peer.last_handshake or now - peer.last_handshake > SESSION_LIFETIME:
                self.count("wg_drop_no_session")
                return
            peer.endpoint = src
            if pkt is None:
                return
            if pkt.src not in peer.allowed:
                self.count("wg_drop_allowed_ips")
                self.sim.stats["wg_drop_allowed_ips"] = self.sim.stats.get("wg_drop_allowed_ips", 0) + 1
                return
            if pkt.dst == self.overlay_ip:
                self.sim.overlay_deliver(self, pkt)
            elif self.forwarding:
                self.count("forwarded")
                self.send_overlay(pkt)

    def _flush(self, peer: WgPeer) -> None:
        staged, peer.staged = peer.staged, []
        for pkt in staged:
            self._send_data(peer, pkt)

    def observation(self) -> dict[bytes, PeerObservation]:
        return {key: PeerObservation(_fmt_addr(p.endpoint) if p.endpoint else "",
                                     EPOCH + p.last_handshake if p.last_handshake else 0.0, p.rx, p.tx)
                for key, p in self.peers.items()}


# ============================================================================ the simulation


class Sim:
    def __init__(self, seed: int = 1, subnet: str = SUBNET, poll_interval: float = 1.0,
                 apply_delay: float = 0.005, **core_overrides) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.queue: list = []
        self.seq = 0
        self.underlay = Underlay(self.rng)
        self.nodes: dict[str, SimNode] = {}
        self.by_underlay: dict[str, SimNode] = {}
        self.by_overlay: dict[str, SimNode] = {}
        self.subnet = ipaddress.ip_network(subnet)
        self.poll_interval = poll_interval
        self.apply_delay = apply_delay
        self.core_overrides = core_overrides
        self.static_peers: list[StaticPeerConfig] = []
        self.events: list[tuple[float, str, object]] = []
        self.pings: dict[int, float | None] = {}
        self.ping_seq = 0
        self.ping_sinks: dict[int, list[float]] = {}  # echo id -> where its reply's time goes (see pinger)
        self.cache = wire.RecordCache(1 << 20)  # records verified/decoded once per process
        self.pair_memo: dict[bytes, bytes] = {}  # pair MAC keys derived once per pair (see crypto.PairKeys)
        self.stats: dict[str, int] = {}
        self.capture: Callable[[str, bytes, Addr], None] | None = None
        self.keep_events = True
        #: model the runtime's saving of each core's state (SimNode.saved_state, for
        #: restart_controller(killed=True)); off by default: a saved state holds every binding,
        #: N of them per node (12 MB at 300 nodes)
        self.model_saves = False
        self._overlay: dict[str, bool] = {}

    # ---------------------------------------------------------------- building

    def random_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def add_static(self, overlay_ip: str, host: str, wg_port: int = WG_PORT, admin_port: int = ADMIN_PORT) -> None:
        self.static_peers.append(StaticPeerConfig(overlay_ip, host, wg_port, admin_port))

    def add_node(self, name: str, underlay_ip: str, site: str, overlay_ip: str, start: bool = True,
                 lan_prefix: int = 24, identity_seed: bytes | None = None, forwarding: bool = True,
                 wg_key: bytes | None = None, persisted: dict | None = None, **overrides) -> SimNode:
        self.underlay.add_host(underlay_ip, site)
        seed = identity_seed or self.rng.randbytes(32)
        wg_key = wg_key or self.rng.randbytes(32)
        cfg_args = dict(shared_key=SHARED_KEY, subnet=str(self.subnet), overlay_ip=overlay_ip, name=name,
                        wg_port=WG_PORT, admin_port=ADMIN_PORT, static_peers=tuple(self.static_peers))
        cfg_args.update(self.core_overrides)
        cfg_args.update(overrides)
        core = Core(CoreConfig(**cfg_args), seed, wg_key, EPOCH + self.now, self.random_bytes, persisted=persisted,
                    lan_endpoints=[(underlay_ip, lan_prefix)], cache=self.cache, pair_memo=self.pair_memo)
        node = SimNode(self, name, underlay_ip, overlay_ip, core, wg_key, lan_prefix, forwarding)
        node.identity_seed = seed
        node.alive = False
        self.nodes[name] = node
        self.by_underlay[underlay_ip] = node
        self.by_overlay[overlay_ip] = node
        if start:
            self.start(name)
        return node

    def start(self, name: str) -> None:
        node = self.nodes[name]
        node.alive = True
        node.poll_at = self.now + self.rng.random() * self.poll_interval
        self.schedule(node.poll_at - self.now, self._poll, name)
        self._pump(node)
        self.schedule(self.rng.random(), self._wg_tick, name)

    def stop(self, name: str) -> None:
        """The whole box goes away: controller and data plane."""
        node = self.nodes[name]
        node.alive = False
        node.peers.clear()
        node.routes.clear()

    def leave(self, name: str, teardown_after: float = 0.3) -> None:
        """``wg_netmanager down``: the core announces its departure, and ``teardown_after``
        seconds later the runtime removes the data plane and stops feeding the core (back:
        :meth:`restart`)."""
        node = self.nodes[name]
        node.core.leave(EPOCH + self.now)
        self._pump(node)
        self.schedule(teardown_after, self.stop, name)

    def come_back(self, name: str) -> None:
        """``wg_netmanager up`` after :meth:`leave`: the runtime brings the device back and
        starts a new core from the state the departed one saved (its departure's version)."""
        node = self.nodes[name]
        state = node.core.persistent_state()
        node.alive = True
        self._start_controller(name, state)
        self.schedule(self.rng.random(), self._wg_tick, name)

    def restart(self, name: str, keep_state: bool = False, **overrides) -> SimNode:
        """Same identity and WireGuard key, an empty data plane (a reboot): a fresh controller
        state, or with ``keep_state`` the one it saved last (a box's reboot keeps
        /var/lib/wg-netmanager)."""
        old = self.nodes[name]
        state = old.core.persistent_state() if keep_state else None
        self.stop(name)
        site = self.underlay.host_site[old.underlay_ip]
        self.underlay.remove_host(old.underlay_ip)
        node = self.add_node(name, old.underlay_ip, site.name, old.overlay_ip, start=False,
                             identity_seed=old.identity_seed, lan_prefix=old.lan_prefix, wg_key=old.wg_key,
                             persisted=state, **overrides)
        self.start(name)
        # like the runtime: the first look at the (new, empty) device comes at once, and no
        # Apply before the core has settled (a reboot's peers reconnect within the first second:
        # applied before that look, their fresh sessions looked like ones the device kept)
        node.settle_gate = True
        node.poll_at = self.now
        self.schedule(0, self._poll, name)
        return node

    def restart_controller(self, name: str, down_for: float = 1.0, killed: bool = False) -> None:
        """``systemctl restart wg-netmanager``: the controller stops, its data plane (WireGuard
        peers, routes) stays; ``down_for`` seconds later a new controller starts from the state
        the old one saved, and (like the runtime) applies nothing before it has settled.
        ``killed``: kill -9, the state is what the runtime saved last, not at the stop (see
        :attr:`model_saves`)."""
        node = self.nodes[name]
        assert self.model_saves or not killed, "restart_controller(killed=True) needs Sim.model_saves"
        state = node.saved_state if killed else node.core.persistent_state()
        node.paused = True  # (datagrams meanwhile are lost, not queued: the socket is closed)
        node.backlog_drop = True
        self.schedule(down_for, self._start_controller, name, state)

    def _start_controller(self, name: str, state: dict) -> None:
        node = self.nodes[name]
        old = node.core
        node.core = Core(old.config, node.identity_seed, node.wg_key, EPOCH + self.now, self.random_bytes,
                         persisted=state, lan_endpoints=[(node.underlay_ip, node.lan_prefix)], cache=self.cache,
                         pair_memo=self.pair_memo)
        node.paused = False
        node.backlog_drop = False
        node.backlog = []
        node.applied_version = -1
        node.settle_gate = True
        node.timer_at = None
        node.poll_at = self.now
        self.schedule(0, self._poll, name)
        self._pump(node)

    def pause(self, name: str, seconds: float) -> None:
        """The box's controller stops for ``seconds`` (SIGSTOP/SIGCONT, a laptop's suspend as its
        peers see it): WireGuard keeps forwarding; admin datagrams wait in the socket; timers,
        observations and applies wait. On resume, like asyncio: the waiting datagrams first, then
        the overdue timer, then an observation."""
        self.nodes[name].paused = True
        self.schedule(seconds, self._resume, name)

    def _resume(self, name: str) -> None:
        node = self.nodes[name]
        node.paused = False
        if not node.alive:
            return
        backlog, node.backlog = node.backlog, []
        now = EPOCH + self.now
        for data, src, tunnel in backlog:
            node.core.datagram_received(data, src, now, tunnel)
        node.core.handle_timer(now)
        node.core.dataplane_observed(now, node.observation())
        node.timer_at = None
        self._pump(node)

    def move(self, name: str, new_ip: str, site: str, notice_after: float = 0.5) -> None:
        """Roaming: the box gets a new underlay address on another site at once; its controller
        notices ``notice_after`` seconds later (the runtime scans addresses every second)."""
        node = self.nodes[name]
        self.underlay.move_host(node.underlay_ip, new_ip, site)
        del self.by_underlay[node.underlay_ip]
        node.underlay_ip = new_ip
        self.by_underlay[new_ip] = node

        def notice() -> None:
            node.core.set_lan_endpoints([(new_ip, node.lan_prefix)], EPOCH + self.now)
            self._pump(node)
        self.schedule(notice_after, notice)

    # ---------------------------------------------------------------- event loop

    def schedule(self, delay: float, fn: Callable, *args) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (self.now + delay, self.seq, fn, args))

    def run_until(self, t: float) -> None:
        # The simulator holds every node's state in one heap (a real controller holds its own,
        # ~2 MB at 1000 nodes). CPython's cycle collector walks every container it tracks on
        # a full collection, and runs one whenever that heap grew by a quarter: at 1000 nodes
        # (~2 GB) that took about a quarter of the run. Cores and the network model make no cyclic
        # garbage (reference counting frees everything they drop), so the collector pauses
        # while the queue runs; it runs as usual between calls.
        paused = gc.isenabled()
        gc.disable()
        try:
            while self.queue and self.queue[0][0] <= t:
                when, _, fn, args = heapq.heappop(self.queue)
                self.now = when
                fn(*args)
        finally:
            if paused:
                gc.enable()
        self.now = max(self.now, t)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_true(self, pred: Callable[[], bool], timeout: float, step: float = 0.05) -> float | None:
        """Advance until ``pred()``; returns the sim time it became true, or None."""
        end = self.now + timeout
        while self.now < end:
            if pred():
                return self.now
            self.run_until(min(self.now + step, end))
        return self.now if pred() else None

    # ---------------------------------------------------------------- plumbing

    def _pump(self, node: SimNode) -> None:
        if not node.alive:
            return
        core = node.core
        for data, addr in core.take_datagrams():
            if self.capture is not None:
                self.capture(node.name, data, addr)
            self._send_admin(node, data, addr)
        events = core.take_events()
        if self.keep_events:
            for event in events:
                self.events.append((self.now, node.name, event))
        soon = self.now + min(self.poll_interval, core.observation_interval())
        if soon < node.poll_at - 1e-9:
            node.poll_at = soon
            self.schedule(soon - self.now, self._poll, node.name)
        version = core.dataplane_version
        if version != node.applied_version and (version != node.apply_due or core is not node.apply_due_core):
            node.apply_due, node.apply_due_core = version, core  # (one apply event per version)
            self.schedule(self.apply_delay, self._apply, node.name, version)
        deadline = core.next_deadline() - EPOCH
        if node.timer_at is None or deadline < node.timer_at - 1e-9 or node.timer_at <= self.now:
            node.timer_at = max(deadline, self.now)
            self.schedule(node.timer_at - self.now, self._timer, node.name, node.core)

    def _apply(self, name: str, version: int) -> None:
        node = self.nodes[name]
        if node.paused or (node.settle_gate and not node.core.settled(EPOCH + self.now)):
            # the controller takes the helper's answer when it runs again; a restarted one
            # applies nothing before it has settled (see runtime.apply_loop)
            self.schedule(0.05 if node.paused else 0.2, self._apply, name, version)
            return
        if node.alive and version == node.core.dataplane_version and node.applied_version != version:
            node.apply()
            node.core.dataplane_applied(version, EPOCH + self.now)
            self._pump(node)

    def _timer(self, name: str, core: Core) -> None:
        node = self.nodes[name]
        if not node.alive or node.core is not core:
            return
        if node.paused:
            node.timer_at = None  # (_resume runs the overdue timer)
            return
        if self.now + 1e-9 < node.timer_at:
            return
        node.timer_at = None
        core.handle_timer(EPOCH + self.now)
        self._pump(node)

    def _poll(self, name: str) -> None:
        node = self.nodes[name]
        if not node.alive or self.now + 1e-9 < node.poll_at:
            return  # stale: an earlier poll was scheduled since
        if node.paused:
            node.poll_at = self.now + self.poll_interval
            self.schedule(self.poll_interval, self._poll, name)
            return
        node.poll_at = self.now + min(self.poll_interval, node.core.observation_interval())
        self.schedule(node.poll_at - self.now, self._poll, name)
        node.core.dataplane_observed(EPOCH + self.now, node.observation())
        self._pump(node)
        if self.model_saves and self.now >= node.save_due:  # (the runtime's housekeeping, at the next poll)
            node.save_due = self.now + STATE_SAVE_INTERVAL
            if node.core.state_dirty:
                node.saved_state = node.core.persistent_state()

    def _wg_tick(self, name: str) -> None:
        node = self.nodes[name]
        if not node.alive:
            return
        node.wg_tick()
        self.schedule(1.0, self._wg_tick, name)

    def _send_admin(self, node: SimNode, data: bytes, addr: Addr) -> None:
        node.count("admin_tx")
        node.count("admin_tx_bytes", len(data))
        over = self._overlay.get(addr[0])
        if over is None:
            over = self._overlay[addr[0]] = ipaddress.ip_address(addr[0]) in self.subnet
        if over:
            node.send_overlay(Packet(node.overlay_ip, addr[0], "admin", data, node.core.config.admin_port, addr[1],
                                     size=len(data) + 28))
        else:
            self.udp((node.underlay_ip, node.core.config.admin_port), addr, ("admin", data), len(data) + 28)

    def udp(self, src: Addr, dst: Addr, msg: tuple, size: int) -> None:
        routed = self.underlay.route(src, dst, self.now)
        if routed is None:
            self.stats["underlay_drop"] = self.stats.get("underlay_drop", 0) + 1
            return
        seen_src, at, latency = routed
        self.schedule(latency, self._udp_arrive, seen_src, at, msg, size)

    def _udp_arrive(self, src: Addr, at: Addr, msg: tuple, size: int) -> None:
        node = self.by_underlay.get(at[0])
        if node is None or not node.alive:
            return
        if msg[0] == "admin":
            if at[1] != node.core.config.admin_port:
                return
            node.count("admin_rx")
            if node.paused:
                if not node.backlog_drop:
                    node.backlog.append((msg[1], src, False))
                return
            node.core.datagram_received(msg[1], src, EPOCH + self.now, False)
            self._pump(node)
        elif at[1] == node.wg_port:
            node.wg_receive(src, msg, size)

    def overlay_deliver(self, node: SimNode, pkt: Packet) -> None:
        if pkt.proto == "admin":
            if pkt.dport == node.core.config.admin_port:
                node.count("admin_rx")
                if node.paused:
                    if not node.backlog_drop:
                        node.backlog.append((pkt.payload, (pkt.src, pkt.sport), True))
                    return
                node.core.datagram_received(pkt.payload, (pkt.src, pkt.sport), EPOCH + self.now, True)
                self._pump(node)
        elif pkt.proto == "echo":
            node.send_overlay(Packet(node.overlay_ip, pkt.src, "echo_reply", ident=pkt.ident, size=pkt.size))
        elif pkt.proto == "echo_reply":
            if pkt.ident in self.pings and self.pings[pkt.ident] is None:
                self.pings[pkt.ident] = self.now
            sink = self.ping_sinks.pop(pkt.ident, None)
            if sink is not None:
                sink.append(self.now)

    # ---------------------------------------------------------------- observing

    def ping(self, src: str, dst_ip: str, timeout: float = 2.0) -> float | None:
        """Send one echo through the overlay and run the clock until the reply (RTT) or timeout."""
        self.ping_seq += 1
        ident = self.ping_seq
        self.pings[ident] = None
        sent = self.now
        node = self.nodes[src]
        node.send_overlay(Packet(node.overlay_ip, dst_ip, "echo", ident=ident))
        got = self.run_until_true(lambda: self.pings[ident] is not None, timeout, step=0.005)
        rtt = self.pings.pop(ident)
        return None if got is None or rtt is None else rtt - sent

    def flow(self, src: str, dst_ip: str, interval: float, duration: float) -> None:
        """Traffic in the background: an echo from ``src`` every ``interval`` for ``duration``
        (answers are not waited for; the clock runs as the caller runs it)."""
        node = self.nodes[src]
        for k in range(int(duration / interval)):
            self.schedule(k * interval, self._echo, node, dst_ip)

    def pinger(self, src: str, dst: str, interval: float, duration: float) -> list[float]:
        """The chaos bench's pinger: an echo from box ``src`` to box ``dst`` every ``interval``
        for ``duration``, whichever node the box is by then (a rebooted box pings on); returns the
        list the replies' arrival times go into."""
        replies: list[float] = []
        for k in range(int(duration / interval)):
            self.schedule(k * interval, self._tagged_echo, src, dst, replies)
        return replies

    def _tagged_echo(self, src: str, dst: str, replies: list[float]) -> None:
        node = self.nodes[src]
        if node.alive:
            self.ping_seq += 1
            self.ping_sinks[self.ping_seq] = replies
            node.send_overlay(Packet(node.overlay_ip, self.nodes[dst].overlay_ip, "echo", ident=self.ping_seq))

    @staticmethod
    def _echo(node: SimNode, dst_ip: str) -> None:
        if node.alive:
            node.send_overlay(Packet(node.overlay_ip, dst_ip, "echo"))

    def trace(self, src: str, dst_ip: str) -> list[str] | None:
        """The path an overlay packet would take now (names), without sending; None if it cannot arrive."""
        node = self.nodes[src]
        hops = [node.name]
        origin = node.overlay_ip
        for _ in range(16):
            if dst_ip not in node.routes:
                return None
            peer = node.peer_for(dst_ip)
            if peer is None or peer.endpoint is None or not peer.last_handshake or \
                    self.now - peer.last_handshake > SESSION_LIFETIME:
                return None
            routed = self.underlay.route((node.underlay_ip, node.wg_port), peer.endpoint, self.now, commit=False)
            if routed is None:
                return None
            nxt = self.by_underlay.get(routed[1][0])
            if nxt is None or not nxt.alive:
                return None
            back = nxt.peers.get(node.wg_key)
            if back is None or origin not in back.allowed:
                return None
            hops.append(nxt.name)
            if nxt.overlay_ip == dst_ip:
                return hops
            if not nxt.forwarding:
                return None
            node = nxt
        return None

    def converged(self, names: list[str] | None = None, sample: int | None = None) -> bool:
        """Every live node knows every live node, and every sampled pair has a working path both ways."""
        live = sorted(n for n in (names or self.nodes) if self.nodes[n].alive)
        ids = {self.nodes[n].core.id8 for n in live}
        for name in live:
            core = self.nodes[name].core
            if not ids <= core.members.keys() or not (ids - {core.id8}) <= core.hops.keys():
                return False
        count = len(live) * (len(live) - 1) // 2
        if sample is not None and count > sample:
            starts = []  # pair number where the pairs (i, *) begin
            total = 0
            for i in range(len(live)):
                starts.append(total)
                total += len(live) - 1 - i
            pairs = []
            for k in random.Random(count).sample(range(count), sample):
                i = bisect.bisect_right(starts, k) - 1
                pairs.append((live[i], live[i + 1 + k - starts[i]]))
        else:
            pairs = [(a, b) for i, a in enumerate(live) for b in live[i + 1:]]
        for a, b in pairs:
            fwd = self.trace(a, self.nodes[b].overlay_ip)
            back = self.trace(b, self.nodes[a].overlay_ip)
            if fwd is None or back is None or fwd != back[::-1]:
                return False
        return True

    def path(self, a: str, b: str) -> list[str] | None:
        return self.trace(a, self.nodes[b].overlay_ip)

    def events_of(self, kind: str) -> list[tuple[float, str, object]]:
        return [e for e in self.events if e[2].kind == kind]


# ============================================================================ memory census


_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), range, memoryview)


def census(root: object, name: str = "core", skip: tuple = ()) -> dict[str, int]:
    """How many items the containers reachable from ``root`` hold, by path: attributes by
    name, a container's items as ``[]`` (``core.membership.members[].record``...; a tuple is
    looked into, not counted: it cannot grow). A container reached twice counts once; objects
    in ``skip`` (a cache shared between the simulator's cores, a frozen config) and functions,
    methods, classes and modules are not entered. What a core's memory is made of, as its
    growth law counts it (tests/test_faults_sim.py)."""
    opaque = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.ModuleType, type,
              functools.partial)
    seen = {id(s) for s in skip}
    sizes: dict[str, int] = {}
    stack: list[tuple[object, str]] = [(root, name)]
    while stack:
        obj, path = stack.pop()
        if isinstance(obj, _ATOMS) or isinstance(obj, opaque) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Mapping):
            sizes[path] = sizes.get(path, 0) + len(obj)
            for k, v in obj.items():
                stack.append((k, path + "[k]"))
                stack.append((v, path + "[]"))
        elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
            if not isinstance(obj, tuple):  # (a tuple is a record of fixed size: it cannot grow)
                sizes[path] = sizes.get(path, 0) + len(obj)
            stack.extend((item, path + "[]") for item in obj)
        else:
            attrs = dict(getattr(obj, "__dict__", {}))
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(obj, slot):
                        attrs[slot] = getattr(obj, slot)
            stack.extend((v, f"{path}.{k}") for k, v in attrs.items())
    return sizes
