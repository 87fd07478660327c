"""Paths and the route table: the link graph, our shortest-path tree and first hops, and the
/32 routes and allowed IPs per first hop made from them.

Both are kept incrementally (a mesh changes a few links at a time): the tree by
:meth:`paths.LinkGraph.update_tree`; routes and allowed IPs only for the destinations whose
first hop changed (:meth:`RouteTable.update`, equal to :meth:`RouteTable.rebuild` - tested).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Mapping

from .. import paths
from . import pages
from .local import ip_int
from .types import DesiredRoute

#: a tree update that touched more than this share of the nodes rebuilds all first hops
FULL_HOPS_SHARE = 0.25


@functools.lru_cache(maxsize=65536)
def desired_route(ip: str, prefixlen: int, gateway: str | None) -> DesiredRoute:
    """One (immutable) route object per destination and gateway: most routes stay put from one
    recomputation to the next."""
    return DesiredRoute(f"{ip}/{prefixlen}", gateway)


class RouteTable:
    """Routes (``dst/32``, via the first hop unless it is the destination) and allowed IPs per
    first hop, both in address order. ``members`` maps a node's id8 to an object with
    ``info.overlay_ip`` (read-only here)."""

    def __init__(self, members: Mapping, prefixlen: int) -> None:
        self.members = members
        self.prefixlen = prefixlen
        self.routes: tuple[DesiredRoute, ...] = ()
        self.allowed: dict[bytes, tuple[str, ...]] = {}  # first hop -> its allowed IPs
        #: destinations whose first hop changed since the last refresh (None: all, or unknown)
        self.dirty: set[bytes] | None = None
        self._order: list[bytes] | None = None  # members sorted by overlay address
        self._keys: list[int] = []  # their addresses as integers, in that order
        self._slots: list[DesiredRoute | None] = []  # route per destination (in _order), or None
        #: the first hops the routes were made from (hops dicts are replaced, never changed in place)
        self._routed_hops: Mapping[bytes, bytes] = {}
        self._lists: dict[bytes, tuple[list[int], list[str]]] = {}  # hop -> its allowed IPs, by address

    def routed_ips(self) -> set[str]:
        """The overlay addresses we route (O(N): for the rare overlay-over-LAN check only)."""
        return {route.destination.split("/")[0] for route in self.routes}

    def key(self, id8: bytes) -> int:
        return ip_int(self.members[id8].info.overlay_ip)[1]  # (all of one IP version: the subnet's)

    # ------------------------------------------------------------------ what changed

    def added(self, id8: bytes, key: int) -> None:
        """A new member (no path to it yet: its route comes with the path)."""
        if self._order is None:
            self.invalidate()
            return
        at = bisect.bisect(self._keys, key)
        self._keys.insert(at, key)
        self._order.insert(at, id8)
        self._slots.insert(at, None)

    def invalidate(self) -> None:
        """A member went away or changed its address: rebuild at the next refresh."""
        self.dirty = None
        self._order = None

    def paths_changed(self, touched: list[bytes] | None) -> None:
        """The first hops of ``touched`` changed (None: maybe any)."""
        if touched is None:
            self.dirty = None
        elif self.dirty is not None:
            self.dirty.update(touched)

    # ------------------------------------------------------------------ building

    def refresh(self, hops: Mapping[bytes, bytes]) -> None:
        """Bring routes and allowed IPs up to date with ``hops`` (only when paths or addresses
        changed since the last refresh)."""
        dests = self.dirty
        if dests is not None and not dests:
            return
        self.dirty = set()
        if dests is None or self._order is None or not self.update(hops, dests):
            self.rebuild(hops)

    def _route_for(self, dest: bytes, hop: bytes) -> DesiredRoute:
        gateway = None if hop == dest else self.members[hop].info.overlay_ip
        return desired_route(self.members[dest].info.overlay_ip, self.prefixlen, gateway)

    def rebuild(self, hops: Mapping[bytes, bytes]) -> None:
        """Routes and allowed IPs from all paths: O(N)."""
        if self._order is None:
            order = sorted((self.key(id8), id8) for id8 in self.members)
            self._keys = [key for key, _ in order]
            self._order = [id8 for _, id8 in order]
        slots: list[DesiredRoute | None] = []
        lists: dict[bytes, tuple[list[int], list[str]]] = {}
        for dest, key in zip(self._order, self._keys, strict=True):
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
        self._slots, self._routed_hops, self._lists = slots, hops, lists
        self.routes = tuple(filter(None, slots))  # (in address order, and so is each peer's allowed list)
        self.allowed = {hop: tuple(prefixes) for hop, (_, prefixes) in lists.items()}

    def update(self, hops: Mapping[bytes, bytes], dests: Iterable[bytes]) -> bool:
        """Routes and allowed IPs after the paths to ``dests`` changed (and no others): what
        :meth:`rebuild` gives, in O(changes log N). False if it cannot tell."""
        via, lists, slots = self._routed_hops, self._lists, self._slots
        order, order_keys = self._order, self._keys
        if order is None or len(slots) != len(order):
            return False
        dirty = set()
        for dest in dests:
            hop, old = hops.get(dest), via.get(dest)
            if hop == old:
                continue
            if dest not in self.members:
                return False
            key = self.key(dest)
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
            allowed = dict(self.allowed)
            for hop in dirty:
                if lists[hop][1]:
                    allowed[hop] = tuple(lists[hop][1])
                else:
                    del lists[hop]
                    allowed.pop(hop, None)
            self.allowed = allowed
            self.routes = tuple(filter(None, slots))
        self._routed_hops = hops
        return True


class Routing:
    """The mutually claimed links (:class:`paths.LinkGraph`), our shortest-path tree over them,
    the first hop to every reachable node, and the :class:`RouteTable` made from those."""

    def __init__(self, me: bytes, members: Mapping, hop_cost_ms: int, prefixlen: int) -> None:
        self.me = me
        self.graph = paths.LinkGraph(hop_cost_ms)
        self.table = RouteTable(members, prefixlen)
        self.cost: dict[bytes, int] = {}
        self.pred: dict[bytes, bytes] = {}
        self.hops: dict[bytes, bytes] = {}  # destination -> first hop (replaced, never changed in place)
        self._targets: list[bytes] | None = []  # the nodes we have a path to, but us (None: to rebuild)
        self.applied_hops: Mapping[bytes, bytes] = {}  # the paths the applied data plane routes
        self._graph_dirty = True  # the mutually claimed links changed: the tree again

    def set_claims(self, node: bytes, claims: Mapping[bytes, int]) -> bool:
        """A node's claimed links; True if a mutually claimed link changed. (Two views of a
        paged node's links tell which of its pages changed: only their links are compared.)"""
        changed = self.graph.set_claims(node, claims, pages.changed_peers(self.graph.claims.get(node, {}), claims))
        self._graph_dirty |= changed
        return changed

    def forget(self, node: bytes) -> None:
        self._graph_dirty |= self.graph.remove(node)
        self.table.invalidate()

    def update_paths(self) -> tuple[Mapping[bytes, bytes], list[bytes] | None] | None:
        """The tree and first hops after the graph changed: (first hops before, the nodes whose
        path changed or None for maybe all), or None if the graph did not change."""
        if not self._graph_dirty:
            return None
        self._graph_dirty = False
        old_hops = self.hops
        self.cost, self.pred, changed = self.graph.update_tree(self.me, self.cost, self.pred)
        touched = self.graph.touched if changed else []
        if touched is None or len(touched) > FULL_HOPS_SHARE * len(self.pred):
            touched = None
            self.hops = paths.first_hops(self.pred, self.me)
        elif touched:
            # only paths got shorter: the touched nodes' first hops, cheapest first (a node's
            # predecessor was touched before it, or kept its first hop)
            hops, pred, me = dict(old_hops), self.pred, self.me
            for node in touched:
                parent = pred[node]
                hops[node] = node if parent == me else hops[parent]
            self.hops = hops
        if self.hops != old_hops:
            self.table.paths_changed(touched)
        if self.hops is not old_hops:
            self._targets = None
        return old_hops, touched

    @property
    def targets(self) -> list[bytes]:
        """The nodes we have a path to, but us (for gossip and sync; made when first asked for
        after the paths changed)."""
        if self._targets is None:
            self._targets = [i for i in self.hops if i != self.me]
        return self._targets

    def path(self, id8: bytes) -> list[bytes]:
        return paths.path_to(self.pred, self.me, id8)

    def direct(self, id8: bytes) -> bool:
        """Whether our path to ``id8`` is the direct link."""
        return self.hops.get(id8) == id8
