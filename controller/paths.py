"""Path selection over the signed link state. Pure functions.

* An edge exists only if both ends claim the link (a liar can only lie about its own links).
* Its weight is symmetric: max of the two claimed RTTs plus a per-hop cost (so a direct
  link wins over a relay unless the relay is faster by more than the hop cost).
* Every edge also carries a tie-break derived from the unordered pair of ends; costs are
  compared as ``weight * 2**64 + sum(tie-breaks)``, so equal-latency paths are ordered the
  same way from both ends and the shortest path between two nodes is unique.

Unique + symmetric means: the path from D to X is the reverse of X's path to D, so X's
allowed IPs for neighbour G (whose traffic arrives via G) are exactly the destinations X
routes via G. That is what WireGuard's cryptokey routing needs.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping

Graph = dict[bytes, dict[bytes, int]]  # node -> neighbour -> weight (ms)

_TIE_BITS = 56  # tie-breaks < 2**56; < 256 hops cannot overflow into the weight part
_SHIFT = 64
_tie_cache: dict[tuple[bytes, bytes], int] = {}


def tie_break(a: bytes, b: bytes) -> int:
    key = (a, b) if a < b else (b, a)
    value = _tie_cache.get(key)
    if value is None:
        value = int.from_bytes(hashlib.blake2b(key[0] + key[1], digest_size=7).digest(), "big")
        if len(_tie_cache) > 1_000_000:
            _tie_cache.clear()
        _tie_cache[key] = value
    return value


def edge_weight(rtt_ab: int, rtt_ba: int, hop_cost_ms: int) -> int:
    """An edge's weight (ms): the larger of the two ends' RTT claims, plus the per-hop cost."""
    return max(rtt_ab, rtt_ba) + hop_cost_ms


class _CostMemo:
    """:func:`edge_cost` remembered per link, both ways round: every node of a mesh computes
    the same cost for the same link (the simulator's cores share one int). Bounded."""

    MAX_ENTRIES = 2_000_000

    def __init__(self) -> None:
        self.by_node: dict[bytes, dict[bytes, tuple[int, int]]] = {}  # a -> b -> (weight, cost)
        self.entries = 0

    def get(self, a: bytes, b: bytes, weight: int) -> int | None:
        of_a = self.by_node.get(a)
        entry = of_a.get(b) if of_a is not None else None
        return entry[1] if entry is not None and entry[0] == weight else None

    def put(self, a: bytes, b: bytes, weight: int, cost: int) -> None:
        if self.entries > self.MAX_ENTRIES:
            self.by_node.clear()
            self.entries = 0
        for x, y in ((a, b), (b, a)):
            of_x = self.by_node.setdefault(x, {})
            if y not in of_x:
                self.entries += 1
            of_x[y] = (weight, cost)


_costs = _CostMemo()


def edge_cost(a: bytes, b: bytes, weight: int) -> int:
    """The comparable cost of one edge: its weight (ms) above its tie-break."""
    cost = _costs.get(a, b, weight)
    if cost is None:
        cost = (weight << _SHIFT) + tie_break(a, b)
        _costs.put(a, b, weight, cost)
    return cost


def build_graph(claims: Mapping[bytes, Mapping[bytes, int]], hop_cost_ms: int) -> Graph:
    """``claims[a][b] = rtt`` as a claims it -> graph of mutually claimed links."""
    graph: Graph = {}
    for a, links in claims.items():
        for b, rtt in links.items():
            if a == b:
                continue
            back = claims.get(b)
            if back is None or a not in back:
                continue
            graph.setdefault(a, {})[b] = edge_weight(rtt, back[a], hop_cost_ms)
    return graph


def shortest_tree(graph: Graph, source: bytes) -> tuple[dict[bytes, int], dict[bytes, bytes]]:
    """Dijkstra over a :func:`build_graph` graph: (cost, predecessor) for every node reachable
    from ``source``."""
    return _dijkstra({a: {b: edge_cost(a, b, w) for b, w in nbrs.items()} for a, nbrs in graph.items()}, source)


def _dijkstra(edges: Mapping[bytes, Mapping[bytes, int]], source: bytes) -> tuple[dict[bytes, int], dict[bytes, bytes]]:
    """``edges[a][b]`` = :func:`edge_cost`. Costs are unique (tie-breaks), so the tree is too."""
    cost = {source: 0}
    pred: dict[bytes, bytes] = {}
    _relax(edges, cost, pred, [(0, source)])
    return cost, pred


def _relax(edges: Mapping[bytes, Mapping[bytes, int]], cost: dict[bytes, int], pred: dict[bytes, bytes],
           heap: list[tuple[int, bytes]], settled: list[bytes] | None = None) -> None:
    """Dijkstra's main loop from the (cost, node) entries in ``heap`` (a heap), in place. An
    entry whose node got cheaper since it was pushed is skipped. ``settled`` gets every node
    whose cost was final when it left the heap, cheapest first."""
    pop, push, empty = heapq.heappop, heapq.heappush, {}
    while heap:
        c, node = pop(heap)
        if c != cost[node]:
            continue
        if settled is not None:
            settled.append(node)
        for nbr, ec in edges.get(node, empty).items():
            nc = c + ec
            old = cost.get(nbr)
            if old is None or nc < old:
                cost[nbr] = nc
                pred[nbr] = node
                push(heap, (nc, nbr))


class LinkGraph:
    """:func:`build_graph` kept up to date one node's claims at a time (a mesh of N nodes
    changes a few claims at a time; rebuilding all edges for each change costs O(N) per
    change and node). Edges carry :func:`edge_cost` values, ready for Dijkstra."""

    def __init__(self, hop_cost_ms: int) -> None:
        self.hop_cost_ms = hop_cost_ms
        self.claims: dict[bytes, dict[bytes, int]] = {}
        self.edges: dict[bytes, dict[bytes, int]] = {}
        #: edges changed since the last :meth:`update_tree`: (a, b, cost before; None = absent)
        self.changes: list[tuple[bytes, bytes, int | None]] = []
        #: the nodes whose cost and predecessor the last :meth:`update_tree` changed, cheapest
        #: first (so a node's predecessor comes before it, or did not change); None = maybe all
        self.touched: list[bytes] | None = None

    def set_claims(self, node: bytes, links: Mapping[bytes, int], peers: Iterable[bytes] | None = None) -> bool:
        """Replace ``node``'s claimed links; True if an edge (a mutually claimed link) changed.
        ``links`` is kept, not copied (the core passes NodeInfo.link_map, read-only): do not
        change it afterwards. ``peers``: the peers whose claim changed, in id order, when the
        caller knows (None: compare every link)."""
        old = self.claims.get(node)
        # the new record's map also when it claims the same: the old record's goes with it
        # (kept, each unchanged refresh left a copy that only the graph held)
        self.claims[node] = links
        if peers is None:
            if old == links:
                return False
            # every peer, or those whose claim changed, in id order
            peers = links if not old else sorted({peer for peer, _ in old.items() ^ links.items()})
        changed = False
        update = self._update
        mine = self.edges.get(node)
        for peer in peers:
            back = self.claims.get(peer)
            if (back is None or node not in back) and (mine is None or peer not in mine):
                continue  # not claimed back, and no edge before: no edge after either
            if update(node, peer):
                changed = True
        return changed

    def remove(self, node: bytes) -> bool:
        changed = self.set_claims(node, {})
        self.claims.pop(node, None)
        return changed

    def _update(self, a: bytes, b: bytes) -> bool:
        if a == b:
            return False
        claims, edges = self.claims, self.edges
        ca, cb, ea = claims.get(a), claims.get(b), edges.get(a)
        ab = ca.get(b) if ca is not None else None
        ba = cb.get(a) if cb is not None else None
        current = ea.get(b) if ea is not None else None
        if ab is None or ba is None:
            if current is None:
                return False
            del ea[b]
            del edges[b][a]
            self.changes.append((a, b, current))
            return True
        cost = edge_cost(a, b, edge_weight(ab, ba, self.hop_cost_ms))
        if cost == current:
            return False
        if ea is None:
            ea = edges[a] = {}
        ea[b] = cost
        eb = edges.get(b)
        if eb is None:
            eb = edges[b] = {}
        eb[a] = cost
        self.changes.append((a, b, current))
        return True

    def shortest_tree(self, source: bytes) -> tuple[dict[bytes, int], dict[bytes, bytes]]:
        self.changes.clear()
        self.touched = None
        return _dijkstra(self.edges, source)

    def update_tree(self, source: bytes, cost: dict[bytes, int], pred: dict[bytes, bytes]
                    ) -> tuple[dict[bytes, int], dict[bytes, bytes], bool]:
        """``source``'s tree after :attr:`changes`, from the tree before them (updated in place
        when it can be). Most changes far away touch nothing: an edge that got worse or went away
        matters only if the tree used it (then: Dijkstra from scratch); one that got better or
        appeared, only if it shortens a path (then: Dijkstra from the nodes it improved). Costs
        are unique, so the result equals a full run (property-tested). The flag: whether the
        tree may have changed."""
        changes, self.changes = self.changes, []
        self.touched = None
        if source not in cost:
            return (*_dijkstra(self.edges, source), True)
        edges = self.edges
        # an edge may have changed more than once since: compare its cost before the first
        # change with its cost now (a cost seen in between is no longer true)
        before: dict[tuple[bytes, bytes], int | None] = {}
        for a, b, old in changes:
            before.setdefault((a, b) if a < b else (b, a), old)
        better = []  # edges that appeared or got cheaper: (a, b, cost now)
        for (a, b), old in before.items():
            ea = edges.get(a)
            new = ea.get(b) if ea else None
            if new == old:
                continue
            if old is not None and (new is None or new > old):
                if pred.get(b) == a or pred.get(a) == b:
                    return (*_dijkstra(edges, source), True)
                continue  # worse, and not in the tree: changes nothing
            better.append((a, b, new))
        self.touched = []
        heap: list[tuple[int, bytes]] = []
        get, push = cost.get, heap.append
        for a, b, new in better:
            ca, cb = get(a), get(b)
            if ca is not None and b != source and (cb is None or ca + new < cb):
                cost[b] = cb = ca + new
                pred[b] = a
                push((cb, b))
            if cb is not None and a != source and (ca is None or cb + new < ca):
                cost[a] = cb + new
                pred[a] = b
                push((cb + new, a))
        if not heap:
            return cost, pred, False
        heapq.heapify(heap)
        _relax(self.edges, cost, pred, heap, self.touched)
        return cost, pred, True


def path_to(pred: Mapping[bytes, bytes], source: bytes, dest: bytes) -> list[bytes]:
    """[source, ..., dest] or [] when unreachable."""
    if dest == source:
        return [source]
    if dest not in pred:
        return []
    path = [dest]
    while path[-1] != source:
        path.append(pred[path[-1]])
        if len(path) > len(pred) + 1:  # pragma: no cover - corrupt input
            return []
    path.reverse()
    return path


def first_hops(pred: Mapping[bytes, bytes], source: bytes) -> dict[bytes, bytes]:
    """destination -> first hop from ``source``."""
    hops: dict[bytes, bytes] = {}

    def hop(dest: bytes) -> bytes:
        chain = []
        node = dest
        while node not in hops:
            parent = pred[node]
            if parent == source:
                hops[node] = node
                break
            chain.append(node)
            node = parent
        first = hops[node]
        for n in chain:
            hops[n] = first
        return first

    for dest in pred:
        hop(dest)
    return hops


def latency_ms(cost: int, hops: int, hop_cost_ms: int) -> int:
    """The RTT part of a path cost (without per-hop costs and tie-breaks)."""
    return (cost >> _SHIFT) - hops * hop_cost_ms
