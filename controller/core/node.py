"""The core's facade: inputs, outputs, timers and the orchestration of its parts.

Like aioquic's connection, it owns the clock-driven timers and hands each job to a part:
:class:`Membership` (records, bindings, replay), :class:`Links` (the link state machine and
probes), :class:`Gossip` (dissemination and anti-entropy), :class:`Routing` (graph, tree,
first hops, route table) and :class:`Transport` (sealing, addresses). Parts talk through
callbacks given here (send, publish, paths changed, event); none holds the facade.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from wg_netmanager.common.endpoints import collision

from .. import crypto, paths, wire
from ..wire import (
    EP_LAN,
    EP_REFLEXIVE,
    EP_STATIC,
    FLAG_LEFT,
    FLAG_PAGED,
    FLAG_STATIC,
    Endpoint,
    Identity,
    LinkClaim,
    NodeInfo,
    ProtocolError,
    Record,
)
from . import pages
from .gossip import BOOTSTRAP_IDLE_FACTOR, Gossip
from .link import ENDPOINT_KINDS, FIRST_LINKS_WAIT, LINK_BATCH_DELAY, UP, Link, live_session
from .links import Links
from .local import LocalNode, fmt_ep, is_hostname, parse_ep
from .membership import Member, Membership
from .routes import Routing
from .transport import Transport
from .types import CoreConfig, Counters, DataPlane, Event, EventKind, PeerObservation, StaticPeerConfig
from .validation import AMPLIFYING, AddressValidation, StaticProof

INFINITY = float("inf")  # "no deadline", for every timer
RX_COUNTERS = {t: f"rx_{name}" for t, name in wire.TYPE_NAMES.items()}
#: own record versions come at most this often (a hub's links change in bursts), less often
#: for a node with many links (its record grows with them)
PUBLISH_SPACING = 0.25
PUBLISH_SPACING_LINKS = 500
#: path recomputations come at most this often, less often in big meshes (each costs O(N log N))
PATHS_SPACING = 0.1
PATHS_SPACING_MEMBERS = 250
#: urgent recomputations (a link to us changed) are spaced this much at nodes with more links
#: than URGENT_SPACING_LINKS (a hub's links change by the hundred; elsewhere the window
#: between the two ends' switches must stay short)
URGENT_PATHS_SPACING = 0.02
URGENT_SPACING_LINKS = 64
GC_INTERVAL = 60.0
#: after a restart, our first record waits for the first look at the data plane at most this long
RESTART_FIRST_RECORD_WAIT = 3.0
#: how often the runtime saves persistent_state() while state_dirty says it changed (the
#: housekeeping tick; and on every clean stop)
STATE_SAVE_INTERVAL = 5.0
#: a restarted controller asks this many of the nodes it kept links to for the mesh at once
RESTART_ASK = 3
#: records kept verified per member (a few versions each), at least RECORDS_KEPT_MIN
RECORDS_KEPT_PER_MEMBER = 4
RECORDS_KEPT_MIN = 256
#: an input this much later than our next deadline: the clock jumped (see _check_clock)
CLOCK_JUMP = 2.0
#: after a (re)start, the data plane is applied only once every live WireGuard peer is
#: reachable again, or after this long (see settled)
SETTLE_MAX = 15.0
#: how many recent data-plane versions are remembered (applied versions may lag behind)
PLANES_KEPT = 16
MAX_ENDPOINTS = 16
#: anti-entropy rounds are spread over [0.75, 1.25] sync intervals (nodes do not fall into step)
SYNC_JITTER = 0.5
#: anti-entropy repairs what gossip lost while records change, paced as Trickle (RFC 6206)
#: paces its rounds: the configured interval right after a change we saw (ours or another's),
#: then twice as long after each round without one, up to SYNC_CALM_INTERVAL (a calm mesh is
#: quiet: 5 rounds in the 31 s after a change, where a fixed pace for 30 s took 30 - the idle
#: mesh's RTT claims still settle a few minutes after it formed, and each change cost every
#: node 30 SYNCs)
SYNC_CALM_INTERVAL = 30.0
#: how often the data plane should be observed: while handshakes are awaited, while links
#: carry traffic, otherwise. (2 s when every link is quiet saved a third of the idle CPU but
#: let a dead node's routes stay 12 s in a netns test once and was dropped; that test's failures,
#: 12.3-13.7 s, turned out to be its dependence on quiet links, not the look's pace.)
OBSERVE_FAST = 0.1
OBSERVE_BUSY = 0.2
OBSERVE_SLOW = 1.0
#: at OBSERVE_SLOW, a look through the helper (a D-Bus round trip that wakes dbus-daemon, the
#: helper and the WireGuard device) is needed only when the device's own packet counters moved
#: since the last one (any packet through the tunnel: traffic, our probes and their answers);
#: when they stand still, this often
OBSERVE_UNCHANGED = 5.0


class Core:
    """The sans-I/O controller core (see the package's docstring)."""

    def __init__(self, config: CoreConfig, identity_seed: bytes, wg_public_key: bytes, now: float,
                 random_bytes: Callable[[int], bytes], persisted: Mapping | None = None,
                 lan_endpoints: Iterable[tuple[str, int]] = (), cache: wire.RecordCache | None = None,
                 pair_memo: dict | None = None) -> None:
        self.config = config
        self.identity = Identity(identity_seed)
        self.id8 = self.identity.id8
        self.local = LocalNode(config, self.identity, wg_public_key, lan_endpoints)
        self.random_bytes = random_bytes
        #: verified records: our own cache grows with the mesh (RECORDS_KEPT_PER_MEMBER); a
        #: cache passed in (the simulator's, shared by its cores) is sized by its owner
        self._own_cache = cache is None
        self.verified = cache or wire.RecordCache(RECORDS_KEPT_MIN)
        self.started = now
        persisted = persisted or {}
        self.version = max(int(persisted.get("version", 0)), 0)
        self.left = False  # leave() was called: our record says so; the runtime stops feeding us
        self.counters = Counters()
        self._events: list[Event] = []
        self.observed: dict[bytes, PeerObservation] = {}  # by WireGuard key
        self._observed_at = 0.0  # when the data plane was last observed
        self._observed_once = False
        self._settled = False
        self._changed_links: set[bytes] = set()  # links up or down since our last record
        self._page_count = 0  # our links are in this many link pages (0: in our record; see .pages)

        proven: dict[str, bytes] = {}  # (see StaticProof)
        self.membership = Membership(config, self.identity.public, self.local.subnet, self.counters, self._emit,
                                     persisted, proven, lambda: self.local.static_by_ip)
        self.routing = Routing(self.id8, self.membership.members, config.hop_cost_ms, self.local.subnet.max_prefixlen)
        links: dict[bytes, Link] = {}
        self.transport = Transport(crypto.derive_admin_key(config.shared_key), self.local, self.membership,
                                   self.routing, links, self.counters, random_bytes, pair_memo)
        self.links = Links(config, self.local, self.membership, self.routing, self.transport, self.counters,
                           self._emit, self._wake_links, self._schedule_paths, self._schedule_publish,
                           self._changed_links.add, self._announces_links,
                           lambda peer, at: self.gossip.sync_with(peer, at), links, now)
        self.validation = AddressValidation(random_bytes, self.counters, self.local.is_static_admin_addr)
        self.static_proof = StaticProof(self.validation.key, proven)
        self.gossip = Gossip(self.local, self.membership, self.routing, links, self.transport, self._rand_unit,
                             self._wake_gossip, config.gossip_fanout, config.gossip_rounds,
                             config.digest_leaf, self.links.active,
                             lambda addr: not self.validation.needs_check(addr, False))
        self._handlers: dict[int, Callable[[wire.Inner, bytes, tuple[str, int], float], None]] = {
            wire.RECORDS: self._on_records, wire.PROBE: self._on_probe, wire.PROBE_ACK: self._on_probe_ack,
            wire.SYNC: self._on_sync, wire.DIGEST: self._on_digest, wire.REQUEST: self._on_request,
            wire.CONNECT: self._on_connect, wire.CONNECT_ACK: self._on_connect_ack,
        }

        self.dataplane = DataPlane()
        self.dataplane_version = 0
        #: overlay addresses left unrouted: underlay addresses in use here (_underlay_clashes)
        self.unrouted: dict[str, str] = {}
        #: recent data-plane versions -> (their peers' WireGuard keys, the paths they route)
        self._planes: dict[int, tuple[frozenset[bytes], dict[bytes, bytes]]] = {0: (frozenset(), {})}

        # timers (INFINITY: not due)
        self.t_gossip = now
        self.t_sync = now + config.sync_interval
        self.t_bootstrap = now
        self.t_links = now
        self.t_publish = now
        self.t_paths = INFINITY
        self.t_gc = now + GC_INTERVAL
        self._last_publish = -INFINITY
        self._last_recompute = -INFINITY
        self._last_jump = -INFINITY
        self._sync_rounds = 0  # anti-entropy rounds since the last record we took or published
        kept = persisted.get("links")
        if isinstance(kept, dict) and kept and self.version:
            # a restart: our last record claimed links the data plane may still have. Our first
            # record waits for the first look at the data plane (its live sessions are adopted)
            # rather than tell the mesh that we have no links. (With none to adopt - after
            # ``down`` - our first record comes at once: it supersedes our departure)
            self.links.kept_claims = _kept_claims(kept)
            self._first_look = True
            self.t_publish = now + RESTART_FIRST_RECORD_WAIT
            # ... and asks the nodes it kept links to for the mesh at once, through the tunnel
            # (a calm mesh's anti-entropy and quiet probes reach a restarted static peer, which
            # has no static peer to ask, only after 10-30 s)
            bound = {identity[:wire.ID8_LEN]: ip for ip, identity in self.membership.bindings.items()}
            self._ask_first = sorted(bound[id8] for id8 in self.links.kept_claims if id8 in bound)[:RESTART_ASK]
        else:
            self._first_look = False
            self._ask_first = []
            self._publish(now)

    # ========================================================================= inputs

    def datagram_received(self, data: bytes, src: tuple[str, int], now: float, tunnel: bool | None = None) -> None:
        """``tunnel``: whether it came through the WireGuard device (the runtime knows the arrival
        interface); None: judged by the source, an overlay address (right unless the overlay
        subnet contains underlay addresses too)."""
        self._check_clock(now)
        try:
            inner = self.transport.open(data)
            self.membership.check_replay(inner, now)
            self._dispatch(inner, src, now, tunnel)
        except ProtocolError as e:
            self.counters.count(f"drop_{e.reason}")

    def handle_timer(self, now: float) -> None:
        self._check_clock(now)
        cfg = self.config
        if now >= self.t_publish:
            self._publish(now)
        if now >= self.t_paths:
            self._recompute(now)
        if self._ask_first:
            self.gossip.ask_for_mesh([(ip, cfg.admin_port) for ip in self._ask_first], now, self.version)
            self._ask_first = []
        if now >= self.t_bootstrap:
            self._prove_static_peers(now)
            # (once every static peer is known, only a forgotten one would need it again)
            idle = not self.gossip.bootstrap(now, self.version)
            self.t_bootstrap = now + cfg.bootstrap_interval * (BOOTSTRAP_IDLE_FACTOR if idle else 1)
        if now >= self.t_links:
            self.t_links = self.links.manage(now)
        if now >= self.t_gossip:
            self.gossip.tick(now)
            # rounds while records are hot (publishing and flooding wake it up again)
            self.t_gossip = now + cfg.gossip_interval if self.gossip.hot else INFINITY
        if now >= self.t_sync:
            self.gossip.sync(now)
            interval = min(cfg.sync_interval * 2 ** self._sync_rounds, SYNC_CALM_INTERVAL)
            self._sync_rounds = min(self._sync_rounds + 1, 16)
            self.t_sync = now + interval * (1 - SYNC_JITTER / 2 + SYNC_JITTER * self._rand_unit())
        if now >= self.t_gc:
            self._gc(now)
            self.t_gc = now + GC_INTERVAL
        # the data plane may have changed because of any of the above
        if now >= self.t_paths:
            self._recompute(now)

    def dataplane_observed(self, now: float, peers: Mapping[bytes, PeerObservation]) -> None:
        """Per WireGuard public key: endpoint, last handshake, rx/tx (Helper1.GetState)."""
        self._check_clock(now)
        self._observed_at = now
        self.observed = dict(peers)
        self._observed_once = True
        self.links.observed(peers, now)
        if self._first_look and (not any(live_session(o.last_handshake, now) for o in peers.values()) or (
                self.membership.members and all(id8 in self.membership.members for id8 in self.links.kept_claims))):
            # every node our last record claimed a link to is known again, so its link is
            # adopted if the data plane kept it (adopted links asked for a record already; one
            # with none comes now). A data plane with no live session (the box rebooted: its
            # device is new) has nothing to adopt: our record need not wait for the others'
            self._first_look = False
            self._schedule_publish(now)

    def dataplane_applied(self, version: int, now: float) -> None:
        """The runtime applied ``dataplane`` of this version (Helper1.Apply returned).
        Messages that ask the other end to start a handshake wait for this."""
        plane = self._planes.get(version)
        if plane is None:
            return
        peer_keys, self.routing.applied_hops = plane
        self.links.applied(peer_keys, now)

    def _check_clock(self, now: float) -> None:
        """A timer of ours far overdue means our clock jumped: the process was paused (SIGSTOP)
        or the machine suspended. Silence in between says nothing about the links."""
        deadline = self.next_deadline()
        late = now - deadline
        if late > CLOCK_JUMP and deadline > self._last_jump:  # (once: the timers are still overdue)
            self._last_jump = now
            self.counters.count("clock_jumps")
            self._emit(EventKind.CLOCK_JUMPED, seconds=round(late, 1))
            self.links.resumed(now)

    # ------------------------------------------------------------------------- commands

    def connect(self, target: str, now: float) -> bool:
        """Pin a direct link to ``target`` (name or overlay IP): attempted now, never idled."""
        member = self.find(target)
        if member is None or member.identity == self.identity.public:
            return False
        self.links.pin(member, now)
        return True

    def probe(self, target: str, now: float) -> int | None:
        """Send one probe through the mesh; a ``probe_result`` event follows."""
        member = self.find(target)
        if member is None:
            return None
        return self.links.probes.send(member.record.id8, now, user=True)

    def set_lan_endpoints(self, endpoints: Iterable[tuple[str, int]], now: float) -> None:
        """Our own underlay addresses. When one goes away we moved (a roaming laptop) or the
        network changed under us. Every link starts over at once, without waiting for probes
        to time out: links over a LAN we left try their other candidates, and every WireGuard
        peer is removed and added again - a fresh peer forgets the source address it used to
        send from (wireguard-go keeps sending from the old one, and fails, when the interface
        it used is gone). A static peer's answer then tells our new public endpoint."""
        lan = tuple(endpoints)
        if lan == self.local.lan.addresses:
            return
        gone = self.local.lan.ips() - {ip for ip, _ in lan}
        self.local.lan.set(lan)
        self._schedule_publish(now)
        self._schedule_paths(now)  # (the data plane again: see _underlay_clashes)
        if gone:
            self.local.seen_by.clear()  # (the NAT in front of us may be another now)
            self._emit(EventKind.ADDRESSES_CHANGED, gone=",".join(sorted(gone)), now=",".join(ip for ip, _ in lan))
            self.links.addresses_lost(now)

    def set_wg_public_key(self, key: bytes, now: float) -> None:
        """Key rotation: publish the new WireGuard key under the same identity."""
        if key != self.local.wg_public_key:
            self.local.wg_public_key = key
            self._schedule_publish(now)

    def _unproven_static_peers(self) -> list[str]:
        """The static peers' overlay addresses not bound to an identity yet (see StaticProof)."""
        bindings = self.membership.bindings
        return [ip for ip in sorted(self.local.static_by_ip) if ip not in bindings]

    def _prove_static_peers(self, now: float) -> None:
        """A challenge to each static peer whose address no identity has yet (before the
        bootstrap's DIGEST: its answer then comes first, and the records after it are taken)."""
        for ip in self._unproven_static_peers():
            static = self.local.static_by_ip[ip]
            self.transport.send_to_addr((static.host, static.admin_port), wire.PROBE,
                                        wire.body_probe(self.static_proof.challenge(ip, now)), now)

    def update_static_peers(self, peers: Iterable[StaticPeerConfig], now: float) -> None:
        """Static peers re-resolved (dynamic DNS): new endpoints for links still being set up."""
        if not self.local.set_static_peers(peers):
            return
        self.t_bootstrap = now
        self.links.static_peers_changed()
        self._schedule_paths(now)

    def set_admission_rules(self, allowed: Mapping[str, frozenset[bytes]] | None,
                            revoked_identities: frozenset[bytes], revoked_wg_keys: frozenset[bytes],
                            now: float) -> None:
        """net.yaml reloaded: strict mode and revocations. A node now refused is dropped at once
        (its link, paths and WireGuard peer go) and its records are refused from then on."""
        for member in self.membership.set_rules(allowed, revoked_identities, revoked_wg_keys):
            self._drop(member, EventKind.NODE_REVOKED, now)
        self._schedule_paths(now, urgent=True)

    def _drop(self, member: Member, kind: EventKind, now: float) -> None:
        id8 = member.record.id8
        self.routing.forget(id8)
        link = self.links.links.pop(id8, None)
        if link is not None and link.state == UP:
            self._changed_links.add(id8)
            self._schedule_publish(now)
        self._emit(kind, node=member.info.name, ip=member.info.overlay_ip)

    def set_wg_port(self, port: int, now: float) -> None:
        if port != self.local.wg_port:
            self.local.wg_port = port
            self._schedule_publish(now)

    # ========================================================================= outputs

    def take_datagrams(self) -> list[tuple[bytes, tuple[str, int]]]:
        return self.transport.take()

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float:
        return min(self.t_gossip, self.t_sync, self.t_bootstrap, self.t_links, self.t_gc, self.t_publish,
                   self.t_paths)

    def settled(self, now: float) -> bool:
        """Whether the desired data plane is worth applying. After a (re)start, not before every
        WireGuard peer with a live session is known and reachable again and its link adopted
        (or 15 s passed): a controller restart must not apply a half-learned mesh over a
        working data plane. (Reachable alone was not enough: a static peer that learned two
        nodes a moment before its first Apply routed them through a third, their links not yet
        adopted at the next look.)"""
        if self._settled:
            return True
        if now - self.started > SETTLE_MAX:
            self._settled = True
        elif self._observed_once:
            owner, hops, links = self.membership.wg_owner, self.routing.hops, self.links.links
            fresh = [owner.get(key) for key, o in self.observed.items() if live_session(o.last_handshake, now)]
            self._settled = all(id8 in hops and (id8 not in links or links[id8].state == UP) for id8 in fresh)
        return self._settled

    def observation_interval(self) -> float:
        """How soon the data plane should be observed again: fast while handshakes are awaited,
        often while links carry traffic (a dead one is noticed in time)."""
        if self.links.attempting or self._first_look:
            return OBSERVE_FAST
        return OBSERVE_BUSY if self.links.busy_until > self._observed_at else OBSERVE_SLOW

    def look_needed(self, now: float, device_moved: bool) -> bool:
        """Whether an observation due now must read the device (its peers' counters, handshakes
        and endpoints), given whether the device's packet counters moved since the last read: a
        device where no packet went in or out since has nothing new to tell at the slow pace but
        a handshake or an endpoint (a peer's keepalive, a key changed under us), which can wait
        OBSERVE_UNCHANGED."""
        if device_moved or self.observation_interval() < OBSERVE_SLOW:
            return True
        return now - self._observed_at >= OBSERVE_UNCHANGED - 0.05

    def persistent_state(self) -> dict:
        """What a restarted controller resumes from: bindings, our record version, the RTT claims
        of our links (see Links._adopt)."""
        state = self.membership.persistent_state(self.version)
        state["links"] = {id8.hex(): link.claimed_rtt for id8, link in sorted(self.links.links.items())
                          if link.state == UP and not self.left}  # (after leave(): no data plane to adopt)
        return state

    @property
    def state_dirty(self) -> bool:
        """Whether :meth:`persistent_state` may have changed since it was last taken: a binding
        or our own record (its version, and the links and claims it lists)."""
        return self.membership.bindings_dirty

    # ------------------------------------------------------------------------- queries

    @property
    def members(self) -> dict[bytes, Member]:
        return self.membership.members

    @property
    def hops(self) -> dict[bytes, bytes]:
        """destination -> first hop, for every node we have a path to."""
        return self.routing.hops

    @property
    def wg_public_key(self) -> bytes:
        return self.local.wg_public_key

    def find(self, target: str) -> Member | None:
        return self.membership.find(target)

    def addresses_of(self, name: str) -> list[str]:
        """The overlay IPs of the nodes (this one included) whose accepted record carries this
        name, compared without case; a node that left has none (for DNS: see controller.dns)."""
        name = name.lower()
        return sorted(m.info.overlay_ip for m in self.membership.members.values()
                      if m.info.name.lower() == name and not m.info.is_left)

    def path(self, id8: bytes) -> list[bytes]:
        return self.routing.path(id8)

    def reachable(self) -> set[bytes]:
        return set(self.routing.hops)

    @property
    def identity_hex(self) -> str:
        return self.identity.public.hex()

    def counter_values(self) -> dict[str, int]:
        return dict(self.counters)

    def route_status(self) -> list[tuple[str, str, str]]:
        """The desired routes: (destination, gateway overlay IP or "", gateway name or "")."""
        names = {m.info.overlay_ip: m.info.name for m in self.membership.members.values()}
        return [(r.destination, r.gateway or "", names.get(r.gateway or "", "")) for r in self.dataplane.routes]

    def member_status(self) -> list[dict]:
        """One entry per known node (for status output and Controller1)."""
        out = []
        members = self.membership.members
        for id8, m in sorted(members.items(), key=lambda kv: kv[1].info.overlay_ip):
            if id8 == self.id8:
                continue
            p = self.path(id8)
            link = self.links.get(id8)
            # (a relayed node's endpoint, handshake and bytes would be its relay's: `via` says it)
            obs = self.observed.get(m.info.wg_public_key) if len(p) == 2 else None
            via = [members[h].info.name for h in p[1:-1]]
            out.append({
                "name": m.info.name, "overlay_ip": m.info.overlay_ip, "identity": m.identity.hex()[:16],
                "identity_key": m.identity.hex(),
                "wg_public_key": m.info.wg_public_key, "reachable": bool(p), "via": via,
                "rtt_ms": paths.latency_ms(self.routing.cost[id8], len(p) - 1, self.config.hop_cost_ms) if p else None,
                "link": link.state if link else None, "endpoint": obs.endpoint if obs else "",
                "last_handshake": obs.last_handshake if obs else 0.0,
                "rx_bytes": obs.rx_bytes if obs else 0, "tx_bytes": obs.tx_bytes if obs else 0,
                "static": self.local.is_hub(m.info), "left": m.info.is_left,
            })
        return out

    def self_status(self) -> dict:
        """This node as `status` shows it: its public endpoint and the NAT in front of it."""
        public = self.local.public_endpoint()
        return {"public_endpoint": fmt_ep(public) if public else "", "nat": self.local.nat_type(),
                "listen_port": self.local.wg_port, "refused": list(self.membership.refusals)}

    def explain(self, target: str, now: float) -> dict | None:
        """`wg_netmanager why NODE`: its path, its direct link (state, endpoint, failures, next
        attempt, candidates, last transitions) and in one sentence why the path is what it is."""
        member = self.find(target)
        if member is None or member.identity == self.identity.public:
            return None
        id8 = member.record.id8
        members = self.membership.members
        path = self.path(id8)
        link, reason = self.links.explain(member, now)
        relays = [members[h].info.name for h in path[1:-1]]
        if path and relays:
            reason = f"relayed via {', '.join(relays)}: {reason}"
        elif not path:
            reason = f"unreachable: {reason}" if not member.info.is_left else reason
        return {"name": member.info.name, "overlay_ip": member.info.overlay_ip, "reachable": bool(path),
                "via": relays, "static": self.local.is_hub(member.info), "left": member.info.is_left,
                "endpoints": [f"{fmt_ep((ep.address, ep.port))} ({ENDPOINT_KINDS.get(ep.kind, ep.kind)})"
                              for ep in member.info.endpoints],
                "link": link, "reason": reason}

    # ========================================================================= receive

    def _emit(self, kind: EventKind, **data) -> None:
        self._events.append(Event(kind, data))

    def _dispatch(self, inner: wire.Inner, src: tuple[str, int], now: float, tunnel: bool | None = None) -> None:
        sender8 = inner.sender[:wire.ID8_LEN]
        over = self.local.subnet.is_overlay(src[0]) if tunnel is None else tunnel
        if not over:
            self.membership.heard_from(sender8, src, now)
        self.links.probe_received(sender8, over, inner.type, now)
        self.counters.count(RX_COUNTERS[inner.type])
        if inner.type in AMPLIFYING and self.validation.needs_check(src, over):
            # (its answer could be many times its size: not before src shows it receives there)
            challenge = self.validation.hold(src, inner, now)
            if challenge is not None:
                self.transport.send_to_addr(src, wire.PROBE, wire.body_probe(challenge), now, inner.sender)
            return
        self._handlers[inner.type](inner, sender8, src, now)

    def _on_records(self, inner: wire.Inner, sender8: bytes, src: tuple[str, int], now: float) -> None:
        self._records_received(inner.body, now, sender8)

    def _records_received(self, body: bytes, now: float, source: bytes | None = None) -> None:
        flood = bool(body and body[0] & wire.RECORDS_FLOOD)
        for identity, version, kind, pos, total in wire.iter_records(body, True):
            page_key = None
            if kind == wire.RECORD_LINKS:
                try:
                    page_key = wire.page_key(identity, wire.page_index_at(body, pos))
                except ProtocolError as e:
                    self.counters.count(f"drop_{e.reason}")
                    continue
            if self.membership.is_known(identity, version) if page_key is None else \
                    self.membership.is_known_page(page_key, identity, version):
                self.counters.count("records_known")
                continue
            if identity == self.identity.public:
                # our own claims from before a restart: supersede them - after our first look at
                # the data plane, when our record can claim the links it kept
                if self._first_look:
                    self.version = max(self.version, version)
                elif version >= self.version:
                    self.version = version
                    self._schedule_publish(now)
                continue
            try:
                record = wire.parse_record(body, pos, self.verified, total)
            except ProtocolError as e:
                self.counters.count(f"drop_{e.reason}")
                continue
            if page_key is None:
                self._accept_record(record, now, source, flood)
            else:
                self._accept_page(record, page_key, now, source, flood)

    def _accept_page(self, record: Record, key: bytes, now: float, source: bytes | None, flood: bool) -> None:
        """A link page (see .pages): its node's claims change as a record's would."""
        id8 = self.membership.admit_page(record)
        if id8 is None:
            return
        self._membership_changed(now)
        info = self.membership.members[id8].info
        claims_before = self.routing.graph.claims.get(id8, {})
        claims = self.membership.claims_of(id8)
        graph_changed = self.routing.set_claims(id8, claims)
        self._hand_on(key, id8, info, now, source, flood)
        self._claims_changed(id8, claims_before, claims, now, graph_changed)
        self.links.follow_claim(id8, claims, now)

    def _accept_record(self, record: Record, now: float, source: bytes | None = None, flood: bool = False) -> bool:
        admission = self.membership.admit(record, self.local.wg_public_key, now,
                                          source != record.id8 and self._from_hub(source))
        if admission is None:
            return False
        self._membership_changed(now)
        id8, info, old = record.id8, admission.member.info, admission.old
        if admission.key_rotated:
            self.links.key_rotated(id8, now)
        claims_before = self.routing.graph.claims.get(id8, {})
        claims = self.membership.claims_of(id8)
        graph_changed = self.routing.set_claims(id8, claims)
        self._hand_on(id8, id8, info, now, source, flood)
        if old is None:
            self._emit(EventKind.NODE_DISCOVERED, node=info.name, ip=info.overlay_ip,
                       identity=record.identity[:8].hex())
            if self.local.is_static and source == id8 and not self.local.is_hub(info):
                self.gossip.introduce(id8, now)
            self.routing.table.added(id8, admission.address)
            if self._own_cache:
                self.verified.size = max(RECORDS_KEPT_MIN, RECORDS_KEPT_PER_MEMBER * len(self.membership.members))
        elif admission.address_changed:
            self.routing.table.invalidate()
        just_left = info.is_left and (old is None or not old.info.is_left)
        if just_left:
            self._emit(EventKind.NODE_LEFT, node=info.name, ip=info.overlay_ip)
            self.links.left(id8, now)
        self._claims_changed(id8, claims_before, claims, now, graph_changed or old is None
                             or admission.address_changed or admission.key_rotated, just_left)
        if self.links.get(id8) is None and self.links.wants_link(info, id8):
            self.links.ensure(admission.member, now)  # (links no longer wanted go in Links.manage)
        self.links.follow_claim(id8, claims, now)
        if info.is_paged:
            for key, page in self.membership.pages.orphans_of(record.identity):  # (they came first)
                self._accept_page(page, key, now, None, False)
        return True

    def _from_hub(self, source: bytes | None) -> bool:
        """Whether ``source`` (who sent us a record) is a static peer we trust (LocalNode.is_hub)."""
        member = self.membership.members.get(source) if source is not None else None
        return member is not None and self.local.is_hub(member.info)

    def _hand_on(self, key: bytes, id8: bytes, info: NodeInfo, now: float, source: bytes | None,
                 flood: bool) -> None:
        """Whether a new record or link page (by its key) of the node ``id8`` is handed on."""
        from_hub = self._from_hub(source)
        if self.local.is_static and source is not None and (
                info.links or info.is_paged or self.local.is_hub(info) or info.is_left) and (
                (flood and source == id8) or from_hub):
            # (a record without links is of use only to the static peers it connects to: it
            # sends it to them itself, see Links.applied)
            self.gossip.flood(key, source, now)  # a hub hands new records on
        elif not self.local.is_static and flood and from_hub:
            # a hub's flood reaches only the nodes it has links to: a hub that rebooted has few,
            # and those it lost kept their old view of the mesh, routed to it by other relays
            # than it routed to them, and WireGuard's check of the source address dropped what
            # either sent the other (the simulator's static-peer reboots took up to 3.2 s for
            # records that anti-entropy brought). Our neighbours it has no link to get them from
            # us; none while it links to every node, as it does once the mesh has formed
            self.gossip.flood(key, source, now)

    def _claims_changed(self, id8: bytes, claims_before: Mapping[bytes, int], claims: Mapping[bytes, int],
                        now: float, changed: bool, left: bool = False) -> None:
        """A node's claims were replaced (``changed``: its edges, or more about it): a link to us
        it no longer claims is down at its end (unless it just left); paths follow."""
        if not left and self.id8 in claims_before and self.id8 not in claims:
            self.links.dropped_by_peer(id8, now)
        if changed:
            # a change of a link to us completes or breaks an edge the other end already
            # switched: follow at once (the window between the two switches loses packets)
            self._schedule_paths(now, urgent=(self.id8 in claims_before) != (self.id8 in claims))

    def _on_probe(self, inner: wire.Inner, sender8: bytes, src: tuple[str, int], now: float) -> None:
        probe_id = wire.parse_probe(inner.body)
        member = self.membership.get(sender8)
        seen_wg = None
        if member is not None:
            obs = self.observed.get(member.info.wg_public_key)
            if obs is not None and obs.endpoint:
                seen_wg = parse_ep(obs.endpoint)
        self.transport.send_to_addr(src, wire.PROBE_ACK, wire.body_probe_ack(probe_id, src, seen_wg), now,
                                    inner.sender)
        if member is None and (inner.mac or self.local.is_static_admin_addr(src)):
            # (a restarted static peer learns every node from the probes that come each second,
            # rather than waiting for their anti-entropy to pick it: probes of nodes that link
            # to us; and a new node asks a static peer that challenged its DIGEST, see
            # core.validation - which also keeps that DIGEST held: a hub holding more than
            # HELD_MAX addresses forgets the oldest first. Not for a new node's challenge to a
            # static peer's address, validation.StaticProof: its DIGEST follows, and a static
            # peer that learnt the node from it one round trip earlier sent 2.4 times the bytes
            # of a 300-node simulated cold start)
            self._ask_for_record(inner, sender8, src, now)

    def _on_probe_ack(self, inner: wire.Inner, sender8: bytes, src: tuple[str, int], now: float) -> None:
        probe_id, _seen_admin, seen_wg = wire.parse_probe_ack(inner.body)
        held = self.validation.answered(src, probe_id, now)
        if held is not None:  # src answered our challenge: what it sent before is answered now
            for message in held:
                self._handlers[message.type](message, message.sender[:wire.ID8_LEN], src, now)
            self.gossip.validated_addr(src, now)
            return
        if sender8 not in self.membership.members:
            unproven = self._unproven_static_peers()
            ip = self.static_proof.answered(probe_id, inner.sender, unproven, now) if unproven else None
            if ip is not None:
                self.counters.count("static_peers_proven")
                if ip in self.membership.unproven_refused:  # (its record came first: ask again)
                    self.membership.unproven_refused.discard(ip)
                    static = self.local.static_by_ip[ip]
                    self.transport.send_to_addr((static.host, static.admin_port), wire.REQUEST,
                                                wire.body_request([sender8]), now, inner.sender)
                return
        answered = self.links.probes.answered(sender8, probe_id, now)
        if answered is None:
            return
        rtt_ms, user = answered
        link = self.links.get(sender8)
        member = self.membership.get(sender8)
        hub = member is not None and self.local.is_hub(member.info)
        if seen_wg is not None and hub:
            self.local.seen_by[sender8] = seen_wg
            self._learn_reflexive(seen_wg, now)
        elif self.local.reflexive is None and link is not None and hub:
            self.links.probe_soon(link, now)  # its WireGuard has not reported our endpoint yet (it polls)
        if user and member is not None:
            via = ",".join(self.membership.members[h].info.name for h in self.path(sender8)[1:-1]) or "direct"
            self._emit(EventKind.PROBE_RESULT, node=member.info.name, rtt_ms=round(rtt_ms, 2), via=via)

    def _learn_reflexive(self, seen: tuple[str, int], now: float) -> None:
        """What a static peer's WireGuard sees as our source: translated by NAT or not (a
        firewalled host is reachable there only by hole punching, like a NATed one)."""
        if seen == self.local.reflexive:
            return
        self.local.reflexive = seen
        self._emit(EventKind.REFLEXIVE_ENDPOINT, endpoint=fmt_ep(seen))
        # others punch holes to it: an optimisation, like a shortcut link (see Links.up); before
        # our first links are announced, it goes with them
        if self._announces_links():
            self._schedule_publish(now, LINK_BATCH_DELAY)
        else:
            self._schedule_publish(now, FIRST_LINKS_WAIT if self.links.first_links_pending(now) else None)

    def _on_sync(self, inner: wire.Inner, sender8: bytes, src: tuple[str, int], now: float) -> None:
        self.gossip.on_sync(inner.body, src, now, inner.sender)

    def _on_digest(self, inner: wire.Inner, sender8: bytes, src: tuple[str, int], now: float) -> None:
        self.gossip.on_digest(inner.body, src, now, inner.sender)

    def _on_request(self, inner: wire.Inner, sender8: bytes, src: tuple[str, int], now: float) -> None:
        self.gossip.on_request(inner.body, src, now, inner.sender)

    def _on_connect(self, inner: wire.Inner, sender8: bytes, src: tuple[str, int], now: float) -> None:
        member = self.membership.get(sender8)
        if member is None or member.info.is_left:
            # its next CONNECT finds us ready (without this a rebooted static peer stayed alone).
            # One we list as left speaks again: it came back (``up``); its new record supersedes
            # the departure
            self.counters.count("drop_connect_unknown" if member is None else "drop_connect_left")
            self._ask_for_record(inner, sender8, src, now)
            return
        self.links.on_connect(sender8, *wire.parse_connect(inner.body), src, now)

    def _ask_for_record(self, inner: wire.Inner, sender8: bytes, src: tuple[str, int], now: float) -> None:
        """A node we do not know speaks to us (we restarted, the box rebooted, its record was
        lost): ask it for its record."""
        self.transport.send_to_addr(src, wire.REQUEST, wire.body_request([sender8]), now, inner.sender)

    def _on_connect_ack(self, inner: wire.Inner, sender8: bytes, src: tuple[str, int], now: float) -> None:
        self.links.on_connect_ack(sender8, wire.parse_connect_ack(inner.body), now)

    # ========================================================================= own record

    def _rand_unit(self) -> float:
        return int.from_bytes(self.random_bytes(4), "big") / 2**32

    def _wake_links(self, t: float) -> None:
        self.t_links = min(self.t_links, t)

    def _wake_gossip(self, t: float) -> None:
        self.t_gossip = min(self.t_gossip, t)

    def _schedule_publish(self, now: float, delay: float | None = None) -> None:
        """Soon after a change (or ``delay`` later), but not more than 4 times a second; after a
        restart not before our first look at the data plane (see dataplane_observed)."""
        if self._first_look:
            return
        spacing = PUBLISH_SPACING * max(1.0, len(self.links.links) / PUBLISH_SPACING_LINKS)
        due = max(now + (self.config.publish_interval if delay is None else delay), self._last_publish + spacing)
        self.t_publish = min(self.t_publish, due)

    def leave(self, now: float) -> None:
        """Leave the mesh (``wg_netmanager down``): a last version of our record says so (no
        links, no endpoints, FLAG_LEFT), sent at once to every node we link to (the static
        ones flood it) and gossiped; every node drops us on receipt, lists us as left and
        forgets us after membership.LEFT_KEEP. The runtime then tears the data plane down and
        stops feeding this core; coming back is a new core, whose record supersedes this one."""
        neighbours = sorted(i for i, link in self.links.links.items() if link.state == UP)
        self.left = True
        self._changed_links.clear()
        self._publish(now)
        flagged = wire.body_records([self.membership.get(self.id8).record.raw], wire.RECORDS_FLOOD)
        for id8 in neighbours:
            self.transport.send_both(id8, wire.RECORDS, flagged, now)
        for static in self.local.static_by_ip.values():  # (also those we have no link to)
            if static.overlay_ip != self.config.overlay_ip:
                self.transport.send_to_addr((static.host, static.admin_port), wire.RECORDS, flagged, now)

    def _announces_links(self) -> bool:
        me = self.membership.get(self.id8)
        return me is not None and bool(me.info.links or me.info.is_paged)

    def _own_info(self) -> NodeInfo:
        local = self.local
        endpoints = [Endpoint(EP_LAN, ip, local.wg_port, prefixlen) for ip, prefixlen in local.lan.addresses]
        if local.reflexive is not None:
            endpoints.append(Endpoint(EP_REFLEXIVE, local.reflexive[0], local.reflexive[1]))
        me = local.static_self
        if me is not None and not is_hostname(me.host):
            endpoints.append(Endpoint(EP_STATIC, me.host, me.wg_port))
        links = tuple(LinkClaim(link.peer, link.claimed_rtt, 0)
                      for link in sorted(self.links.links.values(), key=lambda x: x.peer) if link.state == UP)
        flags = FLAG_STATIC if local.is_static else 0
        if self.left:
            flags, endpoints, links = flags | FLAG_LEFT, [], ()
        return NodeInfo(local.wg_public_key, self.config.overlay_ip, local.wg_port, self.config.admin_port,
                        self.config.name, flags, tuple(endpoints[:MAX_ENDPOINTS]), links)

    def _publish(self, now: float) -> None:
        self._first_look = False  # (or it took too long: RESTART_FIRST_RECORD_WAIT)
        self.t_publish = INFINITY
        self._last_publish = now
        info = self._own_info()
        count = pages.page_count(info.links, self._page_count)
        shown = info if not count else replace(info, flags=info.flags | FLAG_PAGED, links=())
        current = self.membership.get(self.id8)
        node_changed = current is None or current.info != shown
        held = self.membership.pages
        new_pages = [] if not count else [
            (index, links) for index, links in enumerate(pages.split(info.links, count))
            if (h := held.get(wire.page_key(self.identity.public, index))) is None
            or h.page.count != count or h.page.links != links]
        if not node_changed and not new_pages:
            return
        self.version = max(self.version + 1, int(now * 1000))
        self.counters.count("records_published")
        self.routing.set_claims(self.id8, info.link_map)
        fresh: list[tuple[bytes, bytes]] = []  # (key, raw) of what is new, our record first
        if node_changed:
            record = wire.make_record(self.identity, self.version, wire.RECORD_NODE, wire.encode_node_info(shown))
            self.membership.set_own(record, shown, self.started, now)
            fresh.append((self.id8, record.raw))
        for index, links in new_pages:
            page = wire.LinkPage(index, count, links)
            record = wire.make_record(self.identity, self.version, wire.RECORD_LINKS, wire.encode_link_page(page))
            key = wire.page_key(self.identity.public, index)
            self.membership.set_own_page(key, record, page)
            fresh.append((key, record.raw))
        if not count and self._page_count:
            self.membership.drop_own_pages()
        self._page_count = count
        self._membership_changed(now)
        for key, _ in fresh:
            if info.links or self.local.is_static or self.left:  # (nobody can reach a node without links yet)
                self.gossip.make_hot(key, now, self.config.gossip_interval)
        self._schedule_paths(now, urgent=bool(self._changed_links))
        # a link change matters most to the link's other end: tell it at once; and hand the
        # record to one static neighbour, which floods it (a static node floods its own)
        changed = sorted(self._changed_links)
        self._changed_links.clear()
        primary = None
        if self.local.is_static:
            for key, _ in fresh:
                self.gossip.flood(key, None, now)
        else:
            statics = sorted(i for i, link in self.links.links.items() if link.static and link.state == UP)
            primary = statics[0] if statics else None
        raws = [raw for _, raw in fresh]
        for id8 in changed:  # the other end of a changed link needs our claim to use the link
            # (marked as our flood would be: as a hub's, it is handed on; see Gossip._hand_on)
            mine = raws if not count else [raw for key, raw in fresh if key == self.id8] + [
                held.get(wire.page_key(self.identity.public, wire.page_of(id8, count))).record.raw]
            self.transport.send_both(id8, wire.RECORDS, wire.body_records(
                mine, wire.RECORDS_FLOOD if id8 == primary or self.local.is_static else 0), now)
        if primary is not None and primary not in changed:
            addr = self.transport.addr_of(primary)
            if addr is not None:
                self.transport.send_records(addr, raws, now, "publish", self.membership.identity_of(primary),
                                            wire.RECORDS_FLOOD)

    # ========================================================================= paths

    def _schedule_paths(self, now: float, urgent: bool = False) -> None:
        if urgent:
            # at once, but a hub whose links change by the hundred batches them a little
            due = max(now, self._last_recompute + URGENT_PATHS_SPACING) \
                if len(self.links.links) > URGENT_SPACING_LINKS else now
            self.t_paths = min(self.t_paths, due)
        elif self.t_paths == INFINITY:
            spacing = PATHS_SPACING * max(1.0, len(self.membership.members) / PATHS_SPACING_MEMBERS)
            self.t_paths = max(now + self.config.path_debounce, self._last_recompute + spacing)

    def _recompute(self, now: float) -> None:
        """Paths (only if the link graph changed), then the data plane."""
        self.t_paths = INFINITY
        self._last_recompute = now
        changes = self.routing.update_paths()
        if changes is not None:
            self._paths_changed(*changes, now)
        self._build_dataplane(now)

    def _paths_changed(self, old_hops: Mapping[bytes, bytes], touched: list[bytes] | None, now: float) -> None:
        hops, members = self.routing.hops, self.membership.members
        reach_changed = old_hops.keys() ^ hops.keys()  # (nodes that became reachable or unreachable)
        if reach_changed:
            self._wake_links(now)
            mine, links = self.routing.graph.claims.get(self.id8, {}), self.links.links
            if any(id8 not in hops and id8 not in mine and id8 in links and links[id8].state == UP
                   for id8 in reach_changed):
                # a link held back as a shortcut (Links.up) is now the only way to its other end
                # (e.g. the other end rebooted: its new record claims only links that are new)
                self._schedule_publish(now)
        for id8 in sorted(reach_changed):
            member = members.get(id8)
            if member is not None:
                kind = EventKind.NODE_REACHABLE if id8 in hops else EventKind.NODE_UNREACHABLE
                self._emit(kind, node=member.info.name)
        for id8 in hops if touched is None else touched:
            hop = hops[id8]
            if old_hops.get(id8) not in (None, hop):
                self._emit(EventKind.PATH_CHANGED, node=members[id8].info.name,
                           via=members[hop].info.name if hop != id8 else "direct")

    def _build_dataplane(self, now: float) -> None:
        table = self.routing.table
        table.refresh(self.routing.hops)
        peers = self.links.desired_peers(now, self.observed, table.allowed)
        routes = table.routes
        clashes = self._underlay_clashes(peers)
        if clashes:
            peers, routes = _unrouted(peers, routes, clashes, self.local.subnet.max_prefixlen)
        if clashes.keys() != self.unrouted.keys():
            for ip in clashes.keys() - self.unrouted.keys():
                self.counters.count("route_refused_underlay")
                self.membership.refuse_route(ip, clashes[ip])
            self.unrouted = clashes
        plane = DataPlane(tuple(peers), routes)
        if plane != self.dataplane:
            self.dataplane = plane
            self.dataplane_version += 1
            self._planes[self.dataplane_version] = (frozenset(p.public_key for p in plane.peers), self.routing.hops)
            self._planes.pop(self.dataplane_version - PLANES_KEPT, None)

    def _underlay_clashes(self, peers: list) -> dict[str, str]:
        """Overlay addresses of routed nodes that are underlay addresses in use here
        (common.endpoints.collision): {overlay IP: why}. Such a node is left unrouted, as the
        helper would refuse the Apply. Costs a look at the endpoints only, unless one of them
        lies inside the overlay subnet (an overlay over its own LAN's range)."""
        endpoints = []
        for p in peers:
            endpoints.append(p.endpoint)
            obs = self.observed.get(p.public_key)
            if obs is not None and obs.endpoint:
                endpoints.append(obs.endpoint)  # (what the helper keeps when we send none)
        underlay = self.local.underlay_in_use(endpoints)
        if not underlay:
            return {}
        routed = self.routing.table.routed_ips()
        return {ip: why for ip, why in ((str(a), collision(a, underlay)) for a in underlay) if why and ip in routed}

    # ========================================================================= housekeeping

    def _membership_changed(self, now: float) -> None:
        """A record came or went: anti-entropy at its fast pace again (see SYNC_CALM_INTERVAL)."""
        self._sync_rounds = 0
        if self.t_sync > now + self.config.sync_interval:
            self.t_sync = now + self.config.sync_interval

    def _gc(self, now: float) -> None:
        self.links.probes.expire(now)
        for member in self.membership.collect(now, self.routing.hops):
            self._membership_changed(now)
            id8 = member.record.id8
            self.routing.forget(id8)
            self.links.links.pop(id8, None)
            self._emit(EventKind.NODE_FORGOTTEN, node=member.info.name)


def _unrouted(peers: list, routes: tuple, clashes: Mapping[str, str], prefixlen: int) -> tuple[list, tuple]:
    """The data plane without routes to (or via) the clashing addresses, and without them as
    allowed IPs."""
    gone = {f"{ip}/{prefixlen}" for ip in clashes}
    kept = tuple(r for r in routes if r.destination not in gone and r.gateway not in clashes)
    keep = {r.destination for r in kept}
    peers = [replace(p, allowed_ips=tuple(a for a in p.allowed_ips if a in keep)) for p in peers]
    return peers, kept


def _kept_claims(saved: Mapping) -> dict[bytes, int]:
    """The links' RTT claims from a saved state ({id8 hex: ms}); anything malformed is skipped
    (the state file is ours, but a damaged one must not stop the controller)."""
    claims = {}
    for key, rtt in saved.items():
        if isinstance(key, str) and len(key) == 2 * wire.ID8_LEN and type(rtt) is int and 0 < rtt <= 65535:
            try:
                claims[bytes.fromhex(key)] = rtt
            except ValueError:
                continue
    return claims
