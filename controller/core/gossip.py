"""Dissemination of records: bootstrap, hubs flooding, gossip of hot records, anti-entropy
with a direct neighbour, and introductions of nodes behind one public address.

Every node links to every static node, so static nodes are hubs: a hub hands each new record
to those of its neighbours that whoever sent it to the hub does not reach directly (it knows
everyone's links from their signed records); an ordinary node hands what a hub floods on once
more, to its neighbours the hub has no link to (a hub that rebooted, links coming back). Every
node pushes its own new versions to one static neighbour and gossips them to a few random
nodes; anti-entropy repairs what was lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .. import wire
from .link import UP
from .local import LocalNode
from .membership import Membership
from .routes import Routing
from .transport import Transport

#: a hub collects new records this long before handing them on, longer with many neighbours
FLOOD_BATCH = 0.02
FLOOD_BATCH_MAX = 0.1
FLOOD_BATCH_NEIGHBOURS = 200
#: how many nodes behind one public address a static peer introduces to a newcomer
MAX_INTRODUCTIONS = 64
#: introductions waiting for the newcomer's address to be validated
MAX_INTRODUCTIONS_HELD = 1024
#: ids per REQUEST datagram
REQUEST_CHUNK = 1000
#: once every static peer is known, the bootstrap check runs this many times less often
BOOTSTRAP_IDLE_FACTOR = 10


class Gossip:
    def __init__(self, local: LocalNode, members: Membership, routing: Routing, links: Mapping,
                 transport: Transport, rand_unit: Callable[[], float], wake: Callable[[float], None],
                 fanout: int, rounds: int, digest_leaf: int, active: Callable[[object, float], bool],
                 validated: Callable[[tuple[str, int]], bool]) -> None:
        self.local = local
        self.members = members
        self.routing = routing
        self.links = links  # id8 -> Link (read-only here)
        self.active = active  # whether a link is kept alive (an idle one is not woken for anti-entropy)
        self.validated = validated  # whether an underlay address showed it receives there
        self.transport = transport
        self.rand_unit = rand_unit
        self.wake = wake  # run tick() no later than the given time
        self.fanout = fanout
        self.rounds = rounds
        self.digest_leaf = digest_leaf  # a digest lists a range of at most this many ids, else hashes
        self.hot: dict[bytes, int] = {}  # records still gossiped -> rounds left
        self._flood: dict[bytes, bytes | None] = {}  # hubs: new records -> who sent them (None: ours)
        self._bootstrap_turn = -1
        self._introductions_held: dict[tuple[str, int], bytes] = {}  # address not validated -> newcomer

    # ------------------------------------------------------------------ what to spread

    def flood_batch(self) -> float:
        """How long a hub collects new records before handing them on (each batch is a datagram
        to every neighbour)."""
        return min(FLOOD_BATCH_MAX, FLOOD_BATCH * max(1.0, len(self.links) / FLOOD_BATCH_NEIGHBOURS))

    def flood(self, key: bytes, source: bytes | None, now: float) -> None:
        """A hub hands a new record (or link page, by its key) on (``source`` sent it; None: our own)."""
        self._flood[key] = source
        self.wake(now + self.flood_batch())

    def make_hot(self, key: bytes, now: float, interval: float) -> None:
        """Gossip this record (or link page) for the next rounds."""
        self.hot[key] = self.rounds
        self.wake(now + interval)

    def tick(self, now: float) -> None:
        """Hand flooded records on; one gossip round of the hot ones."""
        if self._flood:
            self._hand_on(now)
        if not self.hot:
            return
        targets = self.routing.targets
        if not targets:
            targets = [m.record.id8 for ip in self.local.static_by_ip if (m := self.members.find(ip)) is not None]
        chosen = self._rand_choice(targets, self.fanout)
        raws = [held[1] for i in self.hot if (held := self.members.raw_of(i)) is not None]
        for id8 in chosen:
            addr = self.transport.addr_of(id8)
            if addr is not None:
                self.transport.send_records(addr, raws, now, "gossip", self.members.identity_of(id8))
        for id8 in list(self.hot):
            self.hot[id8] -= 1
            if self.hot[id8] <= 0:
                del self.hot[id8]

    def _hand_on(self, now: float) -> None:
        """Hand the records collected by :meth:`flood` on over our links: to every neighbour
        but the one that sent a record and, if that one is a hub, those it floods to itself
        (its links). A hub marks what it hands on (RECORDS_FLOOD): an ordinary node hands
        that on once more, to its neighbours the hub has no link to (see Core._accept_record),
        and unmarked."""
        flood, self._flood = self._flood, {}
        mine = [i for i, link in self.links.items() if link.state == UP]
        batches: dict[bytes, list[bytes]] = {}
        no_links: Mapping[bytes, int] = {}
        for key, source in flood.items():
            held = self.members.raw_of(key)
            if held is None:
                continue
            origin, raw = held
            sender = self.members.get(source) if source is not None else None
            theirs = self.routing.graph.claims.get(source, no_links) if sender is not None and \
                self.local.is_hub(sender.info) else no_links  # (a hub floods to its own)
            for id8 in mine:
                if id8 != source and id8 != origin and id8 not in theirs:
                    batches.setdefault(id8, []).append(raw)
        flags = wire.RECORDS_FLOOD if self.local.is_static else 0
        for id8, batch in batches.items():
            addr = self.transport.addr_of(id8)
            if addr is not None:
                self.transport.send_records(addr, batch, now, "flood", self.members.identity_of(id8), flags)

    def _rand_choice(self, items: list, k: int) -> list:
        items = list(items)
        out = []
        while items and len(out) < k:
            out.append(items.pop(int(self.rand_unit() * len(items))))
        return out

    # ------------------------------------------------------------------ anti-entropy

    def bootstrap(self, now: float, version: int) -> bool:
        """While a static peer's record is unknown: send our digest to one such static peer
        (a different one each time); its answer is the whole mesh, in one exchange. False if
        every static peer is known."""
        unknown = [ip for ip in sorted(self.local.static_by_ip) if not self.members.static_known(ip)]
        if not unknown:
            return False
        self._bootstrap_turn = (self._bootstrap_turn + 1) % len(unknown)
        static = self.local.static_by_ip[unknown[self._bootstrap_turn]]
        self.ask_for_mesh([(static.host, static.admin_port)], now, version)
        return True

    def ask_for_mesh(self, addrs: list[tuple[str, int]], now: float, version: int) -> None:
        """Our digest with nothing but our own entry: each answer is the whole mesh."""
        body = wire.body_digest([(self.local.id8, version)])
        for addr in addrs:
            self.transport.send_to_addr(addr, wire.DIGEST, body, now)

    def sync(self, now: float) -> None:
        """Anti-entropy with a random direct neighbour (like OSPF's database exchange: what one
        node knows reaches every node, neighbour by neighbour): one tunnel hop, no relay, and
        the pair's MAC rather than a signature. A node with no direct neighbour yet picks any
        node it has a path to."""
        targets = [i for i, link in self.links.items()
                   if link.state == UP and self.routing.direct(i) and self.active(link, now)] or self.routing.targets
        if not targets:
            return
        target = targets[int(self.rand_unit() * len(targets))]
        self.transport.send(target, wire.SYNC, self._sync_body(), now)

    def sync_with(self, id8: bytes, now: float) -> None:
        """Anti-entropy with one node now (a static peer whose link to us came back): our overlay
        route to it may still go through a relay that has no route back (Transport.send_outside)."""
        self.transport.send_outside(id8, wire.SYNC, self._sync_body(), now)

    def _sync_body(self) -> bytes:
        return wire.body_sync(len(self.members.members), self.members.digest_hash())

    def on_sync(self, body: bytes, src: tuple[str, int], now: float, sender: bytes) -> None:
        _count, digest_hash = wire.parse_sync(body)
        if digest_hash != self.members.digest_hash():
            self._send_digest(src, 0, 0, now, sender)

    def _send_digest(self, addr: tuple[str, int], depth: int, prefix: int, now: float, to: bytes) -> None:
        """Our digest of a range of ids: its entries if few, else a hash per sixteenth of it."""
        ranges = self.members.ranges()
        if depth >= 2 * wire.ID8_LEN or ranges.count(depth, prefix) <= self.digest_leaf:
            body = wire.body_digest(ranges.entries(depth, prefix), depth, prefix)
        else:
            body = wire.body_digest_buckets(ranges.buckets(depth, prefix), depth, prefix)
        self.transport.send_to_addr(addr, wire.DIGEST, body, now, to)

    def on_digest(self, body: bytes, src: tuple[str, int], now: float, sender: bytes) -> None:
        digest = wire.parse_digest(body)
        if digest.buckets is not None:  # the ranges that differ, a level down
            ranges = self.members.ranges()
            mine_all = ranges.buckets(digest.depth, digest.prefix)
            for j, (mine, theirs) in enumerate(zip(mine_all, digest.buckets, strict=True)):
                if mine != theirs:
                    self._send_digest(src, digest.depth + 1, ranges.sub(digest.depth, digest.prefix, j), now, sender)
            return
        theirs = dict(digest.entries)
        send = self.members.newer_than(theirs, digest.depth, digest.prefix)
        want = self.members.wanted(theirs)
        self.transport.send_records(src, send, now, to=sender)
        for i in range(0, len(want), REQUEST_CHUNK):
            self.transport.send_to_addr(src, wire.REQUEST, wire.body_request(want[i:i + REQUEST_CHUNK]), now, sender)

    def on_request(self, body: bytes, src: tuple[str, int], now: float, sender: bytes) -> None:
        raws = [held[1] for key in wire.parse_request(body) if (held := self.members.raw_of(key)) is not None]
        self.transport.send_records(src, raws, now, to=sender)

    # ------------------------------------------------------------------ introductions

    def validated_addr(self, addr: tuple[str, int], now: float) -> None:
        """An address showed it receives there: an introduction held for it goes now."""
        id8 = self._introductions_held.pop(addr, None)
        if id8 is not None and self.members.underlay_addr.get(id8) == addr:
            self.introduce(id8, now)

    def introduce(self, id8: bytes, now: float) -> None:
        """A static peer introduces nodes that speak from the same public address (behind one
        NAT: likely on one LAN) to each other as they arrive: their records reach each other at
        once, and their LAN links come up with their first links to us rather than after the
        mesh has routes to them."""
        addr = self.members.underlay_addr.get(id8)
        if addr is None:
            return
        newcomer = self.members.get(id8)
        others = [m for i in self.members.behind(addr[0]) if i != id8 and (m := self.members.get(i)) is not None
                  and not self.local.is_hub(m.info)][:MAX_INTRODUCTIONS]
        if not others:
            return
        if self.validated(addr):
            self.transport.send_records(addr, [m.record.raw for m in others], now, "introduce", newcomer.identity)
        elif len(self._introductions_held) < MAX_INTRODUCTIONS_HELD:
            # its address has not shown it receives there yet (see core.validation): the
            # newcomer's half waits for that
            self._introductions_held[addr] = id8
        for member in others:
            there = self.transport.underlay_of(member.record.id8, now)
            if there is not None:
                self.transport.send_records(there, [newcomer.record.raw], now, "introduce", member.identity)
