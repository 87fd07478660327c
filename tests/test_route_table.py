"""The route table kept incrementally equals one built from scratch (no simulator, no patching)."""

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from wg_netmanager.controller.core.routes import RouteTable


def member(i: int):
    return SimpleNamespace(info=SimpleNamespace(overlay_ip=f"10.1.{i // 250}.{i % 250 + 1}"))


def node(i: int) -> bytes:
    return i.to_bytes(8, "big")


steps = st.lists(st.tuples(st.sampled_from(["hops", "join", "move"]),
                           st.dictionaries(st.integers(0, 40), st.integers(0, 40), max_size=12)),
                 min_size=1, max_size=25)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_incremental_route_table_equals_a_rebuild(steps):
    members = {node(i): member(i) for i in range(20)}
    table = RouteTable(members, 32)
    hops: dict[bytes, bytes] = {}
    table.refresh(hops)
    for kind, change in steps:
        if kind == "join":  # new members (no path yet)
            for i in change:
                if node(i) not in members:
                    members[node(i)] = member(i)
                    table.added(node(i), table.key(node(i)))
        elif kind == "move":  # a member changes its address
            for i in change:
                if node(i) in members:
                    members[node(i)] = member(i + 100)
                    table.invalidate()
        else:  # some first hops change (to members only); a hop of None: the path went away
            hops = dict(hops)
            touched = []
            for dest, hop in change.items():
                if node(dest) in members and node(hop) in members:
                    hops[node(dest)] = node(hop)
                    touched.append(node(dest))
                elif node(dest) in hops:
                    del hops[node(dest)]
                    touched.append(node(dest))
            table.paths_changed(touched)
        table.refresh(hops)
        fresh = RouteTable(members, 32)
        fresh.rebuild(hops)
        assert table.routes == fresh.routes
        assert table.allowed == fresh.allowed
