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
from collections.abc import Mapping

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
            graph.setdefault(a, {})[b] = max(rtt, back[a]) + hop_cost_ms
    return graph


def shortest_tree(graph: Graph, source: bytes) -> tuple[dict[bytes, int], dict[bytes, bytes]]:
    """Dijkstra: (cost, predecessor) for every node reachable from ``source``."""
    cost = {source: 0}
    pred: dict[bytes, bytes] = {}
    heap = [(0, source)]
    done: set[bytes] = set()
    while heap:
        c, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        for nbr, weight in graph.get(node, {}).items():
            if nbr in done:
                continue
            nc = c + (weight << _SHIFT) + tie_break(node, nbr)
            if nbr not in cost or nc < cost[nbr]:
                cost[nbr] = nc
                pred[nbr] = node
                heapq.heappush(heap, (nc, nbr))
    return cost, pred


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
