"""Path selection: symmetric, unique, and consistent with WireGuard's cryptokey routing."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from wg_netmanager.controller import paths


def node(i: int) -> bytes:
    return i.to_bytes(8, "big")


@st.composite
def graphs(draw):
    n = draw(st.integers(2, 14))
    claims = {node(i): {} for i in range(n)}
    edges = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.integers(1, 40),
                                    st.integers(1, 40), st.booleans()), max_size=40))
    for a, b, rtt_ab, rtt_ba, mutual in edges:
        if a == b:
            continue
        claims[node(a)][node(b)] = rtt_ab
        if mutual:
            claims[node(b)][node(a)] = rtt_ba
    hop = draw(st.sampled_from([0, 5, 100]))
    return claims, hop


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_paths_are_symmetric_and_allowed_ips_match_routes(case):
    claims, hop_cost = case
    graph = paths.build_graph(claims, hop_cost)
    nodes = list(claims)
    trees = {x: paths.shortest_tree(graph, x) for x in nodes}
    for x in nodes:
        for d in nodes:
            fwd = paths.path_to(trees[x][1], x, d)
            back = paths.path_to(trees[d][1], d, x)
            assert fwd == back[::-1], (x, d, fwd, back)
    # X's allowed IPs for neighbour G = destinations X routes via G
    #                                 = sources whose traffic to X arrives via G
    for x in nodes:
        hops = paths.first_hops(trees[x][1], x)
        for g in set(hops.values()):
            routed_via_g = {d for d, h in hops.items() if h == g}
            arriving_via_g = {s for s in nodes if s != x and (p := paths.path_to(trees[s][1], s, x)) and p[-2] == g}
            assert routed_via_g == arriving_via_g


def test_one_sided_claims_make_no_edge():
    a, b = node(1), node(2)
    assert paths.build_graph({a: {b: 5}, b: {}}, 0) == {}
    assert paths.build_graph({a: {b: 5}, b: {a: 9}}, 1) == {a: {b: 10}, b: {a: 10}}


def test_direct_beats_relay_unless_much_slower():
    a, b, r = node(1), node(2), node(3)
    claims = {a: {b: 60, r: 10}, b: {a: 60, r: 10}, r: {a: 10, b: 10}}
    _, pred = paths.shortest_tree(paths.build_graph(claims, 100), a)
    assert paths.path_to(pred, a, b) == [a, b]  # 160 direct < 220 relayed
    _, pred = paths.shortest_tree(paths.build_graph(claims, 0), a)
    assert paths.path_to(pred, a, b) == [a, r, b]  # without a hop cost the faster relay wins


def test_equal_cost_ties_break_the_same_way_from_both_ends():
    rng = random.Random(5)
    for _ in range(50):
        n = 8
        claims = {node(i): {} for i in range(n)}
        for i in range(n):
            for j in range(i + 1, n):
                if rng.random() < 0.5:
                    claims[node(i)][node(j)] = claims[node(j)][node(i)] = 10  # all equal
        graph = paths.build_graph(claims, 100)
        for i in range(n):
            for j in range(n):
                fwd = paths.path_to(paths.shortest_tree(graph, node(i))[1], node(i), node(j))
                back = paths.path_to(paths.shortest_tree(graph, node(j))[1], node(j), node(i))
                assert fwd == back[::-1]


@settings(max_examples=200, deadline=None)
@given(graphs(), st.lists(st.tuples(st.integers(0, 13), st.dictionaries(st.integers(0, 13), st.integers(1, 40),
                                                                          max_size=5)), max_size=12),
       st.lists(st.integers(0, 13), max_size=3))
def test_link_graph_kept_incrementally_equals_a_rebuild(case, updates, removals):
    """The core keeps the graph up to date claim by claim: the same edges, the same trees."""
    claims, hop_cost = case
    incremental = paths.LinkGraph(hop_cost)
    for a, links in claims.items():
        incremental.set_claims(a, links)
    current = {a: dict(links) for a, links in claims.items()}
    for i, links in updates:
        new = {node(j): rtt for j, rtt in links.items()}
        before = paths.build_graph(current, hop_cost)
        current[node(i)] = new
        changed = incremental.set_claims(node(i), new)
        assert changed == (paths.build_graph(current, hop_cost) != before)
    for i in removals:
        current.pop(node(i), None)
        incremental.remove(node(i))
    graph = paths.build_graph(current, hop_cost)
    assert {a: {b: paths.edge_cost(a, b, w) for b, w in nbrs.items()} for a, nbrs in graph.items()} == \
        {a: nbrs for a, nbrs in incremental.edges.items() if nbrs}
    for source in current:
        assert incremental.shortest_tree(source) == paths.shortest_tree(graph, source)


@settings(max_examples=400, deadline=None)
@given(graphs(), st.lists(st.lists(st.tuples(st.integers(0, 13), st.dictionaries(
    st.integers(0, 13), st.integers(1, 40), max_size=5)), min_size=1, max_size=4), max_size=10),
    st.integers(0, 13))
def test_tree_kept_incrementally_equals_a_full_dijkstra(case, batches, source_index):
    """The core updates its shortest-path tree from the changed edges only: after every batch
    of changes it must be exactly the tree a full Dijkstra gives (same costs, same
    predecessors). Records arrive in bursts: an edge may appear, get cheaper or dearer, and
    change again before the tree is updated; the tree follows the edges as they are then, not
    a cost they had in between."""
    claims, hop_cost = case
    source = node(source_index)
    graph = paths.LinkGraph(hop_cost)
    for a, links in claims.items():
        graph.set_claims(a, links)
    cost, pred, _ = graph.update_tree(source, {}, {})
    for batch in batches:
        for i, links in batch:
            graph.set_claims(node(i), {node(j): rtt for j, rtt in links.items()})
        before = (dict(cost), dict(pred))
        cost, pred, changed = graph.update_tree(source, cost, pred)
        assert (cost, pred) == paths._dijkstra(graph.edges, source)
        assert changed or (cost, pred) == before


def test_an_edge_that_appeared_cheap_then_got_dear_does_not_seed_the_tree():
    a, b, c = node(1), node(2), node(3)
    graph = paths.LinkGraph(100)
    graph.set_claims(a, {c: 10})
    graph.set_claims(c, {a: 10})
    cost, pred, _ = graph.update_tree(a, {}, {})
    graph.set_claims(b, {c: 1})
    graph.set_claims(c, {a: 10, b: 1})
    graph.set_claims(b, {c: 500})
    graph.set_claims(c, {a: 10, b: 500})
    cost, pred, _ = graph.update_tree(a, cost, pred)
    assert (cost, pred) == paths._dijkstra(graph.edges, a)
    assert paths.latency_ms(cost[b], 2, 100) == 510


def test_an_edge_a_new_node_brought_cheap_then_dear_does_not_seed_the_tree():
    """The same with the edge made by a node's first claims, then changed."""
    a, b, c = node(1), node(2), node(3)
    graph = paths.LinkGraph(100)
    graph.set_claims(a, {c: 10})
    graph.set_claims(c, {a: 10, b: 1})
    cost, pred, _ = graph.update_tree(a, {}, {})
    graph.set_claims(b, {c: 1})  # b's first claims: the edge b-c appears, cheap
    assert graph.changes == [(b, c, None)]
    graph.set_claims(b, {c: 500})
    graph.set_claims(c, {a: 10, b: 500})
    cost, pred, _ = graph.update_tree(a, cost, pred)
    assert (cost, pred) == paths._dijkstra(graph.edges, a)
    assert paths.latency_ms(cost[b], 2, 100) == 510
