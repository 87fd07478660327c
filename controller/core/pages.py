"""Link pages: the links of a node with many (a hub of a large mesh) in records of their own.

A node record lists the node's links; a hub links to every node, so its record grew with the
mesh (11 KB at 1,000 nodes, 22 KB at 2,000, past the 60 KB datagram limit at ~5,400), and each
link that came or went re-sent all of it to every node. A node with more than PAGE_LINKS links
lists none in its node record (FLAG_PAGED) and puts them in RECORD_LINKS pages instead: page i
of P (a power of two) holds the links to the peers whose id8 falls in the i-th of P equal
ranges (wire.page_of), so a link always lands in the same page, and a changed link re-signs
and re-sends that page only. Each page is signed and versioned on its own and goes by a key of
its own in digests and requests (wire.page_key), like one more record.

A node's links, as others see them, are the union of the pages they hold of its current page
count (the count of its newest page; pages of another count are dropped). The core hands the routing
graph that union as a view over the pages' own maps (PagedLinks), so a changed page costs
every node the links of that page, not of all the hub's pages. A page that arrives
before its node's record is held a while (an orphan: up to ORPHANS_MAX), then taken.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .. import wire
from ..wire import LinkClaim, LinkPage, Record

#: a node lists its links in pages once it has more than this many (a page is then < 1 KB:
#: 11 bytes a link, plus the record's 113); back in its record when they are half as many
PAGE_LINKS = 64
#: pages whose node's record is not held yet, kept for when it comes (oldest forgotten first)
ORPHANS_MAX = 1024


@dataclass(frozen=True, slots=True)
class HeldPage:
    owner: bytes  # id8 of the node whose links these are
    record: Record
    page: LinkPage


_NONE: Mapping[bytes, int] = MappingProxyType({})


class PagedLinks(Mapping[bytes, int]):
    """A paged node's links as others see them, read-only: page i's links, or while that page
    (of the node's current count) is missing, the links claimed before that it would list. A
    view over the pages' own maps, not a merged copy: a page that changes builds this object
    (O(page count)) and, with changed_peers, costs the routing graph that page's links only,
    where a merged copy cost every link of a hub (a link to each node) at each node."""

    __slots__ = ("parts", "_shift")

    def __init__(self, parts: tuple[Mapping[bytes, int], ...]) -> None:
        self.parts = parts  # page index -> its links (a power of two of them)
        # wire.page_of as a shift, inlined: this is looked up for every edge update
        self._shift = wire.page_shift(len(parts))

    def __getitem__(self, peer: bytes) -> int:
        return self.parts[int.from_bytes(peer[:4], "big") >> self._shift][peer]

    def get(self, peer: bytes, default: int | None = None) -> int | None:  # type: ignore[override]
        return self.parts[int.from_bytes(peer[:4], "big") >> self._shift].get(peer, default)

    def __contains__(self, peer: object) -> bool:  # (peer: an id8)
        return peer in self.parts[int.from_bytes(peer[:4], "big") >> self._shift]  # type: ignore[index]

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            yield from part

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __bool__(self) -> bool:  # (without it, truth is len: a sum over every page)
        return any(self.parts)

    def __repr__(self) -> str:
        return f"PagedLinks({len(self.parts)} pages, {len(self)} links)"


def changed_peers(old: Mapping[bytes, int], new: Mapping[bytes, int]) -> list[bytes] | None:
    """The peers whose claim differs from ``old`` to ``new`` (two views of one node's links),
    in id order, from the pages that are not the same object; None when they are not two page
    views of one count (compare every link)."""
    if not (isinstance(old, PagedLinks) and isinstance(new, PagedLinks)) or len(old.parts) != len(new.parts):
        return None
    peers: set[bytes] = set()
    for before, after in zip(old.parts, new.parts, strict=True):
        if before is not after:
            peers.update(peer for peer, _ in before.items() ^ after.items())
    return sorted(peers)


def split(links: Sequence[LinkClaim], count: int) -> list[tuple[LinkClaim, ...]]:
    """``links`` (in peer order) as ``count`` pages; a page past wire.MAX_PAGE_LINKS (only at
    wire.MAX_PAGES pages: ~200,000 links) lists its fastest links, in peer order."""
    pages: list[list[LinkClaim]] = [[] for _ in range(count)]
    for link in links:
        pages[wire.page_of(link.peer, count)].append(link)
    for i, page in enumerate(pages):
        if len(page) > wire.MAX_PAGE_LINKS:
            fastest = sorted(page, key=lambda link: link.rtt_ms)[:wire.MAX_PAGE_LINKS]
            pages[i] = sorted(fastest, key=lambda link: link.peer)
    return [tuple(p) for p in pages]


def page_count(links: Sequence[LinkClaim], current: int) -> int:
    """How many pages ``links`` take (0: none, they fit the node record), from the ``current``
    count: a page count doubles when a page would hold more than PAGE_LINKS, halves when every
    page would hold at most 3/4 of that, and the links go back into the node record when
    they are half of PAGE_LINKS (room either way: a hub near a limit does not re-page at each
    link that comes or goes)."""
    n = len(links)
    if current == 0:
        if n <= PAGE_LINKS:
            return 0
        current = 1
    elif n <= PAGE_LINKS // 2:
        return 0

    def fullest(count: int) -> int:
        sizes = [0] * count
        for link in links:
            sizes[wire.page_of(link.peer, count)] += 1
        return max(sizes)

    while fullest(current) > PAGE_LINKS and current < wire.MAX_PAGES:
        current *= 2
    while current > 1 and fullest(current // 2) <= PAGE_LINKS * 3 // 4:
        current //= 2
    return current


class Pages:
    """The link pages held, by key and by node."""

    def __init__(self) -> None:
        self.by_key: dict[bytes, HeldPage] = {}
        self.of: dict[bytes, dict[int, bytes]] = {}  # owner id8 -> page index -> key
        #: owner id8 -> the links it claimed before its page count changed (or before it paged),
        #: each kept until a page of the new count covers it
        self.before: dict[bytes, dict[bytes, int]] = {}
        self._before_parts: dict[bytes, tuple[Mapping[bytes, int], ...]] = {}  # owner -> before, split by page
        self.orphans: dict[bytes, Record] = {}  # key -> a page whose node we do not hold yet
        self._orphan_keys: dict[bytes, set[bytes]] = {}  # identity -> its orphans' keys

    def get(self, key: bytes) -> HeldPage | None:
        return self.by_key.get(key)

    def count_of(self, owner: bytes) -> int:
        """The page count of the pages held of ``owner`` (0: none)."""
        keys = self.of.get(owner)
        return self.by_key[next(iter(keys.values()))].page.count if keys else 0

    def take(self, key: bytes, owner: bytes, record: Record, page: LinkPage) -> list[bytes] | None:
        """Hold ``page`` (newer than what we hold under ``key``; the caller checked): the keys
        it dropped (pages of another count, older), or None if it is older than those."""
        keys = self.of.setdefault(owner, {})
        dropped = []
        if keys and self.count_of(owner) != page.count:
            if max(self.by_key[k].record.version for k in keys.values()) > record.version:
                return None  # (a page from before the count changed)
            before = dict(self.links_of(owner))
            dropped = self.drop(owner)
            self._set_before(owner, before)
            keys = self.of.setdefault(owner, {})
        keys[page.index] = key
        self.by_key[key] = HeldPage(owner, record, page)
        if len(keys) == page.count:
            self._set_before(owner, None)  # (every link is covered by a page of the new count)
        return dropped

    def paged(self, owner: bytes, links: Mapping[bytes, int]) -> None:
        """``owner``'s record no longer lists its ``links`` (they went into pages): they stand
        until the pages that cover them come."""
        count = self.count_of(owner)
        if links and (not count or len(self.of[owner]) < count):
            self._set_before(owner, dict(links))

    def drop(self, owner: bytes, older_than: int | None = None) -> list[bytes]:
        """Forget ``owner``'s pages (older than a version only, if given): their keys."""
        if older_than is None:
            self._set_before(owner, None)
        keys = self.of.get(owner)
        if not keys:
            self.of.pop(owner, None)
            return []
        gone = [k for k in keys.values() if older_than is None or self.by_key[k].record.version < older_than]
        for key in gone:
            del keys[self.by_key.pop(key).page.index]
        if not keys:
            del self.of[owner]
        return gone

    def unpaged(self, owner: bytes, version: int) -> list[bytes]:
        """``owner``'s record at ``version`` lists its links again: its older pages go (their
        keys), and the links claimed before. (Called for every node record accepted: at once
        for a node that never paged.)"""
        if owner not in self.of and owner not in self.before:
            return []
        self._set_before(owner, None)
        return self.drop(owner, older_than=version)

    def _set_before(self, owner: bytes, links: dict[bytes, int] | None) -> None:
        self._before_parts.pop(owner, None)
        if links is None:
            self.before.pop(owner, None)
        else:
            self.before[owner] = links

    def links_of(self, owner: bytes) -> PagedLinks:
        """The union of ``owner``'s pages (a view: see PagedLinks); while pages of a new count
        are missing, the links claimed before that the missing pages would list (a hub's page
        count doubling, or its links going into pages, does not make its links vanish for the
        time its pages take to arrive)."""
        keys = self.of.get(owner, {})
        count = self.count_of(owner) or 1
        before = self._before_parts.get(owner)
        if owner in self.before and (before is None or len(before) != count):
            split_before: list[dict[bytes, int]] = [{} for _ in range(count)]
            for peer, rtt in self.before[owner].items():
                split_before[wire.page_of(peer, count)][peer] = rtt
            before = self._before_parts[owner] = tuple(split_before)
        by_key = self.by_key
        return PagedLinks(tuple(by_key[keys[i]].page.link_map if i in keys else before[i] if before else _NONE
                                for i in range(count)))

    def hold_orphan(self, key: bytes, record: Record) -> None:
        old = self.orphans.pop(key, None)
        if old is not None and old.version >= record.version:
            self.orphans[key] = old
            return
        self.orphans[key] = record
        self._orphan_keys.setdefault(record.identity, set()).add(key)
        if len(self.orphans) > ORPHANS_MAX:
            self._unorphan(next(iter(self.orphans)))

    def _unorphan(self, key: bytes) -> Record:
        record = self.orphans.pop(key)
        keys = self._orphan_keys[record.identity]
        keys.discard(key)
        if not keys:
            del self._orphan_keys[record.identity]
        return record

    def orphans_of(self, identity: bytes) -> list[tuple[bytes, Record]]:
        """The orphans signed by ``identity`` (its record came), taken out: (key, record)."""
        return [(key, self._unorphan(key)) for key in sorted(self._orphan_keys.get(identity, ()))]

    def items(self) -> Mapping[bytes, HeldPage]:
        return self.by_key
