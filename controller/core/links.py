"""Links: direct WireGuard peerings, their state machine, candidates and liveness.

A link is DOWN, ATTEMPTING (its peer configured, waiting for a handshake newer than the
attempt) or UP. Static links (one end a static peer) always exist: the non-static end
initiates and WireGuard retries by itself. Other pairs per the link policy: candidates in
order (a shared LAN, a nearby LAN behind the same public address, the reflexive endpoint -
hole punching, both ends sending - then a static endpoint), a few seconds each; failed pairs
back off. An UP link is probed by one end every second; no answer and no WireGuard rx
progress for a few seconds takes it DOWN.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

from wg_netmanager.common.endpoints import endpoint_refusal

from .. import wire
from ..wire import EP_LAN, EP_REFLEXIVE, EP_STATIC, NodeInfo
from .link import (
    ATTEMPT_RECHECK,
    ATTEMPTING,
    CONNECT_RETRY,
    DOWN,
    ENDPOINT_KINDS,
    EP_NEARBY,
    FIRST_LINKS_WAIT,
    FIRST_LINKS_WINDOW,
    HOLD_BACK,
    INFINITY,
    KEEPALIVE_BYTES,
    LINK_BATCH_DELAY,
    LINKS_RECHECK,
    MEASURED_WITHIN,
    NO_CANDIDATE_RETRY,
    PROBE_ALIGN,
    PROBE_TAKEOVER,
    QUIET_CHECK_PACE,
    QUIET_GRACE,
    READY_REPEAT,
    READY_WAIT,
    RESUME_WINDOW,
    RETRY_RECHECK,
    RTT_PUBLISH_DELAY,
    SESSION_LIFETIME,
    STALE_ATTEMPT,
    SUSPECT_PROBE,
    TRAFFIC_SLACK,
    TRAFFIC_WINDOW,
    UP,
    Link,
    live_session,
)
from .local import LocalNode, fmt_ep, parse_ep
from .membership import Member, Membership
from .probes import Probes
from .routes import Routing
from .transport import ADMIN_OVERHEAD, Transport
from .types import CoreConfig, Counters, DesiredPeer, EventKind, PeerObservation

#: how long after a link last carried traffic the data plane is still watched closely
BUSY_WATCH = 5.0
IDLE_STEPS = 2  # see Links.active


class Links:
    def __init__(self, config: CoreConfig, local: LocalNode, members: Membership, routing: Routing,
                 transport: Transport, counters: Counters, emit: Callable[..., None],
                 wake: Callable[[float], None], schedule_paths: Callable[..., None],
                 publish: Callable[..., None], changed: Callable[[bytes], None],
                 announces_links: Callable[[], bool], resync: Callable[[bytes, float], None],
                 links: dict[bytes, Link], now: float) -> None:
        self.config = config
        self.local = local
        self.members = members
        self.routing = routing
        self.transport = transport
        self.counters = counters
        self.emit = emit
        self.wake = wake  # run manage() no later than the given time
        self.schedule_paths = schedule_paths  # (now, urgent=False): the data plane must change
        self.publish = publish  # (now, delay=None): our record must change
        self.changed = changed  # a link of ours went up or down: tell its other end at once
        self.announces_links = announces_links
        self.resync = resync  # (peer, now): anti-entropy with a node at once
        self.links = links  # id8 -> Link (shared read-only with transport and gossip)
        self.attempting = False  # any link waiting for a handshake
        #: a link carried traffic recently: watch the data plane closely until then (see suspect)
        self.busy_until = 0.0
        self.probes = Probes(config, self.links, routing, transport, counters, publish)
        #: the RTT claims our links had when the last controller saved its state (see _adopt)
        self.kept_claims: dict[bytes, int] = {}
        self._budget = float(config.max_attempts_per_second)
        self._refill = now

    def get(self, id8: bytes) -> Link | None:
        return self.links.get(id8)

    # ------------------------------------------------------------------ which links

    def wants_link(self, info: NodeInfo, id8: bytes) -> bool:
        if id8 == self.local.id8 or info.is_left:
            return False
        if self.local.is_static or info.is_static:
            # (a link's roles follow the node's own word, its record's flag: it behaves as a
            # static peer, waiting for us to start, even where our net.yaml is older than
            # its; what we take from it as a hub follows LocalNode.is_hub)
            return True
        link = self.links.get(id8)
        if link is not None and link.pinned:
            return True
        if self.local.lan.shared_address(info) is not None:
            return True
        if self.config.link_policy == "static":
            return self.local.behind_same_nat(info)
        # a node with a LAN or public endpoint of its own could be reached directly
        return any(ep.kind in (EP_REFLEXIVE, EP_STATIC) for ep in info.endpoints)

    def ensure(self, member: Member, now: float) -> Link:
        id8 = member.record.id8
        link = self.links.get(id8)
        if link is None:
            info = member.info
            me, is_static = self.local.id8, self.local.is_static
            static = is_static or info.is_static
            if static:
                # the non-static end initiates (it may sit behind NAT); between two static peers the smaller id
                initiator = (not is_static) or (info.is_static and me < id8)
            else:
                initiator = me < id8
            link = self.links[id8] = Link(id8, static, initiator, retry_at=now)
            self.wake(now)
        return link

    def candidates(self, info: NodeInfo) -> list[tuple[tuple[str, int], tuple[str, int] | None, int]]:
        """Ordered (endpoint to reach the peer, endpoint the peer should use for us, kind)."""
        local, lan = self.local, self.local.lan
        out = []
        for ep in info.endpoints:
            if ep.kind == EP_LAN:
                mine = lan.on_my_lan(ep.address)
                if mine is not None:
                    out.append(((ep.address, ep.port), (mine, local.wg_port), EP_LAN))
        if lan.addresses and local.behind_same_nat(info):
            # one of the two LANs may be routed from the other (the original's second example:
            # a router on the home LAN with a LAN of its own). Hairpinning through the shared
            # public address mostly fails, so try the other end's LAN addresses, both ends
            # sending: the end that can reach the other gets through, and WireGuard answers
            # to wherever the handshake came from.
            for ep in info.endpoints:
                if ep.kind == EP_LAN and lan.on_my_lan(ep.address) is None:
                    out.append(((ep.address, ep.port), (lan.addresses[0][0], local.wg_port), EP_NEARBY))
        mine_public = local.public_endpoint()
        # through NAT both ends must send (hole punching): without our own public endpoint
        # the other end could not, so such candidates wait until a static peer told us ours
        if mine_public is not None:
            for ep in info.endpoints:
                if ep.kind in (EP_REFLEXIVE, EP_STATIC):
                    out.append(((ep.address, ep.port), mine_public, ep.kind))
        static = local.static_by_ip.get(info.overlay_ip)
        if static is not None and (mine_public is not None or not out):
            out.append(((static.host, static.wg_port), mine_public, EP_STATIC))
        unique, seen = [], set()
        for cand in out:  # an un-NATed node's reflexive endpoint is its LAN address: try once
            if cand[0] not in seen:
                seen.add(cand[0])
                if self._usable(cand[0]):
                    unique.append(cand)
        return unique

    def _usable(self, endpoint: tuple[str, int]) -> bool:
        """Whether the helper would take this endpoint (the same rule, common/endpoints.py): a
        record that advertises loopback or broadcast must not make every Apply fail; nor one that
        advertises a node's overlay address (where the overlay subnet contains underlay
        addresses: that node's route would have to go, common.endpoints.collision)."""
        try:
            addr = ipaddress.ip_address(endpoint[0])
        except ValueError:
            addr = None
        if addr is None or endpoint_refusal(addr, endpoint[1]) is not None or \
                endpoint[0] in self.members.bindings or endpoint[0] == self.local.overlay_ip:
            self.counters.count("endpoint_refused")
            return False
        return True

    # ------------------------------------------------------------------ attempts

    def start_attempt(self, link: Link, member: Member, now: float) -> None:
        link.candidates = self.candidates(member.info)
        if link.static and not link.initiator:
            # the static side configures the peer, tells the other end it may start the
            # handshake (once applied), and waits for it
            cand = link.candidates[0] if link.candidates else None
            link.begin_attempt(now, fmt_ep(cand[0]) if cand and cand[2] == EP_LAN else "", cand[2] if cand else 0,
                               wire.body_connect((link.attempt + 1) & 0xFFFFFFFF, None, None))
            self.attempting = True
            self.schedule_paths(now)
            return
        if not link.candidates:
            link.retry_at = now + NO_CANDIDATE_RETRY  # e.g. our public endpoint is not known yet: look again soon
            return
        link.candidate_index = 0
        self.try_candidate(link, member, now)

    def try_candidate(self, link: Link, member: Member, now: float) -> None:
        link.held_back_done = False
        fresh = self.candidates(member.info)
        if len(fresh) == len(link.candidates):
            link.candidates = fresh
        reach, mine, kind = link.candidates[link.candidate_index]
        attempt = (link.attempt + 1) & 0xFFFFFFFF
        # sent by applied() once WireGuard has the peer. To a static peer it only says
        # "starting over": one that still has us configured answers "ready" at once
        body = wire.body_connect(attempt, None, None) if link.static else wire.body_connect(attempt, mine, reach)
        link.begin_attempt(now, fmt_ep(reach), kind, body)
        link.note(now, "attempt", f"{link.endpoint} ({ENDPOINT_KINDS.get(kind, kind)}, candidate "
                                  f"{link.candidate_index + 1} of {len(link.candidates)})")
        self.attempting = True
        self.emit(EventKind.LINK_ATTEMPT, node=member.info.name, endpoint=link.endpoint, role="initiator")
        self.schedule_paths(now)

    def failed(self, link: Link, member: Member, now: float, why: str) -> None:
        was_up = link.state == UP
        link.went_down(now, self.config.retry_max)
        link.last_failure = why
        link.note(now, "down" if was_up else "attempt failed", why)
        if was_up:
            self.emit(EventKind.LINK_DOWN, node=member.info.name, reason=why)
            self.changed(link.peer)
            self.publish(now)
        else:
            self.counters.count("link_attempt_failed")
        self.schedule_paths(now)

    def up(self, link: Link, member: Member, now: float) -> None:
        back_to_hub = link.static and link.ever_up and not self.local.is_static
        link.went_up(now)
        if back_to_hub:
            # what the static peer flooded while our link to it was down (a static peer that
            # rebooted floods its new record, and hands others' on, as its links come back)
            # reached us only if another hub's or a neighbour's copy did: ask now, not at
            # anti-entropy's next round
            self.resync(link.peer, now)
        link.note(now, "up", link.endpoint)
        self.emit(EventKind.LINK_UP, node=member.info.name, endpoint=link.endpoint)
        self.changed(link.peer)
        self.wake(now)  # probe it at once (a static peer's answer tells our public endpoint)
        # a link that may be the first way to reach one of its ends is announced at once: we
        # announce no link yet, or the other end has no other (mutual) link (a static peer that
        # rebooted has none until its links come back). Any other link only
        # shortens paths: it waits for the next batch (a node's links come up one by one, and
        # each version of its record costs every node of the mesh)
        if not self.announces_links():
            # our first links: those to static peers and LAN neighbours still being attempted
            # (started with the others: they take a round trip or two), and our public endpoint
            # (a static peer's probe answer tells it), may make the same version
            pending = self.first_links_pending(now)
            if self.local.public_endpoint() is None and any(other.static and other.state == UP
                                                    for other in self.links.values()):
                # (a static peer's answer to our probe may come before its WireGuard showed it
                # our endpoint: wait longer; learning it brings the record forward, see
                # Core._learn_reflexive)
                self.publish(now, FIRST_LINKS_WINDOW)
            else:
                self.publish(now, FIRST_LINKS_WAIT if pending else None)
            return
        # (a link back to a static peer is no shortcut: the static peer that rebooted has none of
        # its old links, whatever its old record still claims here)
        shortcut = not back_to_hub and link.peer in self.routing.hops and \
            bool(self.routing.graph.edges.get(link.peer, {}).keys() - {self.local.id8})
        self.publish(now, LINK_BATCH_DELAY if shortcut else None)

    def first_links_pending(self, now: float) -> bool:
        """Links to static peers and LAN neighbours still being attempted (started with the
        others: they take a round trip or two): our first links wait for them."""
        return any(other.state == ATTEMPTING and now - other.attempt_started < FIRST_LINKS_WINDOW
                   and (other.static or other.endpoint_kind == EP_LAN) for other in self.links.values())

    # ------------------------------------------------------------------ policies

    def active(self, link: Link, now: float) -> bool:
        """Whether the link is kept alive (keepalive + probes) - the idle policy."""
        if link.static or link.pinned or self.config.link_policy == "all":
            return True
        # decided on a grid of our clock (steps of idle_timeout / IDLE_STEPS), not per link:
        # the links whose traffic stopped within one step fall idle together, and their
        # keepalives go in one Apply, not one each; a link falls idle between idle_timeout and
        # idle_timeout * (1 + 1 / IDLE_STEPS) after its last traffic
        step = self.config.idle_timeout / IDLE_STEPS
        return link.last_traffic > now - now % step - self.config.idle_timeout

    def wants_keepalive(self, link: Link, now: float) -> bool:
        """Who sends persistent keepalives: exactly one side of a link, so that handshakes
        never start from both ends at once (they can stall each other until WireGuard's
        5 s retry)."""
        if link.static:
            # the non-static end (it may be behind NAT), once the static end has us configured
            return link.initiator and (link.peer_ready or link.state == UP)
        if link.state == ATTEMPTING:
            if link.endpoint_kind == EP_REFLEXIVE and self.holds_back(link, now):
                return False
            if link.endpoint_kind == EP_NEARBY and link.initiator and not link.held_back_done:
                return False  # a second for the other end to configure us: it cannot send first
            # the side that configured the peer last (the responder) starts the handshake;
            # the initiator also sends when punching NAT, to open its own mapping, and to a
            # nearby LAN that may be reachable only from its side
            return (not link.initiator) or link.endpoint_kind in (EP_REFLEXIVE, EP_NEARBY)
        # up: the initiator keeps active links (and NAT mappings) alive
        return link.initiator and (self.active(link, now) or link.endpoint_kind == EP_REFLEXIVE)

    @staticmethod
    def _behind_nat(reflexive: tuple[str, int] | None, lan: set[str]) -> bool:
        return reflexive is not None and reflexive[0] not in lan

    def holds_back(self, link: Link, now: float) -> bool:
        """Hole punching between an untranslated node (public, maybe firewalled) and a NATed one:
        the NATed side must send first. A packet from outside that reaches a NAT before the inside
        sent creates a conntrack entry on the router that then blocks the inside's mapping. So the
        untranslated side waits a second; the NATed side's first packets only die at a firewall."""
        if now - link.attempt_started >= HOLD_BACK:
            return False
        mine = self._behind_nat(self.local.reflexive, self.local.lan.ips())
        member = self.members.get(link.peer)
        if member is None or mine:
            return False
        ref = next(((e.address, e.port) for e in member.info.endpoints if e.kind == EP_REFLEXIVE), None)
        return self._behind_nat(ref, {e.address for e in member.info.endpoints if e.kind == EP_LAN})

    # ------------------------------------------------------------------ the data plane

    def desired_peers(self, now: float, observed: Mapping[bytes, PeerObservation],
                      allowed: Mapping[bytes, tuple[str, ...]]) -> list[DesiredPeer]:
        """A WireGuard peer per link that is not DOWN, sorted by key."""
        peers = []
        for id8, link in self.links.items():
            member = self.members.get(id8)
            if member is None or link.state == DOWN:
                continue  # (removed; a retry adds it again, which forces a fresh handshake)
            obs = observed.get(member.info.wg_public_key)
            endpoint = link.endpoint
            if obs is not None and obs.endpoint and obs.last_handshake and \
                    now - obs.last_handshake < SESSION_LIFETIME:
                endpoint = obs.endpoint  # what WireGuard uses now (it roams); do not fight it
            keepalive = self.config.keepalive if self.wants_keepalive(link, now) else 0
            peers.append(DesiredPeer(member.info.wg_public_key, endpoint, allowed.get(id8, ()), keepalive))
        peers.sort(key=lambda p: p.public_key)
        return peers

    def applied(self, peer_keys: frozenset[bytes], now: float) -> None:
        """A data plane with the peers ``peer_keys`` was applied: retries wait for a removal;
        CONNECT (asking the other end to start the handshake) waits for the peer."""
        for id8, link in self.links.items():
            if link.state == DOWN and not link.removal_applied:
                member = self.members.get(id8)
                if member is None or member.info.wg_public_key not in peer_keys:
                    link.removal_applied = True
                    self.wake(now)
            if link.connect_due and link.state == ATTEMPTING:
                member = self.members.get(id8)
                if member is not None and member.info.wg_public_key in peer_keys:
                    link.connect_due = False
                    link.connect_sent = now
                    if link.static:
                        me = self.members.get(self.local.id8)
                        if link.initiator and me is not None:  # the static end may not know us yet
                            self.transport.send_both(id8, wire.RECORDS, wire.body_records([me.record.raw]), now)
                        self.transport.send_both(id8, wire.CONNECT, link.connect_body, now)
                    else:
                        self.transport.send(id8, wire.CONNECT, link.connect_body, now)

    def observed(self, peers: Mapping[bytes, PeerObservation], now: float) -> None:
        for link in list(self.links.values()):
            member = self.members.get(link.peer)
            if member is None:
                continue
            obs = peers.get(member.info.wg_public_key)
            if obs is not None:
                self._observe(link, member, obs, now)

    def _observe(self, link: Link, member: Member, obs: PeerObservation, now: float) -> None:
        if link.last_rx >= 0:
            drx = obs.rx_bytes - link.last_rx
            dtx = obs.tx_bytes - link.last_tx
            if drx > 0:
                # the tunnel carries packets from the peer: the data plane is alive, even when its
                # controller is not (our probes then come back as ICMP port unreachable)
                link.last_rx_progress = now
                link.suspect_since = 0.0
            # traffic is judged over windows of a second whatever the observations' pace (a
            # rekey's handshake or a keepalive within 0.2 s is not traffic)
            link.window_bytes += drx + dtx
            if now - link.window_start >= TRAFFIC_WINDOW:
                if link.window_bytes > link.admin_bytes * 2 + TRAFFIC_SLACK:
                    if link.quiet(now):  # (quiet's silence is not held against it now: see woke_at)
                        link.woke_at = now
                        self.wake(now)  # probed as a used link from now on
                    link.last_traffic = now
                    if link.silenced:  # (an idle link used again: kept alive again)
                        link.silenced = False
                        self.schedule_paths(now)
                        self.wake(now)
                    self.busy_until = max(self.busy_until, now + BUSY_WATCH)
                link.window_bytes = link.admin_bytes = 0
                link.window_start = now
            if drx == 0 and dtx > link.admin_tx + KEEPALIVE_BYTES and self._may_suspect(link, now):
                # traffic went out and nothing came back: probe fast until the peer answers, or
                # give up (probes alone are not enough: a busy controller answers late)
                link.suspect_since = now
                self.counters.count("links_suspected")
                self.probe_soon(link, now, 0.0)
            link.admin_tx = 0
            if link.state == UP and dtx > 0 and now - obs.last_handshake > SESSION_LIFETIME:
                # sending into an expired session: WireGuard cannot get a handshake through
                if link.tx_stalled_since == 0:
                    link.tx_stalled_since = now
                elif now - link.tx_stalled_since > self.config.attempt_timeout:
                    self.failed(link, member, now, "handshake failed after idle")
            else:
                link.tx_stalled_since = 0.0
        link.last_rx, link.last_tx = obs.rx_bytes, obs.tx_bytes
        fresh = obs.last_handshake > 0 and now - obs.last_handshake < SESSION_LIFETIME
        # a live session the data plane kept from before our own start (a controller restart)
        kept = not link.ever_up and link.fails == 0 and live_session(obs.last_handshake, now)
        if link.state == DOWN and kept:
            self._adopt(link, member, obs, now)
            return
        if link.state != ATTEMPTING or not fresh:
            return
        # a handshake after the attempt began proves the path; so does, for the first attempt
        # after our own start, a kept session (begun before our first look at the data plane,
        # as a static peer's is: up with the claim it had, as _adopt does)
        if obs.last_handshake >= link.attempt_started - 0.001 or kept:
            if obs.endpoint:
                link.endpoint = obs.endpoint
            if kept:
                link.rtt_hint = self.kept_claims.get(link.peer) or link.rtt_hint
            self.up(link, member, now)

    def _may_suspect(self, link: Link, now: float) -> bool:
        """Silence from a link's other end means something only while both ends route over it:
        not while the mesh re-forms around us after our own clock jump (the other ends gave up
        links to us meanwhile and may send their traffic, and our probes' answers, another way;
        the chaos bench showed a resumed node lose every link at once)."""
        return link.state == UP and not link.suspect_since and self.routing.direct(link.peer) and \
            self.active(link, now) and now - self.probes.resumed_at > RESUME_WINDOW

    def _adopt(self, link: Link, member: Member, obs: PeerObservation, now: float) -> None:
        """A live WireGuard session we never set up: our controller restarted and the data plane
        kept the link. It is up as it was (the claim it had, if we kept it): our first record
        claims what our last one did, and the first Apply changes nothing that is still wanted."""
        link.endpoint = obs.endpoint
        host = ep[0] if (ep := parse_ep(obs.endpoint)) else ""
        link.endpoint_kind = EP_LAN if host and self.local.lan.on_my_lan(host) else \
            EP_STATIC if member.info.is_static else EP_REFLEXIVE
        link.rtt_hint = self.kept_claims.get(link.peer, 0)
        self.counters.count("links_adopted")
        self.up(link, member, now)

    # ------------------------------------------------------------------ the timer

    def manage(self, now: float) -> float:
        """Start, time out and probe links; returns when to run again."""
        cfg = self.config
        self._budget = min(float(cfg.max_attempts_per_second),
                           self._budget + (now - self._refill) * cfg.max_attempts_per_second)
        self._refill = now
        next_t = now + LINKS_RECHECK  # (everything with a time of its own says so below)
        for id8, link in list(self.links.items()):
            member = self.members.get(id8)
            if member is None:
                del self.links[id8]
                continue
            if not self.wants_link(member.info, id8):
                if link.state == UP:
                    self.publish(now)
                del self.links[id8]
                self.schedule_paths(now)
                continue
            if link.state == DOWN:
                next_t = min(next_t, self._retry(link, member, now))
            elif link.state == ATTEMPTING:
                next_t = min(next_t, self._attempting(link, member, now))
            elif link.state == UP:
                next_t = min(next_t, self._keep(link, member, now))
        self.attempting = any(link.state == ATTEMPTING for link in self.links.values())
        return next_t

    def _retry(self, link: Link, member: Member, now: float) -> float:
        if not (link.initiator or link.static):
            return INFINITY  # the other end starts attempts
        if not link.static and link.peer not in self.routing.hops and self.transport.lan_admin_addr(member) is None:
            return INFINITY  # a CONNECT could not reach it yet; paths will change and wake us
        if not link.removal_applied:
            return INFINITY  # applied() wakes us
        if now >= link.retry_at and (link.static or self._budget >= 1):
            if not link.static:
                self._budget -= 1  # CONNECT + handshakes: rate-limited
            self.start_attempt(link, member, now)
            return now + ATTEMPT_RECHECK
        return max(link.retry_at, now + RETRY_RECHECK)

    def _attempting(self, link: Link, member: Member, now: float) -> float:
        timeout = self.config.attempt_timeout * (1 if link.initiator else 2)
        if link.static:
            timeout = INFINITY  # WireGuard retries the handshake every 5 s by itself
        if now - link.attempt_started > timeout:
            if link.initiator and link.candidate_index + 1 < len(link.candidates):
                link.candidate_index += 1
                self.try_candidate(link, member, now)
            else:
                self.failed(link, member, now, "no handshake")
            return INFINITY
        next_t = link.attempt_started + timeout + 0.001
        if link.endpoint_kind in (EP_REFLEXIVE, EP_NEARBY) and not link.held_back_done:
            if now - link.attempt_started >= HOLD_BACK:
                link.held_back_done = True
                self.schedule_paths(now, urgent=True)  # keepalive on now
            else:
                next_t = min(next_t, link.attempt_started + HOLD_BACK + 0.001)
        if link.static and not link.initiator and link.connect_sent:
            if now - link.connect_sent >= READY_REPEAT:  # "ready": until the handshake arrives
                link.connect_sent = now
                self.transport.send_both(link.peer, wire.CONNECT, link.connect_body, now)
            next_t = min(next_t, link.connect_sent + READY_REPEAT)
        elif link.connect_sent and not link.connect_acked:
            if now - link.connect_sent >= CONNECT_RETRY:  # the CONNECT or its ack was lost
                link.connect_sent = now
                if link.static:
                    # as the first one went (see applied): a static peer that rebooted has no
                    # WireGuard peers yet, so one sent through the overlay (via a relay) is lost
                    self.transport.send_both(link.peer, wire.CONNECT, link.connect_body, now)
                else:
                    self.transport.send(link.peer, wire.CONNECT, link.connect_body, now)
            next_t = min(next_t, link.connect_sent + CONNECT_RETRY)
        if link.static and link.initiator and not link.peer_ready and now - link.attempt_started > READY_WAIT:
            link.peer_ready = True
            self.schedule_paths(now)
        elif link.static and link.initiator and not link.peer_ready:
            next_t = min(next_t, link.attempt_started + READY_WAIT + 0.001)
        return next_t

    def _keep(self, link: Link, member: Member, now: float) -> float:
        interval = self.config.probe_interval
        direct = self.routing.direct(link.peer)
        if direct and link.used_since == 0:
            link.used_since = now
        if not self.active(link, now):
            link.used_since = 0.0
            if not link.silenced:  # it just went idle: its persistent keepalive goes too
                link.silenced = True
                self.schedule_paths(now)
            return INFINITY
        link.silenced = False
        alive_since = max(link.last_ack, link.last_probe_rx, link.used_since, link.last_rx_progress,
                          link.up_since if not direct else 0, self.probes.resumed_at, link.woke_at)
        grace = self.config.attempt_timeout * 2 if not direct else self.config.link_down_after
        quiet = link.quiet(now) and link.last_ack >= self.probes.resumed_at  # (after our clock jumped: ask now)
        if quiet:
            grace = link.quiet_interval() + QUIET_GRACE
        if now - alive_since > grace:
            self.failed(link, member, now, "probes unanswered")
            return INFINITY
        if link.suspect_since and direct:
            deadline = max(link.suspect_since, alive_since) + link.suspect_grace()
            if now >= deadline:
                self.failed(link, member, now, "no answer while traffic flows")
                return INFINITY
            if now >= link.next_probe - 0.001:
                link.next_probe = now + SUSPECT_PROBE
                self.probes.send(link.peer, now)
            return min(link.next_probe, deadline)
        link.suspect_since = 0.0
        if quiet:
            # nobody uses it: a proof of life now and then is enough (see QUIET_PROBE). Silence
            # counts from the proof's due time; until an answer comes, asks are repeated
            # (due from the last probe exchange, which both ends see within an RTT of each
            # other, rather than from what each observed of the data plane: else the answering
            # end, observing a second late, would take over)
            exchange = max(link.last_ack, link.last_probe_rx, link.up_since, link.woke_at, self.probes.resumed_at)
            due = exchange + link.quiet_interval()
            if now < due - 0.001:
                return due
            if link.initiator or now - due > QUIET_CHECK_PACE:
                if now >= link.next_probe - 0.001:
                    link.next_probe = now + QUIET_CHECK_PACE
                    self.probes.send(link.peer, now)
                return link.next_probe
            return due + QUIET_CHECK_PACE + 0.001
        # one end probes (the initiator); the other answers, and probes itself only when the
        # other end's probes stop coming (it may have died, or gone idle)
        if link.initiator or now - link.last_probe_rx > PROBE_TAKEOVER * interval:
            if now >= link.next_probe - PROBE_ALIGN * interval:
                link.next_probe = now + interval
                self.probes.send(link.peer, now)
            return link.next_probe
        return link.last_probe_rx + PROBE_TAKEOVER * interval + 0.001

    # ------------------------------------------------------------------ CONNECT

    def on_connect(self, sender8: bytes, attempt: int, you_use, i_use, src, now: float) -> None:
        member = self.members.get(sender8)
        if member is None or not self.wants_link(member.info, sender8):
            self.counters.count("drop_connect_unwanted")
            return
        link = self.ensure(member, now)
        send_to_addr = self.transport.send_to_addr
        if link.static:
            # the static end has us configured: our handshake will not be dropped now
            send_to_addr(src, wire.CONNECT_ACK, wire.body_connect_ack(attempt), now, member.identity)
            if not link.initiator and link.state == ATTEMPTING and link.connect_sent and attempt:
                # our attempt's peer is applied and the other end is there now (it rebooted while
                # we started over): our "ready" goes at once, not at its next repeat (its
                # handshake waits for it: a home box's reboots took 1.8 s for that here)
                link.connect_sent = now
                send_to_addr(src, wire.CONNECT, link.connect_body, now, member.identity)
            if not link.initiator and link.state == UP and attempt:
                # the other end starts over (it moved, or restarted) while we still have it
                # configured: say so at once rather than let it wait for a CONNECT of ours.
                # Its link went down and forgot what it measured: so does ours (an RTT claim
                # inflated by a pause would otherwise outlive every new up period of the other
                # end, and keep the pair on a relay)
                send_to_addr(src, wire.CONNECT, wire.body_connect(0, None, None), now, member.identity)
                if link.rtt:
                    link.rtt = 0.0
                    fresh = link.default_claim()
                    if link.claimed_rtt > fresh:
                        link.claimed_rtt = fresh
                        self.publish(now, RTT_PUBLISH_DELAY)
            if link.initiator and link.state == ATTEMPTING and now - link.attempt_started > STALE_ATTEMPT:
                # it was away (rebooted) while we kept trying: our WireGuard's handshake is in its
                # 5 s back-off. A fresh peer (and a new attempt) handshakes at once
                self.counters.count("attempts_refreshed")
                link.start_over(now, peer_gone=False)
                link.peer_ready = True  # (it has us configured: it just said so)
                self.wake(now)
                self.schedule_paths(now)
            elif link.initiator and link.state == UP and attempt and now - link.up_since > READY_REPEAT:
                # its "ready" while our link is up: it started over (after a pause or a restart)
                # with a fresh WireGuard peer for us, where our session is gone. So do we
                self.failed(link, member, now, "the static end started over")
            elif link.initiator and not link.peer_ready:
                link.peer_ready = True
                self.schedule_paths(now)
            return
        if link.initiator:
            if attempt == 0:  # a nudge from the other end (its Connect): retry now
                if link.state == DOWN:
                    link.retry_at = now
                    link.fails = 0
                    self.wake(now)
                return
            # both think they initiate (views differ): the smaller id wins
            if self.local.id8 < sender8:
                self.counters.count("drop_connect_role")
                return
            link.initiator = False
        if link.state == UP and attempt <= link.attempt:
            return
        if link.state == ATTEMPTING and attempt == link.attempt:  # a retransmission
            send_to_addr(src, wire.CONNECT_ACK, wire.body_connect_ack(attempt), now, member.identity)
            return
        kind = EP_REFLEXIVE if you_use and member.info.endpoints and any(
            e.kind == EP_REFLEXIVE and (e.address, e.port) == you_use for e in member.info.endpoints) else EP_LAN
        link.answer_attempt(attempt, now, fmt_ep(you_use) if you_use else "", kind)
        link.note(now, "answering an attempt", link.endpoint)
        self.attempting = True
        self.wake(now)  # its hold-back and timeout are timed from now (the tick may be seconds away)
        send_to_addr(src, wire.CONNECT_ACK, wire.body_connect_ack(attempt), now, member.identity)
        self.emit(EventKind.LINK_ATTEMPT, node=member.info.name, endpoint=link.endpoint, role="responder")
        self.schedule_paths(now)

    def on_connect_ack(self, sender8: bytes, attempt: int, now: float) -> None:
        link = self.links.get(sender8)
        if link is not None and link.attempt == attempt:
            if link.static and link.connect_sent and not link.connect_acked:
                # to or from a static peer CONNECT crosses the same hosts and NATs as the
                # tunnel will: a first RTT for the link's claim (probes refine it)
                link.rtt_hint = max(1, round((now - link.connect_sent) * 1000))
            link.connect_acked = True

    # ------------------------------------------------------------------ probes

    def resumed(self, now: float) -> None:
        """Our clock jumped (a pause, a suspend): nothing is declared down for the silence; every
        link that was up is probed at once and has the usual grace from now."""
        self.probes.resumed_at = now
        for link in self.links.values():
            if link.state == UP:
                link.next_probe = now
        self.wake(now)

    def probe_soon(self, link: Link, now: float, delay: float = 0.1) -> None:
        link.next_probe = min(link.next_probe, now + delay)
        self.wake(now + delay)

    def probe_received(self, sender8: bytes, overlay: bool, mtype: int, now: float) -> None:
        """Any datagram from ``sender8``: admin traffic over its link; a probe over the tunnel
        shows the other end measures the link."""
        link = self.links.get(sender8)
        if link is None:
            return
        if link.state == UP and self.routing.direct(sender8):
            link.admin_bytes += ADMIN_OVERHEAD
            if overlay and mtype == wire.PROBE:
                link.last_probe_rx = now
        elif link.state == DOWN and link.lost:
            # it went silent and speaks again (it was paused, or its box restarted): retry now
            link.lost = False
            if link.retry_at > now:
                link.retry_at = now
                link.fails = 0
                self.wake(now)

    def follow_claim(self, id8: bytes, claims: Mapping[bytes, int], now: float) -> None:
        """The other end measures our link (its probes arrive): claim what it measured (edges
        use the max of both ends' claims)."""
        link = self.links.get(id8)
        measured = MEASURED_WITHIN * (link.quiet_interval() if link is not None and link.quiet(now)
                                      else self.config.probe_interval)
        if link is not None and link.state == UP and now - link.last_probe_rx < measured:
            theirs = claims.get(self.local.id8, 0)
            if theirs and link.rtt_claim_moved(theirs):  # (an UP link's claim is never 0)
                link.claimed_rtt = theirs
                self.publish(now, RTT_PUBLISH_DELAY)

    # ------------------------------------------------------------------ commands

    def pin(self, member: Member, now: float) -> None:
        """A direct link to ``member``: attempted now, never idled."""
        link = self.ensure(member, now)
        link.pinned = True
        if link.state == DOWN:
            link.retry_at = now
            if not link.initiator and not link.static:
                # the other end starts attempts: nudge it (attempt 0 = "try now")
                self.transport.send(link.peer, wire.CONNECT, wire.body_connect(0, None, None), now)
        self.wake(now)

    def addresses_lost(self, now: float) -> None:
        """Some of our own addresses went away: every link starts over at once (see
        Core.set_lan_endpoints)."""
        for id8, link in self.links.items():
            member = self.members.get(id8)
            if member is None or link.state == DOWN:
                continue
            host = ep[0] if (ep := parse_ep(link.endpoint)) else ""
            left = link.endpoint_kind == EP_NEARBY or (link.endpoint_kind == EP_LAN and host and
                                                       self.local.lan.on_my_lan(host) is None)
            self.failed(link, member, now, "left the LAN" if left else "own address changed")
            link.fails = 0
            link.retry_at = now + (1.0 if left else 0.0)  # new candidates once our public endpoint is known
        self.wake(now)

    def static_peers_changed(self) -> None:
        """Re-resolved static peers: new endpoints for links still being set up."""
        for id8, link in self.links.items():
            member = self.members.get(id8)
            static = self.local.static_by_ip.get(member.info.overlay_ip) if member else None
            if static is not None and link.initiator and link.state != UP:
                link.endpoint = fmt_ep((static.host, static.wg_port))

    def dropped_by_peer(self, id8: bytes, now: float) -> None:
        """The other end no longer claims our link. Right after a pause of ours that means it
        took the link down meanwhile (and its WireGuard peer for us with it): our view is the
        older one, and ours follows at once instead of waiting for probes to time out. At any
        other time it may just have restarted (its first record claims no links yet, its data
        plane still has us): probes decide."""
        link = self.links.get(id8)
        member = self.members.get(id8)
        if link is not None and member is not None and link.state == UP and \
                now - self.probes.resumed_at < RESUME_WINDOW:
            self.failed(link, member, now, "dropped by the other end")

    def explain(self, member: Member, now: float) -> tuple[dict | None, str]:
        """The direct link to ``member`` as `wg_netmanager why` shows it, and in one sentence
        why there is a direct path to it or not (from the link's state, not from logs)."""
        id8 = member.record.id8
        link = self.links.get(id8)
        if link is None:
            info = member.info
            if info.is_left:
                return None, "it left the mesh (wg_netmanager down)"
            if not self.wants_link(info, id8):
                if self.config.link_policy == "static":
                    return None, ("link policy 'static': direct links only to static peers, LAN neighbours "
                                  "and pinned nodes (wg_netmanager connect pins one)")
                return None, "no direct link to try: it has no endpoint of its own we could reach (behind NAT, " \
                             "no NAT-mapped endpoint known yet)"
            return None, "no link yet (one is set up at the next look)"
        history = [{"ago_s": round(now - t, 1), "what": what, "detail": detail} for t, what, detail in link.history]
        out = {"state": str(link.state), "endpoint": link.endpoint,
               "endpoint_kind": ENDPOINT_KINDS.get(link.endpoint_kind, ""), "static": link.static,
               "initiator": link.initiator, "pinned": link.pinned, "failures": link.fails,
               "last_failure": link.last_failure, "candidates": [fmt_ep(c[0]) for c in link.candidates],
               "rtt_ms": round(link.rtt, 1) if link.rtt else None, "claimed_rtt_ms": link.claimed_rtt or None,
               "up_for_s": round(now - link.up_since, 1) if link.state == UP else None,
               "next_attempt_in_s": round(max(0.0, link.retry_at - now), 1) if link.state == DOWN and (
                   link.initiator or link.static) else None,
               "idle": link.state == UP and not self.active(link, now), "quiet": link.state == UP and link.quiet(now),
               "history": history}
        if link.state == UP:
            if not self.active(link, now):
                reason = f"direct link idle (no traffic for {round(now - link.last_traffic)} s): silent until used"
            else:
                reason = "direct link up" + (" (quiet: no traffic)" if link.quiet(now) else "")
        elif link.state == ATTEMPTING:
            reason = f"attempting a direct link via {link.endpoint or '?'} for {round(now - link.attempt_started, 1)} s"
        elif not (link.initiator or link.static):
            reason = "the other end starts attempts" + (f"; the last failed: {link.last_failure}"
                                                         if link.last_failure else "")
        else:
            reason = (f"direct link down ({link.last_failure or 'not tried yet'}); next attempt in "
                      f"{max(0.0, link.retry_at - now):.0f} s" + (f" (failure {link.fails}, backing off)"
                                                                 if link.fails > 1 else ""))
        return out, reason

    def left(self, id8: bytes, now: float) -> None:
        """The node left the mesh (its signed departure): its link goes now, not after probes."""
        link = self.links.pop(id8, None)
        if link is not None:
            if link.state == UP:
                self.changed(id8)
                self.publish(now)
            self.schedule_paths(now, urgent=True)

    def key_rotated(self, id8: bytes, now: float) -> None:
        link = self.links.get(id8)
        if link is not None and link.state != DOWN:
            if link.state == UP:
                self.changed(id8)
                self.publish(now)
            link.start_over(now, peer_gone=True)
            self.wake(now)
