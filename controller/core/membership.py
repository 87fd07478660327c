"""Membership: who is in the mesh, on whose word, and where they speak from.

Admission of signed records (new, updated, address changed, WireGuard key rotated, or
refused with a reason), address bindings (an overlay IP stays with the first identity that
claimed it), replay protection per sender, the digest of what we hold, forgetting nodes
unreachable for long, and the underlay addresses nodes were last heard from.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import wire
from ..wire import NodeInfo, ProtocolError, Record
from .local import Subnet
from .pages import Pages
from .types import CoreConfig, Counters, EventKind

#: how many distinct refusals are remembered (each is reported once); the latest few are shown
MAX_CONFLICTS_REPORTED = 1000
REFUSALS_SHOWN = 16
#: a sender's replay stamp is kept this many replay windows
REPLAY_KEEP_WINDOWS = 2
#: senders that are not members ("strangers": a node joining, or a flood of fresh identities
#: from a holder of the shared key): at most this many are remembered (replay stamp, where they
#: spoke from); beyond it the oldest quarter is forgotten. Members are never evicted
STRANGERS_MAX = 4096
#: a node that left is listed as "left" this long after its departure record (its version is
#: its time in ms), then forgotten; an older departure record is not taken (every node forgets
#: it at the same time: no node brings it back to the others)
LEFT_KEEP = 600.0


#: a range of more ids than this is hashed as the hashes of its sixteenths, a smaller one as
#: its entries: a tree by prefix, so one changed record re-hashes one path (a leaf of at most
#: this many entries and 16 hashes a level above it), not every id held (26 ms at 10,000 ids)
HASH_LEAF = 64


class Ranges:
    """What a node holds as (id8, version), sorted, and the hash of any range of ids that share
    a prefix of ``depth`` nibbles (the anti-entropy's digests: see wire.Digest), kept up to date
    as records come and go (:meth:`set`)."""

    __slots__ = ("_items", "_ids", "_hashes")

    def __init__(self, items: list[tuple[bytes, int]]) -> None:
        self._items = items
        self._ids = [id8 for id8, _ in items]
        self._hashes: dict[tuple[int, int], bytes] = {}

    def set(self, id8: bytes, version: int | None) -> None:
        """``id8`` is now held at ``version`` (None: no longer held); the hashes of the ranges
        that hold it are computed again when next asked for."""
        i = bisect.bisect_left(self._ids, id8)
        present = i < len(self._ids) and self._ids[i] == id8
        if version is None:
            if not present:
                return
            del self._ids[i], self._items[i]
        elif present:
            if self._items[i][1] == version:
                return
            self._items[i] = (id8, version)
        else:
            self._ids.insert(i, id8)
            self._items.insert(i, (id8, version))
        value = int.from_bytes(id8, "big")
        for depth in range(2 * wire.ID8_LEN + 1):
            self._hashes.pop((depth, value >> (64 - 4 * depth) << (64 - 4 * depth) if depth else 0), None)

    def bounds(self, depth: int, prefix: int) -> tuple[int, int]:
        if depth == 0:
            return 0, len(self._items)
        end = prefix + (1 << (64 - 4 * depth))
        lo = bisect.bisect_left(self._ids, prefix.to_bytes(8, "big"))
        hi = len(self._ids) if end >= 1 << 64 else bisect.bisect_left(self._ids, end.to_bytes(8, "big"), lo)
        return lo, hi

    def count(self, depth: int, prefix: int) -> int:
        lo, hi = self.bounds(depth, prefix)
        return hi - lo

    def entries(self, depth: int, prefix: int) -> list[tuple[bytes, int]]:
        lo, hi = self.bounds(depth, prefix)
        return self._items[lo:hi]

    def hash(self, depth: int, prefix: int) -> bytes:
        key = (depth, prefix)
        h = self._hashes.get(key)
        if h is None:
            lo, hi = self.bounds(depth, prefix)
            if hi - lo <= HASH_LEAF or depth >= 2 * wire.ID8_LEN:
                b = hashlib.blake2b(digest_size=wire.DIGEST_HASH_LEN, person=b"wgnm-leaf")
                for id8, version in self._items[lo:hi]:
                    b.update(id8 + version.to_bytes(8, "big"))
            else:
                b = hashlib.blake2b(digest_size=wire.DIGEST_HASH_LEN, person=b"wgnm-tree")
                for j in range(wire.DIGEST_FANOUT):
                    b.update(self.hash(depth + 1, self.sub(depth, prefix, j)))
            h = self._hashes[key] = b.digest()
        return h

    @staticmethod
    def sub(depth: int, prefix: int, nibble: int) -> int:
        """The prefix of sixteenth ``nibble`` of a range."""
        return prefix | nibble << (60 - 4 * depth)

    def buckets(self, depth: int, prefix: int) -> list[bytes]:
        return [self.hash(depth + 1, self.sub(depth, prefix, j)) for j in range(wire.DIGEST_FANOUT)]


@dataclass(slots=True)
class Member:
    identity: bytes
    record: Record
    info: NodeInfo
    first_seen: float
    last_reachable: float


@dataclass(frozen=True, slots=True)
class Admission:
    """An accepted record: the member now, the member before (None: a new node)."""

    member: Member
    old: Member | None
    address: int  # the overlay address as an integer

    @property
    def address_changed(self) -> bool:
        return self.old is not None and self.old.info.overlay_ip != self.member.info.overlay_ip

    @property
    def key_rotated(self) -> bool:
        """A new WireGuard key under the same identity (a new WireGuard peer)."""
        return self.old is not None and self.old.info.wg_public_key != self.member.info.wg_public_key


class Membership:
    def __init__(self, config: CoreConfig, identity: bytes, subnet: Subnet, counters: Counters,
                 emit: Callable[..., None], persisted: Mapping, proven: Mapping[str, bytes] | None = None,
                 static_ips: Callable[[], Mapping[str, object]] = dict) -> None:
        self.config = config
        self.identity = identity
        self.id8 = identity[:wire.ID8_LEN]
        self.allowed = config.allowed_identities  # (strict mode; these three change on reload)
        self.revoked_identities = config.revoked_identities
        self.revoked_wg_keys = config.revoked_wg_keys
        self.subnet = subnet
        self.counters = counters
        self.emit = emit
        self.members: dict[bytes, Member] = {}
        self.wg_owner: dict[bytes, bytes] = {}  # WireGuard key -> id8
        self.bindings: dict[str, bytes] = {ip: bytes.fromhex(h) for ip, h in persisted.get("bindings", {}).items()}
        self.bindings_dirty = False
        self.replay: dict[bytes, tuple[int, int]] = {}
        self.underlay_addr: dict[bytes, tuple[str, int]] = {}  # last underlay source per id8
        self.underlay_seen: dict[bytes, float] = {}
        self.by_public_ip: dict[str, set[bytes]] = {}  # underlay source address -> who spoke from it
        self._conflicts_reported: set[tuple[str, bytes]] = set()
        #: the latest distinct refused claims, for `status` (address taken, revoked, ...)
        self.refusals: deque[dict] = deque(maxlen=REFUSALS_SHOWN)
        self._ranges: Ranges | None = None  # what we hold, sorted for range digests (None: not built yet)
        self.pages = Pages()  # the link pages of nodes with many links (see .pages)
        #: a static peer's overlay address -> the identity that answered a challenge sent to its
        #: net.yaml address (validation.StaticProof); None: no such rule. ``static_ips``: the
        #: static peers' overlay addresses (net.yaml, as reloaded)
        self.proven = proven
        self.static_ips = static_ips
        #: static peers' addresses whose record was refused for want of that proof (asked again
        #: once it comes)
        self.unproven_refused: set[str] = set()

    # ------------------------------------------------------------------ lookups

    def get(self, id8: bytes) -> Member | None:
        return self.members.get(id8)

    def find(self, target: str) -> Member | None:
        """A member by name or overlay IP."""
        for member in self.members.values():
            if target in (member.info.name, member.info.overlay_ip):
                return member
        return None

    def identity_of(self, id8: bytes) -> bytes | None:
        member = self.members.get(id8)
        return member.identity if member is not None else None

    def static_known(self, overlay_ip: str) -> bool:
        """Whether we hold the record of the identity bound to a static peer's address (and it
        has not left: one that left is asked again, like an unknown one, until it is back)."""
        bound = self.bindings.get(overlay_ip)
        member = self.members.get(bound[:wire.ID8_LEN]) if bound is not None else None
        return member is not None and not member.info.is_left

    # ------------------------------------------------------------------ datagrams

    def check_replay(self, inner: wire.Inner, now: float) -> None:
        """Raises ProtocolError for a datagram outside the time window, not newer than the last
        of its sender, from ourselves, or (strict mode) from an identity not listed."""
        if abs(inner.timestamp_ms - now * 1000) > self.config.replay_window * 1000:
            raise ProtocolError("outside_window")
        last = self.replay.get(inner.sender)
        stamp = (inner.timestamp_ms, inner.seq)
        if last is not None and stamp <= last:
            raise ProtocolError("replay")
        if inner.sender == self.identity:
            raise ProtocolError("own_identity")
        allowed = self.allowed
        if allowed is not None and not any(inner.sender in ids for ids in allowed.values()):
            raise ProtocolError("identity_not_allowed")
        if inner.sender in self.revoked_identities:
            raise ProtocolError("identity_revoked")
        if last is None and len(self.replay) > len(self.members) + STRANGERS_MAX:
            self._evict_strangers()
        self.replay[inner.sender] = stamp

    def _evict_strangers(self) -> None:
        """The oldest quarter of the strangers' state goes (see STRANGERS_MAX)."""
        members = self.members
        strangers = sorted((stamp, sender) for sender, stamp in self.replay.items()
                           if sender[:wire.ID8_LEN] not in members)
        for _stamp, sender in strangers[:max(1, len(strangers) // 4)]:
            del self.replay[sender]
            self._forget_underlay(sender[:wire.ID8_LEN])
        self.counters.count("strangers_evicted", max(1, len(strangers) // 4))

    def _forget_underlay(self, id8: bytes) -> None:
        self.underlay_seen.pop(id8, None)
        addr = self.underlay_addr.pop(id8, None)
        if addr is not None:
            behind = self.by_public_ip.get(addr[0])
            if behind is not None:
                behind.discard(id8)
                if not behind:
                    del self.by_public_ip[addr[0]]

    def heard_from(self, sender8: bytes, src: tuple[str, int], now: float) -> None:
        """A datagram from ``sender8`` arrived over the underlay from ``src``."""
        previous = self.underlay_addr.get(sender8)
        if previous is None or previous[0] != src[0]:
            if previous is not None:
                self.by_public_ip.get(previous[0], set()).discard(sender8)
            self.by_public_ip.setdefault(src[0], set()).add(sender8)
        self.underlay_addr[sender8] = src
        self.underlay_seen[sender8] = now

    def recent_underlay(self, id8: bytes, now: float, within: float = 60.0) -> tuple[str, int] | None:
        """Where the node spoke from over the underlay, if it did recently."""
        if now - self.underlay_seen.get(id8, -1e18) < within:
            return self.underlay_addr.get(id8)
        return None

    def behind(self, public_ip: str) -> list[bytes]:
        """The nodes that spoke from one underlay address, in id order."""
        return sorted(self.by_public_ip.get(public_ip, ()))

    # ------------------------------------------------------------------ records

    def is_known(self, identity: bytes, version: int) -> bool:
        """Whether we hold this identity's record at this version or newer."""
        member = self.members.get(identity[:wire.ID8_LEN])
        return member is not None and member.record.version >= version and member.identity == identity

    def is_known_page(self, key: bytes, identity: bytes, version: int) -> bool:
        """Whether we hold this link page (by its key) at this version or newer."""
        held = self.pages.get(key)
        return held is not None and held.record.version >= version and held.record.identity == identity

    def version_of(self, key: bytes) -> int:
        """The version we hold of a record or link page by its key (-1: none)."""
        member = self.members.get(key)
        if member is not None:
            return member.record.version
        held = self.pages.get(key)
        return held.record.version if held is not None else -1

    def raw_of(self, key: bytes) -> tuple[bytes, bytes] | None:
        """(whose, the raw record) of a node record or link page we hold by its key."""
        member = self.members.get(key)
        if member is not None:
            return key, member.record.raw
        held = self.pages.get(key)
        return (held.owner, held.record.raw) if held is not None else None

    def claims_of(self, id8: bytes) -> Mapping[bytes, int]:
        """A member's claimed links: its record's, or the union of its link pages."""
        info = self.members[id8].info
        return self.pages.links_of(id8) if info.is_paged else info.link_map

    def admit(self, record: Record, own_wg_key: bytes, now: float, from_hub: bool = False) -> Admission | None:
        """Check a verified record against the rules and take it; None if refused (counted
        and reported once as ``claim_refused``). ``from_hub``: a static peer we trust sent it."""
        if record.kind != wire.RECORD_NODE:
            self.counters.count("drop_unknown_record_kind")
            return None
        try:
            info = wire.RecordCache.decoded(record, wire.decode_node_info)
        except ProtocolError as e:
            self.counters.count(f"drop_{e.reason}")
            return None
        if info.is_left and self.left_expired(record, now):
            self.counters.count("records_left_expired")
            return None
        address = self.subnet.host_value(info.overlay_ip)
        refusal = self._refusal(record, info, address, own_wg_key, from_hub)
        if refusal is not None:
            counter, reason = refusal
            self.counters.count(counter)
            if reason is not None:
                self._report_conflict(reason, info, record)
            return None
        if info.overlay_ip not in self.bindings:
            self.bindings[info.overlay_ip] = record.identity
            self.bindings_dirty = True
        id8 = record.id8
        old = self.members.get(id8)
        if (old is not None and old.identity != record.identity) or id8 in self.pages.by_key:
            self.counters.count("refused_id_collision")  # (an id8 taken: refuse the newcomer)
            return None
        if old is not None and old.info.wg_public_key != info.wg_public_key:
            self.wg_owner.pop(old.info.wg_public_key, None)
            self.emit(EventKind.WG_KEY_ROTATED, node=info.name)
        self.wg_owner[info.wg_public_key] = id8
        self.counters.count("records_accepted")
        member = self.members[id8] = Member(record.identity, record, info, old.first_seen if old else now,
                                            old.last_reachable if old else now)
        self._ranged(id8, record.version)
        if not info.is_paged:
            self._pages_gone(self.pages.unpaged(id8, record.version))  # (its links are back, if paged)
        elif info.is_paged and old is not None and not old.info.is_paged:
            self.pages.paged(id8, old.info.link_map)
        return Admission(member, old, address)

    def admit_page(self, record: Record) -> bytes | None:
        """Take a verified link page: the id8 of the node whose claims it changed, or None
        (refused, not newer, or held until its node's record comes: see .pages)."""
        try:
            page = wire.RecordCache.decoded(record, wire.decode_link_page)
        except ProtocolError as e:
            self.counters.count(f"drop_{e.reason}")
            return None
        key = wire.page_key(record.identity, page.index)
        owner = self.members.get(record.id8)
        if key in self.members:
            self.counters.count("refused_id_collision")
            return None
        if owner is None or owner.identity != record.identity:
            self.counters.count("pages_orphaned")
            self.pages.hold_orphan(key, record)
            return None
        if self.is_known_page(key, record.identity, record.version):
            self.counters.count("records_known")
            return None
        if owner.info.is_left or (not owner.info.is_paged and record.version < owner.record.version):
            self.counters.count("pages_stale")  # (superseded by a record that lists its links)
            return None
        dropped = self.pages.take(key, record.id8, record, page)
        if dropped is None:
            self.counters.count("pages_stale")
            return None
        self._pages_gone(dropped)
        self._ranged(key, record.version)
        self.counters.count("pages_accepted")
        return record.id8

    def _pages_gone(self, keys: list[bytes]) -> None:
        for key in keys:
            self._ranged(key, None)

    @staticmethod
    def left_expired(record: Record, now: float) -> bool:
        return now * 1000 - record.version > LEFT_KEEP * 1000

    def _refusal(self, record: Record, info: NodeInfo, address: int | None,
                 own_wg_key: bytes, from_hub: bool = False) -> tuple[str, str | None] | None:
        """(counter, reason: None for one not reported) if the record's claims break a rule,
        else None."""
        if address is None:
            return "refused_outside_subnet", "outside_subnet"
        if info.overlay_ip == self.config.overlay_ip:
            return "refused_claims_our_address", "claims_our_address"
        if record.identity in self.revoked_identities or info.wg_public_key in self.revoked_wg_keys:
            return "refused_revoked", "revoked"
        allowed = self.allowed
        if allowed is not None and record.identity not in allowed.get(info.overlay_ip, frozenset()):
            return "refused_not_allowed", "identity_not_allowed"
        bound = self.bindings.get(info.overlay_ip)
        if bound is not None and bound != record.identity:
            return "refused_address_bound", "address_bound"
        if bound is None and not from_hub and self.proven is not None and info.overlay_ip in self.static_ips() \
                and self.proven.get(info.overlay_ip) != record.identity:
            # a static peer's address goes first to the identity that answered there, or that
            # a static peer we trust hands on (one we cannot reach directly): validation.StaticProof
            self.unproven_refused.add(info.overlay_ip)
            return "refused_static_unproven", None
        owner = self.wg_owner.get(info.wg_public_key)
        if (owner is not None and owner != record.id8) or info.wg_public_key == own_wg_key:
            return "refused_wg_key_taken", "wg_key_taken"
        return None

    def set_rules(self, allowed: Mapping[str, frozenset[bytes]] | None, revoked_identities: frozenset[bytes],
                  revoked_wg_keys: frozenset[bytes]) -> list[Member]:
        """New admission rules (net.yaml reloaded): returns the members they now refuse (the
        caller forgets them)."""
        self.allowed, self.revoked_identities, self.revoked_wg_keys = allowed, revoked_identities, revoked_wg_keys
        refused = []
        for id8, member in list(self.members.items()):
            if id8 == self.id8:
                continue
            info = member.info
            if member.identity in revoked_identities or info.wg_public_key in revoked_wg_keys or (
                    allowed is not None and member.identity not in allowed.get(info.overlay_ip, frozenset())):
                self.forget(id8)
                refused.append(member)
        return refused

    def forget(self, id8: bytes) -> Member | None:
        member = self.members.pop(id8, None)
        if member is not None:
            self.wg_owner.pop(member.info.wg_public_key, None)
            self._ranged(id8, None)
            self._pages_gone(self.pages.drop(id8))
        return member

    def set_own(self, record: Record, info: NodeInfo, first_seen: float, now: float) -> None:
        """A new version of our own record."""
        self.members[self.id8] = Member(self.identity, record, info, first_seen, now)
        self.wg_owner[info.wg_public_key] = self.id8
        self._ranged(self.id8, record.version)
        self.bindings_dirty = True

    def set_own_page(self, key: bytes, record: Record, page: wire.LinkPage) -> None:
        """A new version of one of our link pages (pages of another count go)."""
        self._pages_gone(self.pages.take(key, self.id8, record, page) or [])
        self._ranged(key, record.version)

    def drop_own_pages(self) -> None:
        """Our links are back in our record."""
        self._pages_gone(self.pages.drop(self.id8))

    def _report_conflict(self, reason: str, info: NodeInfo, record: Record) -> None:
        key = (reason + info.overlay_ip, record.identity)
        if key in self._conflicts_reported:
            return
        if len(self._conflicts_reported) > MAX_CONFLICTS_REPORTED:
            self._conflicts_reported.clear()
        self._conflicts_reported.add(key)
        self.refusals.append({"reason": reason, "overlay_ip": info.overlay_ip, "name": info.name,
                              "identity": record.identity.hex()[:16]})
        self.emit(EventKind.CLAIM_REFUSED, reason=reason, ip=info.overlay_ip, name=info.name,
                  identity=record.identity.hex()[:16])

    def refuse_route(self, overlay_ip: str, why: str) -> None:
        """A node left unrouted because its overlay address is an underlay address in use here."""
        member = self.find(overlay_ip)
        name, identity = (member.info.name, member.identity.hex()[:16]) if member is not None else ("?", "?")
        self.refusals.append({"reason": f"not routed: {why}", "overlay_ip": overlay_ip, "name": name,
                              "identity": identity})
        self.emit(EventKind.CLAIM_REFUSED, reason="underlay_address", ip=overlay_ip, name=name, identity=identity)

    # ------------------------------------------------------------------ digests

    def _ranged(self, id8: bytes, version: int | None) -> None:
        if self._ranges is not None:
            self._ranges.set(id8, version)

    def ranges(self) -> Ranges:
        if self._ranges is None:
            self._ranges = Ranges(sorted([*((id8, m.record.version) for id8, m in self.members.items()),
                                          *((key, p.record.version) for key, p in self.pages.items().items())]))
        return self._ranges

    def digest_hash(self) -> bytes:
        """A hash of every (id8, version) we hold: equal hashes, nothing to exchange."""
        return self.ranges().hash(0, 0)

    def newer_than(self, theirs: Mapping[bytes, int], depth: int = 0, prefix: int = 0) -> list[bytes]:
        """The records and link pages in a range (all, by default) that a digest of that range
        lacks or has older (of all: the nodes' records first; a page that comes before its
        node's record waits for it, see .pages)."""
        members, pages = self.members, self.pages.by_key
        if depth == 0:
            return [*(m.record.raw for id8, m in members.items() if theirs.get(id8, -1) < m.record.version),
                    *(p.record.raw for key, p in pages.items() if theirs.get(key, -1) < p.record.version)]
        return [members[key].record.raw if key in members else pages[key].record.raw
                for key, version in self.ranges().entries(depth, prefix) if theirs.get(key, -1) < version]

    def wanted(self, theirs: Mapping[bytes, int]) -> list[bytes]:
        """The keys of a digest whose record or link page we lack or have older."""
        version_of = self.version_of
        return [key for key, version in theirs.items() if key != self.id8 and version_of(key) < version]

    # ------------------------------------------------------------------ forgetting

    def collect(self, now: float, reachable: Mapping[bytes, object]) -> list[Member]:
        """Forget the records of nodes unreachable for ``forget_after`` (their bindings stay) and
        old replay stamps; returns the forgotten members."""
        gone = []
        for id8, member in list(self.members.items()):
            if id8 == self.id8:
                continue
            if id8 in reachable:
                member.last_reachable = now
            elif now - member.last_reachable > self.config.forget_after or (
                    member.info.is_left and self.left_expired(member.record, now)):
                self.forget(id8)
                gone.append(member)
        cutoff = now * 1000 - self.config.replay_window * 1000 * REPLAY_KEEP_WINDOWS
        for sender, (ts, _) in list(self.replay.items()):
            if ts < cutoff:
                del self.replay[sender]
        # where nodes spoke from: kept for members, and for others while their replay stamp is
        for id8, seen in list(self.underlay_seen.items()):
            if id8 not in self.members and now - seen > self.config.replay_window * REPLAY_KEEP_WINDOWS:
                self._forget_underlay(id8)
        return gone

    def persistent_state(self, version: int) -> dict:
        self.bindings_dirty = False
        return {"bindings": {ip: ident.hex() for ip, ident in sorted(self.bindings.items())}, "version": version}
