"""The controller core: membership, signed gossip, link management and path selection.

Sans-I/O (like h11 and aioquic): a plain class fed with

* ``datagram_received(data, src, now)`` - an admin datagram arrived from ``src``;
* ``handle_timer(now)`` - the deadline from ``next_deadline()`` has passed;
* ``dataplane_observed(now, peers)`` - what WireGuard reports (Helper1.GetState);
* local commands: ``connect(name_or_ip)``, ``probe(name_or_ip, now)``, ``set_lan_endpoints``,
  ``set_wg_public_key``, ``set_wg_port``;

and drained through

* ``take_datagrams()`` - [(bytes, (host, port))] to send from the admin socket;
* ``next_deadline()`` - when to call ``handle_timer`` next;
* ``dataplane`` / ``dataplane_version`` - the complete desired WireGuard peers and /32 routes;
* ``take_events()`` - what happened, for logs, the CLI and tests.

No sockets, asyncio, threads, clock or randomness inside: ``now`` (wall-clock seconds) is
passed in and randomness comes from the injected ``random_bytes(n)``.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from . import paths, wire
from .wire import (
    EP_LAN,
    EP_REFLEXIVE,
    EP_STATIC,
    FLAG_STATIC,
    Endpoint,
    Identity,
    LinkClaim,
    NodeInfo,
    ProtocolError,
    Record,
)

# ----------------------------------------------------------------------------- configuration

LINK_POLICIES = ("auto", "all", "static")


@dataclass(frozen=True)
class StaticPeerConfig:
    """A static peer from net.yaml, its host already resolved to an IP by the runtime."""

    overlay_ip: str
    host: str
    wg_port: int
    admin_port: int


@dataclass(frozen=True)
class CoreConfig:
    shared_key: bytes
    subnet: str
    overlay_ip: str
    name: str
    wg_port: int
    admin_port: int
    static_peers: tuple[StaticPeerConfig, ...]
    #: identities allowed per overlay IP (strict mode); None = first identity seen wins
    allowed_identities: Mapping[str, frozenset[bytes]] | None = None
    #: auto: every pair tries direct, idle direct links go silent; all: every pair direct and
    #: kept alive (the original); static: direct only to static peers, LAN neighbours, pinned nodes
    link_policy: str = "auto"
    probe_interval: float = 1.0
    link_down_after: float = 3.0
    attempt_timeout: float = 3.0
    gossip_interval: float = 0.2
    gossip_fanout: int = 2
    gossip_rounds: int = 2
    sync_interval: float = 1.0
    bootstrap_interval: float = 1.0
    replay_window: float = 120.0
    keepalive: int = 25
    idle_timeout: float = 120.0
    hop_cost_ms: int = 100
    path_debounce: float = 0.02
    publish_interval: float = 0.05
    retry_max: float = 300.0
    forget_after: float = 3600.0
    max_attempts_per_second: int = 20

    def __post_init__(self) -> None:
        if self.link_policy not in LINK_POLICIES:
            raise ValueError(f"link policy must be one of {', '.join(LINK_POLICIES)}")
        if len(self.shared_key) != 32:
            raise ValueError("shared key must be 32 bytes")


# ----------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class DesiredPeer:
    public_key: bytes
    endpoint: str  # "" = leave WireGuard's (roaming) endpoint alone
    allowed_ips: tuple[str, ...]
    keepalive: int


@dataclass(frozen=True, slots=True)
class DesiredRoute:
    destination: str
    gateway: str | None


@dataclass(frozen=True)
class DataPlane:
    peers: tuple[DesiredPeer, ...] = ()
    routes: tuple[DesiredRoute, ...] = ()

    def helper_args(self) -> tuple[list, list]:
        """The Helper1.Apply arguments (a(ssasu), a(ss))."""
        peers = [[base64.b64encode(p.public_key).decode(), p.endpoint, list(p.allowed_ips), p.keepalive]
                 for p in self.peers]
        routes = [[r.destination, r.gateway or ""] for r in self.routes]
        return peers, routes


class Event(NamedTuple):
    """Something that happened, for logs, the CLI and tests (a tuple: a mesh of N nodes makes
    O(N) of them at every node when it starts)."""

    kind: str
    data: dict

    def __str__(self) -> str:
        return f"{self.kind} " + " ".join(f"{k}={v}" for k, v in self.data.items())


#: ``_event_of((kind, data))`` == ``Event(kind, data)``, without the NamedTuple's Python-level
#: ``__new__`` (a mesh of N nodes makes O(N) events at every node when it starts)
_event_of = functools.partial(tuple.__new__, Event)


@dataclass(frozen=True)
class PeerObservation:
    """One WireGuard peer as the data plane reports it."""

    endpoint: str
    last_handshake: float
    rx_bytes: int
    tx_bytes: int


# ----------------------------------------------------------------------------- internals

ATTEMPTING, UP, DOWN = "attempting", "up", "down"
#: a candidate kind of our own (never on the wire): a LAN address of a node behind the same
#: public address as ours that is not on any of our LANs - NAT behind NAT, routed subnets
EP_NEARBY = 0x80
#: an RTT claim that moved waits this long before it is published: a link's first measurement
#: replaces a placeholder, and its neighbours' often follow; one record version carries them all
#: (every version costs every node of the mesh a verification and a path computation)
RTT_PUBLISH_DELAY = 1.0
#: urgent path recomputations (a link to us changed) come at most this often, at nodes with
#: many links (a hub's links change by the hundred; elsewhere the window between the two ends'
#: switches must stay short)
URGENT_PATHS_SPACING = 0.02
#: how long a new link that only shortens a path waits to be announced with others (see _link_up)
LINK_BATCH_DELAY = 1.0
#: how long a node's first announced links wait for its other link attempts in flight
FIRST_LINKS_WAIT = 0.3
#: a link's probe due within this share of the probe interval goes with the one due now: a
#: node's probes fall into step, one wakeup a second rather than one per link
PROBE_ALIGN = 0.25
INFINITY = float("inf")
RX_COUNTERS = {t: f"rx_{name}" for t, name in wire.TYPE_NAMES.items()}
TX_COUNTERS = {t: f"tx_{name}" for t, name in wire.TYPE_NAMES.items()}


@dataclass(slots=True)
class Link:
    peer: bytes  # id8
    static: bool  # one end is a static peer: kept forever, re-established by WireGuard itself
    initiator: bool  # this side starts attempts (and sets keepalive first)
    state: str = DOWN
    endpoint: str = ""  # the WireGuard endpoint we configured for the peer
    endpoint_kind: int = 0
    attempt: int = 0
    attempt_started: float = 0.0
    candidates: list = field(default_factory=list)
    candidate_index: int = 0
    up_since: float = 0.0
    used_since: float = 0.0  # when our path to the peer became this link
    last_ack: float = 0.0  # last probe answered over this link
    rtt: float = 0.0  # EWMA, ms
    rtt_hint: int = 0  # ms, before probes measured the link (see _link_up)
    claimed_rtt: int = 0
    fails: int = 0
    retry_at: float = 0.0
    pinned: bool = False
    last_traffic: float = 0.0
    admin_bytes: int = 0  # our admin traffic over this link since the last observation
    last_rx: int = -1
    last_tx: int = -1
    tx_stalled_since: float = 0.0
    down_since: float = 0.0
    ever_up: bool = False
    next_probe: float = 0.0
    last_probe_rx: float = 0.0  # last probe the other end sent over this link
    last_rx_progress: float = 0.0  # WireGuard received bytes from the peer (observed)
    connect_sent: float = 0.0
    connect_acked: bool = False
    connect_body: bytes = b""
    connect_due: bool = False  # send CONNECT once our data plane has the peer
    held_back_done: bool = False
    peer_ready: bool = False  # the other end has us configured (static links)
    removal_applied: bool = True  # after a failure: the data plane no longer has the peer


@dataclass(slots=True)
class Member:
    identity: bytes
    record: Record
    info: NodeInfo
    first_seen: float
    last_reachable: float


@functools.lru_cache(maxsize=65536)
def _ip_int(text: str) -> tuple[int, int]:
    """(IP version, address as an integer) of an address in text; ValueError if it is none.
    Memoised (every node parses every other node's addresses); subnet and LAN tests on these
    are plain integer operations."""
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip)


@functools.lru_cache(maxsize=65536)
def _desired_route(ip: str, prefixlen: int, gateway: str | None) -> DesiredRoute:
    """One (immutable) route object per destination and gateway: most routes stay put from one
    recomputation to the next, and many nodes route the same way (the simulator's cores share
    them)."""
    return DesiredRoute(f"{ip}/{prefixlen}", gateway)


def _net_ints(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int, int, int]:
    """(version, network address, netmask, broadcast address) as integers."""
    return net.version, int(net.network_address), int(net.netmask), int(net.broadcast_address)


def _ip_net(ip: str, prefixlen: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{ip}/{prefixlen}", strict=False)


def _fmt_ep(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=4096)
def _parse_ep(text: str) -> tuple[str, int] | None:
    """(host, port) of "host:port" / "[v6]:port" (memoised: every probe answer tells the
    prober where its WireGuard endpoint is seen)."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return host.strip("[]").split("%")[0], int(port)


class Core:
    def __init__(self, config: CoreConfig, identity_seed: bytes, wg_public_key: bytes, now: float,
                 random_bytes: Callable[[int], bytes], persisted: Mapping | None = None,
                 lan_endpoints: Iterable[tuple[str, int]] = (), cache: wire.RecordCache | None = None,
                 pair_memo: dict | None = None) -> None:
        self.config = config
        self.subnet = ipaddress.ip_network(config.subnet, strict=False)
        self._subnet_ints = _net_ints(self.subnet)
        own_ip = ipaddress.ip_address(config.overlay_ip)
        if own_ip not in self.subnet:
            raise ValueError(f"{own_ip} is not inside {self.subnet}")
        self.identity = Identity(identity_seed)
        self.id8 = self.identity.id8
        self.key = wire.derive_admin_key(config.shared_key)
        self.random_bytes = random_bytes
        self.verified = cache or wire.RecordCache()
        self.pairs = wire.PairKeys(self.identity, self.key, memo=pair_memo)
        self.wg_public_key = wg_public_key
        self.wg_port = config.wg_port
        self.is_static = any(p.overlay_ip == config.overlay_ip for p in config.static_peers)
        self.static_by_ip = {p.overlay_ip: p for p in config.static_peers if p.overlay_ip != config.overlay_ip}
        self.lan: tuple[tuple[str, int], ...] = tuple(lan_endpoints)
        self.reflexive: tuple[str, int] | None = None
        self.started = now

        persisted = persisted or {}
        self.bindings: dict[str, bytes] = {ip: bytes.fromhex(h) for ip, h in persisted.get("bindings", {}).items()}
        self.version = max(int(persisted.get("version", 0)), 0)
        self.bindings_dirty = False

        self.members: dict[bytes, Member] = {}
        self.wg_owner: dict[bytes, bytes] = {}  # WireGuard key -> id8
        self.links: dict[bytes, Link] = {}
        self.replay: dict[bytes, tuple[int, int]] = {}
        self.underlay_addr: dict[bytes, tuple[str, int]] = {}  # last underlay source per id8
        self.underlay_seen: dict[bytes, float] = {}
        self.observed: dict[bytes, PeerObservation] = {}  # by WireGuard key
        self.hot: dict[bytes, int] = {}
        self._flood: dict[bytes, bytes | None] = {}  # static nodes: new records -> their source
        self.pending_probes: dict[int, tuple[bytes, float, bool, bool]] = {}
        self.seq = 0
        self.probe_seq = 0
        self.counters: dict[str, int] = {}
        self._out: list[tuple[bytes, tuple[str, int]]] = []
        self._events: list[Event] = []
        self._conflicts_reported: set[tuple[str, bytes]] = set()

        # path state
        self.cost: dict[bytes, int] = {}
        self.pred: dict[bytes, bytes] = {}
        self.hops: dict[bytes, bytes] = {}
        self.graph = paths.LinkGraph(config.hop_cost_ms)
        self._graph_dirty = True  # the mutually claimed links changed: Dijkstra again
        #: destinations whose paths changed since routes and allowed IPs were made (None: all,
        #: or addresses changed; empty: nothing to do)
        self._route_dests: set[bytes] | None = None
        self._route_slots: list[DesiredRoute | None] = []  # route per destination (in _dest_order), or None
        #: the paths the routes were made from (hops dicts are replaced, never changed in place)
        self._routed_hops: dict[bytes, bytes] = {}
        self._allowed_lists: dict[bytes, tuple[list[int], list[str]]] = {}  # hop -> its allowed IPs, by address
        self._routes: tuple[DesiredRoute, ...] = ()
        self._allowed: dict[bytes, tuple[str, ...]] = {}
        self._dest_order: list[bytes] | None = None  # members sorted by overlay address
        self._dest_keys: list[int] = []  # their addresses as integers, in that order
        self.dataplane = DataPlane()
        self.dataplane_version = 0
        #: recent data-plane versions -> (their peers' WireGuard keys, the paths they route)
        self._planes: dict[int, tuple[frozenset[bytes], dict[bytes, bytes]]] = {0: (frozenset(), {})}
        self._applied_hops: dict[bytes, bytes] = {}  # the paths the applied data plane routes

        # timers
        self.t_gossip = now
        self.t_sync = now + config.sync_interval
        self.t_bootstrap = now
        self.t_links = now
        self.t_publish: float | None = now
        self.t_paths: float | None = None
        self.t_gc = now + 60
        self._digest_cache: bytes | None = None
        self._changed_links: set[bytes] = set()
        self._last_publish = -1e18
        self._last_recompute = -1e18
        self._lan_nets_for: tuple = ()
        self._lan_nets_cache: list = []
        self._lan_cache: dict[str, str] = {}  # address -> our address on its LAN (found ones only)
        self._bootstrap_turn = -1
        self._hop_list: tuple[dict, list[bytes]] = ({}, [])  # (hops, its keys but ours): _hop_targets
        self._by_public_ip: dict[str, set[bytes]] = {}  # underlay source address -> who spoke from it
        self._settled = False
        self._observed_once = False
        self._attempting = False  # any link waiting for a handshake (kept by _manage_links)
        self._attempt_budget = float(config.max_attempts_per_second)
        self._attempt_refill = now

        self._publish(now)

    # ========================================================================= inputs

    def datagram_received(self, data: bytes, src: tuple[str, int], now: float) -> None:
        try:
            inner = wire.open_datagram(self.key, data, self.pairs)
            self._check_replay(inner, now)
            self._dispatch(inner, src, now)
        except ProtocolError as e:
            self._count(f"drop_{e.reason}")

    def handle_timer(self, now: float) -> None:
        cfg = self.config
        if self.t_publish is not None and now >= self.t_publish:
            self._publish(now)
        if self.t_paths is not None and now >= self.t_paths:
            self._recompute(now)
        if now >= self.t_bootstrap:
            # (once every static peer is known, only a forgotten one would need it again)
            self.t_bootstrap = now + cfg.bootstrap_interval * (1 if self._bootstrap(now) else 10)
        if now >= self.t_links:
            self._manage_links(now)
        if now >= self.t_gossip:
            self._gossip(now)
            # rounds while records are hot (_publish and _accept_record wake it up again)
            self.t_gossip = now + cfg.gossip_interval if self.hot else INFINITY
        if now >= self.t_sync:
            self._sync(now)
            self.t_sync = now + cfg.sync_interval * (0.75 + 0.5 * self._rand_unit())
        if now >= self.t_gc:
            self._gc(now)
            self.t_gc = now + 60
        # the data plane may have changed because of any of the above
        if self.t_paths is not None and now >= self.t_paths:
            self._recompute(now)

    def dataplane_observed(self, now: float, peers: Mapping[bytes, PeerObservation]) -> None:
        """Per WireGuard public key: endpoint, last handshake, rx/tx (Helper1.GetState)."""
        self.observed = dict(peers)
        self._observed_once = True
        for link in list(self.links.values()):
            member = self.members.get(link.peer)
            if member is None:
                continue
            obs = peers.get(member.info.wg_public_key)
            if obs is None:
                continue
            self._observe_link(link, obs, now)

    def dataplane_applied(self, version: int, now: float) -> None:
        """The runtime applied ``dataplane`` of this version (Helper1.Apply returned).
        Messages that ask the other end to start a handshake wait for this."""
        plane = self._planes.get(version)
        if plane is None:
            return
        applied, self._applied_hops = plane
        for id8, link in self.links.items():
            if link.state == DOWN and not link.removal_applied:
                member = self.members.get(id8)
                if member is None or member.info.wg_public_key not in applied:
                    link.removal_applied = True
                    self.t_links = min(self.t_links, now)
            if link.connect_due and link.state == ATTEMPTING:
                member = self.members.get(id8)
                if member is not None and member.info.wg_public_key in applied:
                    link.connect_due = False
                    link.connect_sent = now
                    if link.static:
                        me = self.members.get(self.id8)
                        if link.initiator and me is not None:  # the static end may not know us yet
                            self._send_both(id8, wire.RECORDS, wire.body_records([me.record.raw]), now)
                        self._send_both(id8, wire.CONNECT, link.connect_body, now)
                    else:
                        self._send(id8, wire.CONNECT, link.connect_body, now)

    # ------------------------------------------------------------------------- commands

    def connect(self, target: str, now: float) -> bool:
        """Pin a direct link to ``target`` (name or overlay IP): attempted now, never idled."""
        member = self.find(target)
        if member is None or member.identity == self.identity.public:
            return False
        link = self._ensure_link(member, now)
        link.pinned = True
        if link.state == DOWN:
            link.retry_at = now
            if not link.initiator and not link.static:
                # the other end starts attempts: nudge it (attempt 0 = "try now")
                self._send(link.peer, wire.CONNECT, wire.body_connect(0, None, None), now)
        self.t_links = now
        return True

    def probe(self, target: str, now: float) -> int | None:
        """Send one probe through the mesh; a ``probe_result`` event follows."""
        member = self.find(target)
        if member is None:
            return None
        return self._send_probe(member.info, member.record.id8, now, user=True)

    def set_lan_endpoints(self, endpoints: Iterable[tuple[str, int]], now: float) -> None:
        """Our own underlay addresses. When one goes away we moved (a roaming laptop) or the
        network changed under us. Every link starts over at once, without waiting for probes
        to time out: links over a LAN we left try their other candidates, and every WireGuard
        peer is removed and added again - a fresh peer forgets the source address it used to
        send from (wireguard-go keeps sending from the old one, and fails, when the interface
        it used is gone). A static peer's answer then tells our new public endpoint."""
        lan = tuple(endpoints)
        if lan == self.lan:
            return
        gone = {ip for ip, _ in self.lan} - {ip for ip, _ in lan}
        self.lan = lan
        self._schedule_publish(now)
        if not gone:
            return
        self._event("addresses_changed", gone=",".join(sorted(gone)), now=",".join(ip for ip, _ in lan))
        for id8, link in self.links.items():
            member = self.members.get(id8)
            if member is None or link.state == DOWN:
                continue
            host = ep[0] if (ep := _parse_ep(link.endpoint)) else ""
            left = link.endpoint_kind == EP_NEARBY or (link.endpoint_kind == EP_LAN and host and
                                                       self._on_my_lan(host) is None)
            self._link_failed(link, member, now, "left the LAN" if left else "own address changed")
            link.fails = 0
            link.retry_at = now + (1.0 if left else 0.0)  # new candidates once our public endpoint is known
        self.t_links = now

    def set_wg_public_key(self, key: bytes, now: float) -> None:
        """Key rotation: publish the new WireGuard key under the same identity."""
        if key != self.wg_public_key:
            self.wg_public_key = key
            self._schedule_publish(now)

    def update_static_peers(self, peers: Iterable[StaticPeerConfig], now: float) -> None:
        """Static peers re-resolved (dynamic DNS): new endpoints for links still being set up."""
        new = {p.overlay_ip: p for p in peers if p.overlay_ip != self.config.overlay_ip}
        if new == self.static_by_ip:
            return
        self.static_by_ip = new
        self.t_bootstrap = now
        for id8, link in self.links.items():
            member = self.members.get(id8)
            static = new.get(member.info.overlay_ip) if member else None
            if static is not None and link.initiator and link.state != UP:
                link.endpoint = _fmt_ep((static.host, static.wg_port))
        self._schedule_paths(now)

    def set_wg_port(self, port: int, now: float) -> None:
        if port != self.wg_port:
            self.wg_port = port
            self._schedule_publish(now)

    # ========================================================================= outputs

    def take_datagrams(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float:
        t = min(self.t_gossip, self.t_sync, self.t_bootstrap, self.t_links, self.t_gc)
        if self.t_publish is not None and self.t_publish < t:
            t = self.t_publish
        if self.t_paths is not None and self.t_paths < t:
            t = self.t_paths
        return t

    def settled(self, now: float) -> bool:
        """Whether the desired data plane is worth applying. After a (re)start, not before every
        WireGuard peer with a live session is known and reachable again (or 15 s passed): a
        controller restart must not apply a half-learned mesh over a working data plane."""
        if self._settled:
            return True
        if now - self.started > 15:
            self._settled = True
        elif self._observed_once:
            fresh = [key for key, o in self.observed.items() if o.last_handshake and now - o.last_handshake < 120]
            self._settled = all(self.wg_owner.get(key) in self.hops for key in fresh)
        return self._settled

    def observation_interval(self) -> float:
        """How soon the data plane should be observed again: fast while handshakes are awaited."""
        return 0.1 if self._attempting else 1.0

    def persistent_state(self) -> dict:
        self.bindings_dirty = False
        return {"bindings": {ip: ident.hex() for ip, ident in sorted(self.bindings.items())},
                "version": self.version}

    # ------------------------------------------------------------------------- queries

    def find(self, target: str) -> Member | None:
        for member in self.members.values():
            if target in (member.info.name, member.info.overlay_ip):
                return member
        return None

    def path(self, id8: bytes) -> list[bytes]:
        return paths.path_to(self.pred, self.id8, id8)

    def reachable(self) -> set[bytes]:
        return set(self.hops)

    def member_status(self) -> list[dict]:
        """One entry per known node (for status output and Controller1)."""
        out = []
        for id8, m in sorted(self.members.items(), key=lambda kv: kv[1].info.overlay_ip):
            if id8 == self.id8:
                continue
            p = self.path(id8)
            link = self.links.get(id8)
            obs = self.observed.get(self.members[p[1]].info.wg_public_key) if len(p) > 1 else None
            via = [self.members[h].info.name for h in p[1:-1]]
            out.append({
                "name": m.info.name, "overlay_ip": m.info.overlay_ip, "identity": m.identity.hex()[:16],
                "wg_public_key": m.info.wg_public_key, "reachable": bool(p), "via": via,
                "rtt_ms": paths.latency_ms(self.cost[id8], len(p) - 1, self.config.hop_cost_ms) if p else None,
                "link": link.state if link else None, "endpoint": obs.endpoint if obs else "",
                "last_handshake": obs.last_handshake if obs else 0.0,
                "rx_bytes": obs.rx_bytes if obs else 0, "tx_bytes": obs.tx_bytes if obs else 0,
                "static": m.info.is_static,
            })
        return out

    # ========================================================================= receive

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _event(self, kind: str, **data) -> None:
        self._events.append(_event_of((kind, data)))

    def _check_replay(self, inner: wire.Inner, now: float) -> None:
        if abs(inner.timestamp_ms - now * 1000) > self.config.replay_window * 1000:
            raise ProtocolError("outside_window")
        last = self.replay.get(inner.sender)
        stamp = (inner.timestamp_ms, inner.seq)
        if last is not None and stamp <= last:
            raise ProtocolError("replay")
        if inner.sender == self.identity.public:
            raise ProtocolError("own_identity")
        allowed = self.config.allowed_identities
        if allowed is not None and not any(inner.sender in ids for ids in allowed.values()):
            raise ProtocolError("identity_not_allowed")
        self.replay[inner.sender] = stamp

    def _dispatch(self, inner: wire.Inner, src: tuple[str, int], now: float) -> None:
        sender8 = inner.sender[:wire.ID8_LEN]
        over = self._is_overlay(src[0])
        if not over:
            previous = self.underlay_addr.get(sender8)
            if previous is None or previous[0] != src[0]:
                if previous is not None:
                    self._by_public_ip.get(previous[0], set()).discard(sender8)
                self._by_public_ip.setdefault(src[0], set()).add(sender8)
            self.underlay_addr[sender8] = src
            self.underlay_seen[sender8] = now
        link = self.links.get(sender8)
        if link is not None and link.state == UP and self.hops.get(sender8) == sender8:
            link.admin_bytes += 200
            if over and inner.type == wire.PROBE:
                link.last_probe_rx = now
        t = inner.type
        self._count(RX_COUNTERS[t])
        if t == wire.RECORDS:
            self._on_records(inner.body, now, sender8)
        elif t == wire.PROBE:
            probe_id = wire.parse_probe(inner.body)
            member = self.members.get(sender8)
            seen_wg = None
            if member is not None:
                obs = self.observed.get(member.info.wg_public_key)
                if obs is not None and obs.endpoint:
                    seen_wg = _parse_ep(obs.endpoint)
            self._send_to_addr(src, wire.PROBE_ACK, wire.body_probe_ack(probe_id, src, seen_wg), now, inner.sender)
        elif t == wire.PROBE_ACK:
            self._on_probe_ack(sender8, *wire.parse_probe_ack(inner.body), now)
        elif t == wire.SYNC:
            count, digest_hash = wire.parse_sync(inner.body)
            if digest_hash != self._digest_hash():
                self._send_to_addr(src, wire.DIGEST, wire.body_digest(self._digest_entries()), now, inner.sender)
        elif t == wire.DIGEST:
            self._on_digest(wire.parse_digest(inner.body), src, now, inner.sender)
        elif t == wire.REQUEST:
            wanted = wire.parse_request(inner.body)
            self._send_records(src, [self.members[i].record.raw for i in wanted if i in self.members], now,
                               to=inner.sender)
        elif t == wire.CONNECT:
            self._on_connect(sender8, *wire.parse_connect(inner.body), src, now)
        elif t == wire.CONNECT_ACK:
            attempt = wire.parse_connect_ack(inner.body)
            link = self.links.get(sender8)
            if link is not None and link.attempt == attempt:
                if link.static and link.connect_sent and not link.connect_acked:
                    # to or from a static peer CONNECT crosses the same hosts and NATs as the
                    # tunnel will: a first RTT for the link's claim (probes refine it)
                    link.rtt_hint = max(1, round((now - link.connect_sent) * 1000))
                link.connect_acked = True

    def _on_records(self, body: bytes, now: float, source: bytes | None = None) -> None:
        flood = bool(body and body[0] & wire.RECORDS_FLOOD)
        for identity, version, _kind, pos, total in wire.iter_records(body, True):
            member = self.members.get(identity[:wire.ID8_LEN])
            if member is not None and member.record.version >= version and member.identity == identity:
                self._count("records_known")
                continue
            if identity == self.identity.public:
                if version >= self.version:  # our own old claims from before a restart: supersede them
                    self.version = version
                    self._schedule_publish(now)
                continue
            try:
                record = wire.parse_record(body, pos, self.verified, total)
            except ProtocolError as e:
                self._count(f"drop_{e.reason}")
                continue
            self._accept_record(record, now, source, flood)

    def _accept_record(self, record: Record, now: float, source: bytes | None = None, flood: bool = False) -> bool:
        if record.kind != wire.RECORD_NODE:
            self._count("drop_unknown_record_kind")
            return False
        try:
            info = self.verified.decoded(record, wire.decode_node_info)
        except ProtocolError as e:
            self._count(f"drop_{e.reason}")
            return False
        address = self._subnet_host(info.overlay_ip)
        if address is None:
            self._count("refused_outside_subnet")
            self._report_conflict("outside_subnet", info, record)
            return False
        if info.overlay_ip == self.config.overlay_ip:
            self._count("refused_claims_our_address")
            self._report_conflict("claims_our_address", info, record)
            return False
        allowed = self.config.allowed_identities
        if allowed is not None and record.identity not in allowed.get(info.overlay_ip, frozenset()):
            self._count("refused_not_allowed")
            self._report_conflict("identity_not_allowed", info, record)
            return False
        bound = self.bindings.get(info.overlay_ip)
        if bound is not None and bound != record.identity:
            self._count("refused_address_bound")
            self._report_conflict("address_bound", info, record)
            return False
        owner = self.wg_owner.get(info.wg_public_key)
        if (owner is not None and owner != record.id8) or info.wg_public_key == self.wg_public_key:
            self._count("refused_wg_key_taken")
            self._report_conflict("wg_key_taken", info, record)
            return False
        if bound is None:
            self.bindings[info.overlay_ip] = record.identity
            self.bindings_dirty = True
        id8 = record.id8
        old = self.members.get(id8)
        if old is not None and old.identity != record.identity:  # id8 collision: refuse the newcomer
            self._count("refused_id_collision")
            return False
        if old is not None and old.info.wg_public_key != info.wg_public_key:
            self.wg_owner.pop(old.info.wg_public_key, None)
            self._event("wg_key_rotated", node=info.name)
            link = self.links.get(id8)
            if link is not None and link.state != DOWN:
                # a new key is a new WireGuard peer: the link starts over (no backoff)
                if link.state == UP:
                    self._changed_links.add(id8)
                    self._schedule_publish(now)
                link.state = DOWN
                link.removal_applied = True  # the old key's peer leaves the data plane anyway
                link.retry_at = now
                link.peer_ready = False
                self.t_links = now
        self.wg_owner[info.wg_public_key] = id8
        self._count("records_accepted")
        self.members[id8] = Member(record.identity, record, info, old.first_seen if old else now,
                                   old.last_reachable if old else now)
        claims_before = self.graph.claims.get(id8, {})
        claims = info.link_map
        graph_changed = self.graph.set_claims(id8, claims)
        self._graph_dirty |= graph_changed
        self._digest_cache = None
        if self.is_static and source is not None and (info.links or info.is_static) and (
                (flood and source == id8) or (source in self.members and self.members[source].info.is_static)):
            # (a record without links is of use only to the static peers it connects to: it
            # sends it to them itself, see dataplane_applied)
            self._flood[id8] = source  # a hub hands new records on (see _gossip)
            self.t_gossip = min(self.t_gossip, now + self._flood_batch())  # soon, not a round later
        if old is None:
            self._events.append(_event_of(("node_discovered", {"node": info.name, "ip": info.overlay_ip,
                                                               "identity": record.identity[:8].hex()})))
            if self.is_static and source == id8 and not info.is_static:
                self._introduce(id8, now)
        if old is None and self._dest_order is not None:
            # (no path to it yet: its route comes with the path, see _recompute)
            at = bisect.bisect(self._dest_keys, address)  # (the _dest_key)
            self._dest_keys.insert(at, address)
            self._dest_order.insert(at, id8)
            self._route_slots.insert(at, None)
        elif old is None or old.info.overlay_ip != info.overlay_ip:
            self._route_dests = None
            self._dest_order = None
        if graph_changed or old is None or old.info.overlay_ip != info.overlay_ip \
                or old.info.wg_public_key != info.wg_public_key:
            # a change of a link to us completes or breaks an edge the other end already
            # switched: follow at once (the window between the two switches loses packets)
            self._schedule_paths(now, urgent=(self.id8 in claims_before) != (self.id8 in claims))
        link = self.links.get(id8)
        if link is None and self._wants_link(info, id8):  # (links no longer wanted go in _manage_links)
            link = self._ensure_link(self.members[id8], now)
        if link is not None and link.state == UP and now - link.last_probe_rx < 3 * self.config.probe_interval:
            # the other end measures this link; claim what it measured (edges use the max of both)
            theirs = claims.get(self.id8, 0)
            if theirs and abs(theirs - link.claimed_rtt) > max(5, link.claimed_rtt // 4):
                link.claimed_rtt = theirs
                self._schedule_publish(now, RTT_PUBLISH_DELAY)
        return True

    def _introduce(self, id8: bytes, now: float) -> None:
        """A static peer introduces nodes that speak from the same public address (behind one
        NAT: likely on one LAN) to each other as they arrive: their records reach each other at
        once, and their LAN links come up with their first links to us rather than after the
        mesh has routes to them (one record version fewer for each, at every node)."""
        addr = self.underlay_addr.get(id8)
        if addr is None:
            return
        newcomer = self.members[id8]
        others = [self.members[i] for i in sorted(self._by_public_ip.get(addr[0], ()))
                  if i != id8 and i in self.members and not self.members[i].info.is_static][:64]
        if not others:
            return
        self._send_records(addr, [m.record.raw for m in others], now, "introduce", newcomer.identity)
        for member in others:
            there = self._underlay_of(member.record.id8, now)
            if there is not None:
                self._send_records(there, [newcomer.record.raw], now, "introduce", member.identity)

    def _report_conflict(self, reason: str, info: NodeInfo, record: Record) -> None:
        key = (reason + info.overlay_ip, record.identity)
        if key in self._conflicts_reported:
            return
        if len(self._conflicts_reported) > 1000:
            self._conflicts_reported.clear()
        self._conflicts_reported.add(key)
        self._event("claim_refused", reason=reason, ip=info.overlay_ip, name=info.name,
                    identity=record.identity.hex()[:16])

    def _on_digest(self, entries: list[tuple[bytes, int]], src: tuple[str, int], now: float, to: bytes) -> None:
        theirs = dict(entries)
        send = [m.record.raw for id8, m in self.members.items()
                if theirs.get(id8, -1) < m.record.version]
        want = [id8 for id8, version in theirs.items()
                if id8 != self.id8 and (id8 not in self.members or self.members[id8].record.version < version)]
        self._send_records(src, send, now, to=to)
        if want:
            for i in range(0, len(want), 1000):
                self._send_to_addr(src, wire.REQUEST, wire.body_request(want[i:i + 1000]), now, to)

    def _on_probe_ack(self, sender8: bytes, probe_id: int, seen_admin, seen_wg, now: float) -> None:
        pending = self.pending_probes.pop(probe_id, None)
        if pending is None or pending[0] != sender8:
            self._count("drop_unexpected_ack")
            return
        _, sent_at, direct, user = pending
        rtt_ms = max((now - sent_at) * 1000.0, 0.1)
        link = self.links.get(sender8)
        if link is not None and direct and link.state == UP:
            link.last_ack = now
            link.rtt = rtt_ms if link.rtt == 0 else 0.8 * link.rtt + 0.2 * rtt_ms
            self._maybe_update_rtt_claim(link, now)
        member = self.members.get(sender8)
        if seen_wg is not None and member is not None and member.info.is_static:
            self._learn_reflexive(seen_wg, now)
        elif self.reflexive is None and link is not None and member is not None and member.info.is_static:
            # its WireGuard has not reported our endpoint yet (it polls): ask again soon
            link.next_probe = min(link.next_probe, now + 0.1)
            self.t_links = min(self.t_links, now + 0.1)
        if user and member is not None:
            self._event("probe_result", node=member.info.name, rtt_ms=round(rtt_ms, 2),
                        via=",".join(self.members[h].info.name for h in self.path(sender8)[1:-1]) or "direct")

    def _learn_reflexive(self, seen: tuple[str, int], now: float) -> None:
        """What a static peer's WireGuard sees as our source: translated by NAT or not (a
        firewalled host is reachable there only by hole punching, like a NATed one)."""
        if seen == self.reflexive:
            return
        self.reflexive = seen
        self._event("reflexive_endpoint", endpoint=_fmt_ep(seen))
        # others punch holes to it: an optimisation, like a shortcut link (see _link_up); before
        # our first links are announced, it goes with them
        if self._announces_links():
            self._schedule_publish(now, LINK_BATCH_DELAY)
        elif self.t_publish is None:
            self._schedule_publish(now)

    def _on_connect(self, sender8: bytes, attempt: int, you_use, i_use, src, now: float) -> None:
        member = self.members.get(sender8)
        if member is None or not self._wants_link(member.info, sender8):
            self._count("drop_connect_unwanted")
            return
        link = self._ensure_link(member, now)
        if link.static:
            # the static end has us configured: our handshake will not be dropped now
            self._send_to_addr(src, wire.CONNECT_ACK, wire.body_connect_ack(attempt), now, member.identity)
            if not link.initiator and link.state == UP and attempt:
                # the other end starts over (it moved, or restarted) while we still have it
                # configured: say so at once rather than let it wait for a CONNECT of ours
                self._send_to_addr(src, wire.CONNECT, wire.body_connect(0, None, None), now, member.identity)
            if link.initiator and not link.peer_ready:
                link.peer_ready = True
                self._schedule_paths(now)
            return
        if link.initiator:
            if attempt == 0:  # a nudge from the other end (its Connect): retry now
                if link.state == DOWN:
                    link.retry_at = now
                    link.fails = 0
                    self.t_links = now
                return
            # both think they initiate (views differ): the smaller id wins
            if self.id8 < sender8:
                self._count("drop_connect_role")
                return
            link.initiator = False
        if link.state == UP and attempt <= link.attempt:
            return
        if link.state == ATTEMPTING and attempt == link.attempt:  # a retransmission
            self._send_to_addr(src, wire.CONNECT_ACK, wire.body_connect_ack(attempt), now, member.identity)
            return
        link.attempt = attempt
        link.state = ATTEMPTING
        self._attempting = True
        link.attempt_started = now
        link.held_back_done = False
        link.endpoint = _fmt_ep(you_use) if you_use else ""
        link.endpoint_kind = EP_REFLEXIVE if you_use and member.info.endpoints and any(
            e.kind == EP_REFLEXIVE and (e.address, e.port) == you_use for e in member.info.endpoints) else EP_LAN
        self._send_to_addr(src, wire.CONNECT_ACK, wire.body_connect_ack(attempt), now, member.identity)
        self._event("link_attempt", node=member.info.name, endpoint=link.endpoint, role="responder")
        self._schedule_paths(now)

    # ========================================================================= send

    def _subnet_value(self, host: str) -> int | None:
        """The address as an integer if it lies inside the subnet, else None (ValueError if
        ``host`` is no address)."""
        version, value = _ip_int(host)
        sub_version, network, mask, _ = self._subnet_ints
        return value if version == sub_version and value & mask == network else None

    def _subnet_host(self, host: str) -> int | None:
        """The address as an integer if it is a host address inside the subnet (not its network
        or broadcast address), else None."""
        value = self._subnet_value(host)
        return value if value is not None and value != self._subnet_ints[1] and value != self._subnet_ints[3] \
            else None

    @staticmethod
    def _is_hostname(host: str) -> bool:
        try:
            ipaddress.ip_address(host)
            return False
        except ValueError:
            return True

    def _is_overlay(self, host: str) -> bool:
        try:
            return self._subnet_value(host) is not None
        except ValueError:
            raise ProtocolError("bad_source") from None

    def _send_to_addr(self, addr: tuple[str, int], mtype: int, body: bytes, now: float,
                      to: bytes | None = None) -> None:
        """``to``: the receiver's identity, if known. Towards a node we link to, the datagram is
        authenticated by our pair's MAC (derived once per link), else signed (see wire)."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        pair = (to, self.pairs.key(to)) if to is not None and to[:wire.ID8_LEN] in self.links else None
        data = wire.seal(self.key, self.random_bytes(wire.NONCE_LEN), self.identity, mtype, int(now * 1000),
                         self.seq, body, pair)
        self._out.append((data, addr))
        self._count(TX_COUNTERS[mtype])
        self._count("tx_bytes", len(data))

    def _identity_of(self, id8: bytes) -> bytes | None:
        member = self.members.get(id8)
        return member.identity if member is not None else None

    def _static_admin_addr(self, member: Member | None) -> tuple[str, int] | None:
        """A static peer's admin address from net.yaml (None for other nodes)."""
        static = self.static_by_ip.get(member.info.overlay_ip) if member is not None else None
        return (static.host, static.admin_port) if static is not None else None

    def _addr_of(self, id8: bytes) -> tuple[str, int] | None:
        """Through the tunnel once the applied data plane routes it (until then the kernel has no
        route for it), else a static peer's, LAN or last seen underlay address."""
        member = self.members.get(id8)
        if member is not None and id8 in self.hops and id8 in self._applied_hops:
            return member.info.overlay_ip, member.info.admin_port
        return self._static_admin_addr(member) or self._lan_admin_addr(member) or self.underlay_addr.get(id8)

    def _lan_admin_addr(self, member: Member | None) -> tuple[str, int] | None:
        """A node's admin address on a LAN we share with it."""
        address = self._shared_lan_address(member.info) if member is not None else None
        return (address, member.info.admin_port) if address is not None else None

    def _underlay_of(self, id8: bytes, now: float) -> tuple[str, int] | None:
        """An address outside the overlay: a static peer's, or where the node recently spoke from."""
        static = self._static_admin_addr(self.members.get(id8))
        if static is not None:
            return static
        if now - self.underlay_seen.get(id8, -1e18) < 60:
            return self.underlay_addr.get(id8)
        return None

    def _send_both(self, id8: bytes, mtype: int, body: bytes, now: float) -> None:
        """For messages that must arrive although the other end's link-state may not yet
        route our overlay traffic: over the underlay where possible, and over the overlay."""
        under = self._underlay_of(id8, now)
        member = self.members.get(id8)
        if under is not None:
            self._send_to_addr(under, mtype, body, now, member.identity if member else None)
        if member is not None and id8 in self.hops:
            self._send_to_addr((member.info.overlay_ip, member.info.admin_port), mtype, body, now, member.identity)
        elif under is None:
            self._send(id8, mtype, body, now)

    def _send(self, id8: bytes, mtype: int, body: bytes, now: float) -> bool:
        addr = self._addr_of(id8)
        if addr is None:
            self._count("tx_no_route")
            return False
        link = self.links.get(id8)
        if link is not None and self.hops.get(id8) == id8:
            link.admin_bytes += len(body) + 200
        self._send_to_addr(addr, mtype, body, now, self._identity_of(id8))
        return True

    def _send_records(self, addr: tuple[str, int], raws: list[bytes], now: float, why: str = "reply",
                      to: bytes | None = None) -> None:
        self._count(f"tx_records_{why}", len(raws))
        # the underlay may not pass fragments; inside the tunnel a fragmented datagram is fine
        limit = 8000 if self._is_overlay(addr[0]) else 1100
        chunk: list[bytes] = []
        size = 0
        for raw in raws:
            if chunk and size + len(raw) > limit:
                self._send_to_addr(addr, wire.RECORDS, wire.body_records(chunk), now, to)
                chunk, size = [], 0
            chunk.append(raw)
            size += len(raw)
        if chunk:
            self._send_to_addr(addr, wire.RECORDS, wire.body_records(chunk), now, to)

    def _send_probe(self, info: NodeInfo, id8: bytes, now: float, user: bool = False) -> int | None:
        self.probe_seq = (self.probe_seq + 1) & 0xFFFFFFFF
        pid = self.probe_seq
        direct = self.hops.get(id8) == id8
        if not self._send(id8, wire.PROBE, wire.body_probe(pid), now):
            return None
        self.pending_probes[pid] = (id8, now, direct, user)
        if len(self.pending_probes) > 4096:
            for old in sorted(self.pending_probes)[:1024]:
                del self.pending_probes[old]
        return pid

    def _rand_unit(self) -> float:
        return int.from_bytes(self.random_bytes(4), "big") / 2**32

    def _rand_choice(self, items: list, k: int) -> list:
        items = list(items)
        out = []
        while items and len(out) < k:
            out.append(items.pop(int(self._rand_unit() * len(items))))
        return out

    # ========================================================================= own record

    def _schedule_publish(self, now: float, delay: float | None = None) -> None:
        """Soon after a change (or ``delay`` later), but not more than 4 times a second (a hub's
        links change in bursts)."""
        spacing = 0.25 * max(1.0, len(self.links) / 500)  # a hub's record grows with its links
        due = max(now + (self.config.publish_interval if delay is None else delay), self._last_publish + spacing)
        if self.t_publish is None or due < self.t_publish:
            self.t_publish = due

    def _flood_batch(self) -> float:
        """How long a hub collects new records before handing them on: 20 ms, longer for a hub
        with many neighbours (each batch is a datagram to every one of them)."""
        return min(0.1, 0.02 * max(1.0, len(self.links) / 200))

    def _announces_links(self) -> bool:
        me = self.members.get(self.id8)
        return me is not None and bool(me.info.links)

    def _own_info(self) -> NodeInfo:
        endpoints = []
        for ip, prefixlen in self.lan:
            endpoints.append(Endpoint(EP_LAN, ip, self.wg_port, prefixlen))
        if self.reflexive is not None:
            endpoints.append(Endpoint(EP_REFLEXIVE, self.reflexive[0], self.reflexive[1]))
        me = next((p for p in self.config.static_peers if p.overlay_ip == self.config.overlay_ip), None)
        if me is not None and not self._is_hostname(me.host):
            endpoints.append(Endpoint(EP_STATIC, me.host, me.wg_port))
        links = tuple(LinkClaim(link.peer, link.claimed_rtt, 0)
                      for link in sorted(self.links.values(), key=lambda x: x.peer) if link.state == UP)
        return NodeInfo(self.wg_public_key, self.config.overlay_ip, self.wg_port, self.config.admin_port,
                        self.config.name, FLAG_STATIC if self.is_static else 0, tuple(endpoints[:16]), links)

    def _publish(self, now: float) -> None:
        self.t_publish = None
        self._last_publish = now
        info = self._own_info()
        current = self.members.get(self.id8)
        if current is not None and current.info == info:
            return
        self.version = max(self.version + 1, int(now * 1000))
        self._count("records_published")
        record = wire.make_record(self.identity, self.version, wire.RECORD_NODE, wire.encode_node_info(info))
        self._graph_dirty |= self.graph.set_claims(self.id8, info.link_map)
        self.members[self.id8] = Member(self.identity.public, record, info, self.started, now)
        self.wg_owner[info.wg_public_key] = self.id8
        self._digest_cache = None
        if info.links or self.is_static:  # (nobody can reach a node without links yet)
            self.hot[self.id8] = self.config.gossip_rounds
            self.t_gossip = min(self.t_gossip, now + self.config.gossip_interval)
        self.bindings_dirty = True
        self._schedule_paths(now, urgent=bool(self._changed_links))
        # a link change matters most to the link's other end: tell it at once; and hand the
        # record to one static neighbour, which floods it (a static node floods its own)
        changed, self._changed_links = self._changed_links, set()
        primary = None
        if self.is_static:
            self._flood[self.id8] = None
            self.t_gossip = min(self.t_gossip, now + self._flood_batch())
        else:
            statics = sorted(i for i, link in self.links.items() if link.static and link.state == UP)
            primary = statics[0] if statics else None
        flagged = wire.body_records([record.raw], wire.RECORDS_FLOOD)
        for id8 in sorted(changed):  # the other end of a changed link needs our claim to use the link
            self._send_both(id8, wire.RECORDS, flagged if id8 == primary else wire.body_records([record.raw]), now)
        if primary is not None and primary not in changed:
            addr = self._addr_of(primary)
            if addr is not None:
                self._count("tx_records_publish")
                self._send_to_addr(addr, wire.RECORDS, flagged, now, self._identity_of(primary))

    def _maybe_update_rtt_claim(self, link: Link, now: float) -> None:
        """Hysteresis: republish an RTT only when it moved by > max(5 ms, 25 %)."""
        new = max(1, int(round(link.rtt)))
        old = link.claimed_rtt
        if old == 0 or abs(new - old) > max(5, old // 4):
            link.claimed_rtt = min(new, 65535)
            self._schedule_publish(now, RTT_PUBLISH_DELAY)

    # ========================================================================= membership

    def _digest_entries(self) -> list[tuple[bytes, int]]:
        return [(id8, m.record.version) for id8, m in self.members.items()]

    def _digest_hash(self) -> bytes:
        if self._digest_cache is None:
            h = hashlib.blake2b(digest_size=16)
            for id8, version in sorted(self._digest_entries()):
                h.update(id8 + version.to_bytes(8, "big"))
            self._digest_cache = h.digest()
        return self._digest_cache

    def _bootstrap(self, now: float) -> bool:
        """While a static peer's record is unknown: send our digest to one such static peer
        (a different one each time); its answer is the whole mesh, in one exchange. False if
        every static peer is known."""
        unknown = [ip for ip in sorted(self.static_by_ip)
                   if (bound := self.bindings.get(ip)) is None or bound[:wire.ID8_LEN] not in self.members]
        if not unknown:
            return False
        self._bootstrap_turn = (self._bootstrap_turn + 1) % len(unknown)
        static = self.static_by_ip[unknown[self._bootstrap_turn]]
        self._send_to_addr((static.host, static.admin_port), wire.DIGEST,
                           wire.body_digest([(self.id8, self.version)]), now)
        return True

    def _gossip(self, now: float) -> None:
        """Dissemination. Every node links to every static node, so static nodes are hubs: a
        hub hands each new record to those of its neighbours that whoever sent it to the hub
        does not reach directly (it knows everyone's links from their signed records). Every
        node pushes its own new versions to one static neighbour (see _publish) and gossips
        them to a few random nodes; anti-entropy (_sync) repairs whatever was lost."""
        if self._flood:
            flood, self._flood = self._flood, {}
            mine = [i for i, link in self.links.items() if link.state == UP]
            batches: dict[bytes, list[bytes]] = {}
            reached: dict[bytes | None, set[bytes]] = {}  # source -> the neighbours it floods to
            for origin, source in flood.items():
                member = self.members.get(origin)
                if member is None:
                    continue
                covered = reached.get(source)
                if covered is None:
                    covered = reached[source] = {source}
                    sender = self.members.get(source) if source is not None else None
                    if sender is not None and sender.info.is_static:  # it floods to its own
                        covered.update(self.graph.claims.get(source, ()))
                raw = member.record.raw
                for id8 in mine:
                    if id8 not in covered and id8 != origin:
                        batches.setdefault(id8, []).append(raw)
            for id8, batch in batches.items():
                addr = self._addr_of(id8)
                if addr is not None:
                    self._send_records(addr, batch, now, "flood", self._identity_of(id8))
        if not self.hot:
            return
        targets = self._hop_targets()
        if not targets:
            targets = [m.record.id8 for ip in self.static_by_ip if (m := self.find(ip)) is not None]
        chosen = self._rand_choice(targets, self.config.gossip_fanout)
        raws = [self.members[i].record.raw for i in self.hot if i in self.members]
        for id8 in chosen:
            addr = self._addr_of(id8)
            if addr is not None:
                self._send_records(addr, raws, now, "gossip", self._identity_of(id8))
        for id8 in list(self.hot):
            self.hot[id8] -= 1
            if self.hot[id8] <= 0:
                del self.hot[id8]

    def _hop_targets(self) -> list[bytes]:
        """The nodes we have a path to (read-only; rebuilt when the paths change)."""
        if self._hop_list[0] is not self.hops:
            self._hop_list = (self.hops, [i for i in self.hops if i != self.id8])
        return self._hop_list[1]

    def _sync(self, now: float) -> None:
        """Anti-entropy with a random direct neighbour (like OSPF's database exchange: what one
        node knows reaches every node, neighbour by neighbour): one tunnel hop, no relay, and
        the pair's MAC rather than a signature. A node with no direct neighbour yet picks any
        node it has a path to."""
        targets = [i for i, link in self.links.items() if link.state == UP and self.hops.get(i) == i] \
            or self._hop_targets()
        if not targets:
            return
        target = targets[int(self._rand_unit() * len(targets))]
        self._send(target, wire.SYNC, wire.body_sync(len(self.members), self._digest_hash()), now)

    def _gc(self, now: float) -> None:
        for id8, member in list(self.members.items()):
            if id8 == self.id8:
                continue
            if id8 in self.hops:
                member.last_reachable = now
            elif now - member.last_reachable > self.config.forget_after:
                # forget the record (the address binding stays)
                del self.members[id8]
                self._graph_dirty |= self.graph.remove(id8)
                self._route_dests = None
                self._dest_order = None
                self.wg_owner.pop(member.info.wg_public_key, None)
                self.links.pop(id8, None)
                self._digest_cache = None
                self._event("node_forgotten", node=member.info.name)
        cutoff = now * 1000 - self.config.replay_window * 1000 * 2
        for sender, (ts, _) in list(self.replay.items()):
            if ts < cutoff:
                del self.replay[sender]

    # ========================================================================= links

    def _wants_link(self, info: NodeInfo, id8: bytes) -> bool:
        if id8 == self.id8:
            return False
        if self.is_static or info.is_static:
            return True
        link = self.links.get(id8)
        if link is not None and link.pinned:
            return True
        if self._shared_lan_address(info) is not None:
            return True
        if self.config.link_policy == "static":
            return self._behind_same_nat(info)
        # a node with a LAN or public endpoint of its own could be reached directly
        return any(ep.kind in (EP_REFLEXIVE, EP_STATIC) for ep in info.endpoints)

    def _lan_nets(self):
        if self._lan_nets_for != self.lan:
            self._lan_nets_cache = [(*_net_ints(_ip_net(ip, plen))[:3], ip) for ip, plen in self.lan]
            self._lan_nets_for = self.lan
            self._lan_cache.clear()
        return self._lan_nets_cache

    def _on_my_lan(self, address: str) -> str | None:
        """Our own address on the LAN that contains ``address``, if any."""
        nets = self._lan_nets()  # (also forgets the answers for the LANs we had before)
        found = self._lan_cache.get(address)
        if found is not None:
            return found
        addr_version, value = _ip_int(address)
        for version, network, mask, mine in nets:
            if version == addr_version and value & mask == network:
                self._lan_cache[address] = mine  # (only hits: every node asks once about every other)
                return mine
        return None

    def _shared_lan_address(self, info: NodeInfo) -> str | None:
        """The node's first address on a LAN of ours."""
        on_my_lan = self._on_my_lan
        for address in info.lan_addresses:
            if on_my_lan(address):
                return address
        return None

    def _behind_same_nat(self, info: NodeInfo) -> bool:
        """Both behind one public address: the same home, maybe on different LANs."""
        return self.reflexive is not None and self.reflexive[0] in info.reflexive_addresses

    def _candidates(self, info: NodeInfo) -> list[tuple[tuple[str, int], tuple[str, int] | None, int]]:
        """Ordered (endpoint to reach the peer, endpoint the peer should use for us, kind)."""
        out = []
        for ep in info.endpoints:
            if ep.kind == EP_LAN:
                mine = self._on_my_lan(ep.address)
                if mine is not None:
                    out.append(((ep.address, ep.port), (mine, self.wg_port), EP_LAN))
        if self.lan and self._behind_same_nat(info):
            # one of the two LANs may be routed from the other (the original's second example:
            # a router on the home LAN with a LAN of its own). Hairpinning through the shared
            # public address mostly fails, so try the other end's LAN addresses, both ends
            # sending: the end that can reach the other gets through, and WireGuard answers
            # to wherever the handshake came from.
            for ep in info.endpoints:
                if ep.kind == EP_LAN and self._on_my_lan(ep.address) is None:
                    out.append(((ep.address, ep.port), (self.lan[0][0], self.wg_port), EP_NEARBY))
        mine_public = self.reflexive
        if mine_public is None and self.is_static:
            me = next(p for p in self.config.static_peers if p.overlay_ip == self.config.overlay_ip)
            mine_public = (me.host, me.wg_port)
        # through NAT both ends must send (hole punching): without our own public endpoint
        # the other end could not, so such candidates wait until a static peer told us ours
        if mine_public is not None:
            for ep in info.endpoints:
                if ep.kind in (EP_REFLEXIVE, EP_STATIC):
                    out.append(((ep.address, ep.port), mine_public, ep.kind))
        static = self.static_by_ip.get(info.overlay_ip)
        if static is not None and (mine_public is not None or not out):
            out.append(((static.host, static.wg_port), mine_public, EP_STATIC))
        unique, seen = [], set()
        for cand in out:  # an un-NATed node's reflexive endpoint is its LAN address: try once
            if cand[0] not in seen:
                seen.add(cand[0])
                unique.append(cand)
        return unique

    def _ensure_link(self, member: Member, now: float) -> Link:
        id8 = member.record.id8
        link = self.links.get(id8)
        if link is None:
            info = member.info
            static = self.is_static or info.is_static
            if static:
                # the non-static end initiates (it may sit behind NAT); between two static peers the smaller id
                initiator = (not self.is_static) or (info.is_static and self.id8 < id8)
            else:
                initiator = self.id8 < id8
            link = Link(id8, static, initiator, retry_at=now)
            self.links[id8] = link
            self.t_links = now
        return link

    def _start_attempt(self, link: Link, member: Member, now: float) -> None:
        link.candidates = self._candidates(member.info)
        if link.static and not link.initiator:
            # the static side configures the peer, tells the other end it may start the
            # handshake (once applied), and waits for it
            link.state = ATTEMPTING
            self._attempting = True
            link.attempt = (link.attempt + 1) & 0xFFFFFFFF
            link.attempt_started = now
            cand = link.candidates[0] if link.candidates else None
            link.endpoint = _fmt_ep(cand[0]) if cand and cand[2] == EP_LAN else ""
            link.endpoint_kind = cand[2] if cand else 0
            link.connect_body = wire.body_connect(link.attempt, None, None)
            link.connect_due = True
            link.connect_acked = False
            link.connect_sent = 0.0
            self._schedule_paths(now)
            return
        if not link.candidates:
            link.retry_at = now + 1.0  # e.g. our public endpoint is not known yet: look again soon
            return
        link.candidate_index = 0
        self._try_candidate(link, member, now)

    def _try_candidate(self, link: Link, member: Member, now: float) -> None:
        link.held_back_done = False
        fresh = self._candidates(member.info)
        if len(fresh) == len(link.candidates):
            link.candidates = fresh
        reach, mine, kind = link.candidates[link.candidate_index]
        link.state = ATTEMPTING
        self._attempting = True
        link.attempt = (link.attempt + 1) & 0xFFFFFFFF
        link.attempt_started = now
        link.endpoint = _fmt_ep(reach)
        link.endpoint_kind = kind
        # sent by dataplane_applied once WireGuard has the peer. To a static peer it only says
        # "starting over": one that still has us configured answers "ready" at once
        link.connect_body = wire.body_connect(link.attempt, None, None) if link.static else \
            wire.body_connect(link.attempt, mine, reach)
        link.connect_acked = False
        link.connect_due = True
        link.connect_sent = 0.0
        self._event("link_attempt", node=member.info.name, endpoint=link.endpoint, role="initiator")
        self._schedule_paths(now)

    def _link_failed(self, link: Link, member: Member, now: float, why: str) -> None:
        was_up = link.state == UP
        link.fails += 1
        link.state = DOWN
        link.down_since = now
        link.removal_applied = False  # retry only once WireGuard dropped the peer (and its session)
        link.peer_ready = False
        if link.static:
            link.retry_at = now  # WireGuard itself retries handshakes; the peer just has to come back
        else:
            link.retry_at = now + min(self.config.retry_max, 5.0 * (2 ** min(link.fails - 1, 10)))
        link.used_since = 0.0
        if was_up:
            self._event("link_down", node=member.info.name, reason=why)
            self._changed_links.add(link.peer)
            self._schedule_publish(now)
        else:
            self._count("link_attempt_failed")
        self._schedule_paths(now)

    def _link_up(self, link: Link, member: Member, now: float) -> None:
        link.state = UP
        link.ever_up = True
        link.up_since = now
        link.last_ack = 0.0
        link.used_since = 0.0
        link.fails = 0
        link.last_traffic = now
        link.tx_stalled_since = 0.0
        if link.claimed_rtt == 0:
            # until probes over the link measure it: what CONNECT took (static peers), a LAN's
            # few ms, or a pessimistic 50 ms. A good first guess spares the mesh a record version
            # per link (RTT claims move only by more than max(5 ms, 25 %)).
            link.claimed_rtt = link.rtt_hint or (2 if link.endpoint_kind in (EP_LAN, EP_NEARBY) else 50)
        self._event("link_up", node=member.info.name, endpoint=link.endpoint)
        self._changed_links.add(link.peer)
        self.t_links = now  # probe it at once (a static peer's answer tells our public endpoint)
        # a link that may be the first way to reach one of its ends is announced at once: we
        # announce no link yet, or the other end has no other (mutual) link (a static peer always
        # has: static peers link to each other, and to everyone). Any other link only
        # shortens paths: it waits for the next batch (a node's links come up one by one, and
        # each version of its record costs every node of the mesh)
        if not self._announces_links():
            # our first links: those to static peers and LAN neighbours still being attempted
            # (started with the others: they take a round trip or two), and our public endpoint
            # (a static peer's probe answer tells it), may make the same version
            pending = (self.reflexive is None and member.info.is_static) or any(
                other.state == ATTEMPTING and now - other.attempt_started < 1.0
                and (other.static or other.endpoint_kind == EP_LAN) for other in self.links.values())
            self._schedule_publish(now, FIRST_LINKS_WAIT if pending else None)
            return
        shortcut = member.info.is_static or bool(self.graph.edges.get(link.peer, {}).keys() - {self.id8})
        self._schedule_publish(now, LINK_BATCH_DELAY if shortcut else None)

    def _active(self, link: Link, now: float) -> bool:
        """Whether the link is kept alive (keepalive + probes) - the idle policy."""
        if link.static or link.pinned or self.config.link_policy == "all":
            return True
        return now - link.last_traffic < self.config.idle_timeout

    def _wants_keepalive(self, link: Link, now: float) -> bool:
        """Who sends persistent keepalives: exactly one side of a link, so that handshakes
        never start from both ends at once (they can stall each other until WireGuard's
        5 s retry)."""
        if link.static:
            # the non-static end (it may be behind NAT), once the static end has us configured
            return link.initiator and (link.peer_ready or link.state == UP)
        if link.state == ATTEMPTING:
            if link.endpoint_kind == EP_REFLEXIVE and self._holds_back(link, now):
                return False
            if link.endpoint_kind == EP_NEARBY and link.initiator and not link.held_back_done:
                return False  # a second for the other end to configure us: it cannot send first
            # the side that configured the peer last (the responder) starts the handshake;
            # the initiator also sends when punching NAT, to open its own mapping, and to a
            # nearby LAN that may be reachable only from its side
            return (not link.initiator) or link.endpoint_kind in (EP_REFLEXIVE, EP_NEARBY)
        # up: the initiator keeps active links (and NAT mappings) alive
        return link.initiator and (self._active(link, now) or link.endpoint_kind == EP_REFLEXIVE)

    def _behind_nat(self, reflexive: tuple[str, int] | None, lan: set[str]) -> bool:
        return reflexive is not None and reflexive[0] not in lan

    def _holds_back(self, link: Link, now: float) -> bool:
        """Hole punching between an untranslated node (public, maybe firewalled) and a NATed one:
        the NATed side must send first. A packet from outside that reaches a NAT before the inside
        sent creates a conntrack entry on the router that then blocks the inside's mapping. So the
        untranslated side waits a second; the NATed side's first packets only die at a firewall."""
        if now - link.attempt_started >= 1.0:
            return False
        mine = self._behind_nat(self.reflexive, {ip for ip, _ in self.lan})
        member = self.members.get(link.peer)
        if member is None or mine:
            return False
        ref = next(((e.address, e.port) for e in member.info.endpoints if e.kind == EP_REFLEXIVE), None)
        return self._behind_nat(ref, {e.address for e in member.info.endpoints if e.kind == EP_LAN})

    def _observe_link(self, link: Link, obs: PeerObservation, now: float) -> None:
        member = self.members[link.peer]
        if link.last_rx >= 0:
            drx = obs.rx_bytes - link.last_rx
            dtx = obs.tx_bytes - link.last_tx
            if drx > 0:
                # the tunnel carries packets from the peer: the data plane is alive, even when its
                # controller is not (our probes then come back as ICMP port unreachable)
                link.last_rx_progress = now
            if drx + dtx > link.admin_bytes * 2 + 600:
                link.last_traffic = now
            link.admin_bytes = 0
            if link.state == UP and dtx > 0 and now - obs.last_handshake > 180:
                # sending into an expired session: WireGuard cannot get a handshake through
                if link.tx_stalled_since == 0:
                    link.tx_stalled_since = now
                elif now - link.tx_stalled_since > self.config.attempt_timeout:
                    self._link_failed(link, member, now, "handshake failed after idle")
            else:
                link.tx_stalled_since = 0.0
        link.last_rx, link.last_tx = obs.rx_bytes, obs.tx_bytes
        fresh = obs.last_handshake > 0 and now - obs.last_handshake < 180
        if link.state != ATTEMPTING or not fresh:
            return
        # a handshake after the attempt began proves the path; so does, for the first attempt
        # after our own start (a controller restart), a live session the data plane kept
        if obs.last_handshake >= link.attempt_started - 0.001 or \
                (not link.ever_up and link.fails == 0 and now - obs.last_handshake < 120):
            if obs.endpoint:
                link.endpoint = obs.endpoint
            self._link_up(link, member, now)

    def _manage_links(self, now: float) -> None:
        cfg = self.config
        self._attempt_budget = min(float(cfg.max_attempts_per_second),
                                   self._attempt_budget + (now - self._attempt_refill) * cfg.max_attempts_per_second)
        self._attempt_refill = now
        interval = cfg.probe_interval
        next_t = now + interval
        members, hops, wants_link = self.members, self.hops, self._wants_link
        for id8, link in list(self.links.items()):
            member = members.get(id8)
            if member is None:
                del self.links[id8]
                continue
            if not wants_link(member.info, id8):
                if link.state == UP:
                    self._schedule_publish(now)
                del self.links[id8]
                self._schedule_paths(now)
                continue
            if link.state == DOWN:
                if not (link.initiator or link.static):
                    continue  # the other end starts attempts
                if not link.static and id8 not in self.hops and self._lan_admin_addr(member) is None:
                    continue  # a CONNECT could not reach it yet; paths will change and wake us
                if not link.removal_applied:
                    continue  # dataplane_applied wakes us
                if now >= link.retry_at and (link.static or self._attempt_budget >= 1):
                    if not link.static:
                        self._attempt_budget -= 1  # CONNECT + handshakes: rate-limited
                    self._start_attempt(link, member, now)
                    next_t = min(next_t, now + 0.25)
                else:
                    next_t = min(next_t, max(link.retry_at, now + 0.05))
            elif link.state == ATTEMPTING:
                timeout = cfg.attempt_timeout * (1 if link.initiator else 2)
                if link.static:
                    timeout = INFINITY  # WireGuard retries the handshake every 5 s by itself
                if now - link.attempt_started > timeout:
                    if link.initiator and link.candidate_index + 1 < len(link.candidates):
                        link.candidate_index += 1
                        self._try_candidate(link, member, now)
                    else:
                        self._link_failed(link, member, now, "no handshake")
                else:
                    next_t = min(next_t, link.attempt_started + timeout + 0.001)
                    if link.endpoint_kind in (EP_REFLEXIVE, EP_NEARBY) and not link.held_back_done:
                        if now - link.attempt_started >= 1.0:
                            link.held_back_done = True
                            self._schedule_paths(now, urgent=True)  # keepalive on now
                        else:
                            next_t = min(next_t, link.attempt_started + 1.001)
                    if link.static and not link.initiator and link.connect_sent:
                        if now - link.connect_sent >= 1.0:  # "ready": until the handshake arrives
                            link.connect_sent = now
                            self._send_both(link.peer, wire.CONNECT, link.connect_body, now)
                        next_t = min(next_t, link.connect_sent + 1.0)
                    elif link.connect_sent and not link.connect_acked:
                        if now - link.connect_sent >= 0.25:  # the CONNECT or its ack was lost
                            link.connect_sent = now
                            self._send(link.peer, wire.CONNECT, link.connect_body, now)
                        next_t = min(next_t, link.connect_sent + 0.25)
                    if link.static and link.initiator and not link.peer_ready and \
                            now - link.attempt_started > 2.0:
                        link.peer_ready = True  # an old static end that never says so: go anyway
                        self._schedule_paths(now)
                    elif link.static and link.initiator and not link.peer_ready:
                        next_t = min(next_t, link.attempt_started + 2.001)
            elif link.state == UP:
                direct = hops.get(id8) == id8
                if direct and link.used_since == 0:
                    link.used_since = now
                if not self._active(link, now):
                    link.used_since = 0.0
                    continue
                alive_since = max(link.last_ack, link.last_probe_rx, link.used_since, link.last_rx_progress,
                                  link.up_since if not direct else 0)
                grace = cfg.attempt_timeout * 2 if not direct else cfg.link_down_after
                if now - alive_since > grace:
                    self._link_failed(link, member, now, "probes unanswered")
                    continue
                # one end probes (the initiator); the other answers, and probes itself only
                # when the other end's probes stop coming (it may have died, or gone idle)
                if link.initiator or now - link.last_probe_rx > 2.5 * interval:
                    if now >= link.next_probe - PROBE_ALIGN * interval:
                        link.next_probe = now + interval
                        self._send_probe(member.info, id8, now)
                    if link.next_probe < next_t:
                        next_t = link.next_probe
                elif link.last_probe_rx + 2.5 * interval + 0.001 < next_t:
                    next_t = link.last_probe_rx + 2.5 * interval + 0.001
        self.t_links = next_t
        self._attempting = any(link.state == ATTEMPTING for link in self.links.values())

    # ========================================================================= paths

    def _schedule_paths(self, now: float, urgent: bool = False) -> None:
        if urgent:
            # at once, but a hub whose links change by the hundred batches them a little
            due = max(now, self._last_recompute + URGENT_PATHS_SPACING) if len(self.links) > 64 else now
            if self.t_paths is None or due < self.t_paths:
                self.t_paths = due
        elif self.t_paths is None:
            # at most 10 times a second, less often in big meshes (each run costs O(N log N))
            spacing = 0.1 * max(1.0, len(self.members) / 250)
            self.t_paths = max(now + self.config.path_debounce, self._last_recompute + spacing)

    def _recompute(self, now: float) -> None:
        """Paths (only if the link graph changed), then the data plane."""
        self.t_paths = None
        self._last_recompute = now
        if self._graph_dirty:
            self._graph_dirty = False
            old_hops = self.hops
            self.cost, self.pred, changed = self.graph.update_tree(self.id8, self.cost, self.pred)
            touched = self.graph.touched if changed else []
            if touched is None or len(touched) * 4 > len(self.pred):
                touched = None
                self.hops = paths.first_hops(self.pred, self.id8)
            elif touched:
                # only paths got shorter: the touched nodes' first hops, cheapest first (a
                # node's predecessor was touched before it, or kept its first hop)
                hops, pred, me = dict(old_hops), self.pred, self.id8
                for node in touched:
                    parent = pred[node]
                    hops[node] = node if parent == me else hops[parent]
                self.hops = hops
            if self.hops != old_hops:
                if touched is None:
                    self._route_dests = None
                elif self._route_dests is not None:
                    self._route_dests.update(touched)  # (not empty: a touched node's hop changed)
            if self.hops.keys() != old_hops.keys():
                self.t_links = min(self.t_links, now)
            events, members, hops = self._events, self.members, self.hops
            for id8 in sorted(old_hops.keys() ^ hops.keys()):  # (O(N) of them at start: _event inlined)
                member = members.get(id8)
                if member is not None:
                    events.append(_event_of(("node_reachable" if id8 in hops else "node_unreachable",
                                             {"node": member.info.name})))
            for id8 in self.hops if touched is None else touched:
                hop = self.hops[id8]
                if old_hops.get(id8) not in (None, hop):
                    self._event("path_changed", node=self.members[id8].info.name,
                                via=self.members[hop].info.name if hop != id8 else "direct")
        self._build_dataplane(now)

    def _dest_key(self, id8: bytes) -> int:
        return _ip_int(self.members[id8].info.overlay_ip)[1]  # (all of one IP version: the subnet's)

    def _route_for(self, dest: bytes, hop: bytes) -> DesiredRoute:
        gateway = None if hop == dest else self.members[hop].info.overlay_ip
        return _desired_route(self.members[dest].info.overlay_ip, self.subnet.max_prefixlen, gateway)

    def _rebuild_routes(self) -> None:
        """Routes and allowed IPs from all paths: O(N)."""
        if self._dest_order is None:  # members by address (rebuilt when members go or move)
            order = sorted((self._dest_key(id8), id8) for id8 in self.members)
            self._dest_keys = [key for key, _ in order]
            self._dest_order = [id8 for _, id8 in order]
        hops = self.hops
        slots: list[DesiredRoute | None] = []
        lists: dict[bytes, tuple[list[int], list[str]]] = {}
        for dest, key in zip(self._dest_order, self._dest_keys, strict=True):
            hop = hops.get(dest)
            if hop is None:
                slots.append(None)
                continue
            route = self._route_for(dest, hop)
            slots.append(route)
            if hop not in lists:
                lists[hop] = ([], [])
            keys, prefixes = lists[hop]
            keys.append(key)
            prefixes.append(route.destination)
        self._route_slots, self._routed_hops, self._allowed_lists = slots, hops, lists
        self._routes = tuple(filter(None, slots))  # (in address order, and so is each peer's allowed list)
        self._allowed = {hop: tuple(prefixes) for hop, (_, prefixes) in lists.items()}

    def _update_routes(self, dests: Iterable[bytes]) -> bool:
        """Routes and allowed IPs after the paths to ``dests`` changed (and no others): what
        :meth:`_rebuild_routes` gives, in O(changes log N). False if it cannot tell."""
        hops, via, lists, slots = self.hops, self._routed_hops, self._allowed_lists, self._route_slots
        order, order_keys = self._dest_order, self._dest_keys
        if len(slots) != len(order):
            return False
        dirty = set()
        for dest in dests:
            hop, old = hops.get(dest), via.get(dest)
            if hop == old:
                continue
            if dest not in self.members:
                return False
            key = self._dest_key(dest)
            at = bisect.bisect_left(order_keys, key)
            if at == len(order) or order[at] != dest:
                return False
            if old is not None:
                keys, prefixes = lists[old]
                i = bisect.bisect_left(keys, key)
                del keys[i], prefixes[i]
                dirty.add(old)
            if hop is None:
                slots[at] = None
                continue
            route = slots[at] = self._route_for(dest, hop)
            if hop not in lists:
                lists[hop] = ([], [])
            keys, prefixes = lists[hop]
            i = bisect.bisect_left(keys, key)
            keys.insert(i, key)
            prefixes.insert(i, route.destination)
            dirty.add(hop)
        if dirty:
            allowed = dict(self._allowed)
            for hop in dirty:
                if lists[hop][1]:
                    allowed[hop] = tuple(lists[hop][1])
                else:
                    del lists[hop]
                    allowed.pop(hop, None)
            self._allowed = allowed
            self._routes = tuple(filter(None, slots))
        self._routed_hops = hops
        return True

    def _build_dataplane(self, now: float) -> None:
        dests = self._route_dests
        if dests is None or dests:  # only when paths or addresses changed
            self._route_dests = set()
            if dests is None or self._dest_order is None or not self._update_routes(dests):
                self._rebuild_routes()
        peers = []
        for id8, link in self.links.items():
            member = self.members.get(id8)
            if member is None:
                continue
            if link.state == DOWN:
                continue  # removed; a retry adds it again, which forces a fresh handshake
            obs = self.observed.get(member.info.wg_public_key)
            endpoint = link.endpoint
            if obs is not None and obs.endpoint and obs.last_handshake and now - obs.last_handshake < 180:
                endpoint = obs.endpoint  # what WireGuard uses now (it roams); do not fight it
            keepalive = self.config.keepalive if self._wants_keepalive(link, now) else 0
            peers.append(DesiredPeer(member.info.wg_public_key, endpoint, self._allowed.get(id8, ()), keepalive))
        peers.sort(key=lambda p: p.public_key)
        plane = DataPlane(tuple(peers), self._routes)
        if plane != self.dataplane:
            self.dataplane = plane
            self.dataplane_version += 1
            # applied versions may lag behind: remember what the recent ones contained
            self._planes[self.dataplane_version] = (frozenset(p.public_key for p in plane.peers), self.hops)
            self._planes.pop(self.dataplane_version - 16, None)
