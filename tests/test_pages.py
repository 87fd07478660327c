"""Link pages (controller/core/pages.py): a node with many links lists them in pages of their
own; the mesh sees the same links, a changed link re-sends one page, and the links go back
into the node's record when they are few again. PAGE_LINKS is lowered so that small simulated
meshes page (the code path is the one a 1,000-node mesh's hubs take)."""

import pytest

from wg_netmanager.controller import wire
from wg_netmanager.controller.core import pages
from wg_netmanager.controller.wire import LinkClaim, LinkPage, ProtocolError
from wg_netmanager.lab.simnets import star

ALICE = wire.Identity(bytes([1]) * 32)


def _links(n, seed=0):
    return [LinkClaim(wire.page_key(bytes([seed]) * 32, i), 10 + i) for i in range(n)]


def test_a_page_round_trips_and_a_link_in_the_wrong_page_is_refused():
    links = sorted(_links(40), key=lambda x: x.peer)
    parts = pages.split(links, 4)
    assert sum(map(len, parts)) == 40
    for index, part in enumerate(parts):
        page = LinkPage(index, 4, part)
        assert wire.decode_link_page(wire.encode_link_page(page)) == page
    wrong = LinkPage(0, 4, parts[1][:1])
    with pytest.raises(ProtocolError, match="bad_page"):
        wire.decode_link_page(wire.encode_link_page(wrong))
    for index, count in ((0, 3), (4, 4), (0, 0)):
        with pytest.raises(ProtocolError, match="bad_page"):
            wire.decode_link_page(wire.encode_link_page(LinkPage(index, count, ())))


def test_the_page_of_a_peer_as_a_shift_is_the_same_page():
    peers = [bytes(8), b"\xff" * 8, *(wire.page_key(ALICE.public, i) for i in range(200))]
    for bits in range(wire.MAX_PAGES.bit_length()):  # every count a page may have
        count = 1 << bits
        assert all(int.from_bytes(p[:4], "big") >> wire.page_shift(count) == wire.page_of(p, count) for p in peers)


def test_what_one_member_can_make_others_hold_in_pages_is_bounded(monkeypatch):
    # a page count past MAX_PAGES, or a page past MAX_PAGE_LINKS, is refused ...
    many = sorted(_links(3 * wire.MAX_PAGE_LINKS), key=lambda x: x.peer)
    for page in (LinkPage(0, 2 * wire.MAX_PAGES, ()), LinkPage(0, 1, tuple(many))):
        with pytest.raises(ProtocolError, match="bad_page"):
            wire.decode_link_page(wire.encode_link_page(page))
    # ... and never made: at the most pages, a page lists its fastest links
    monkeypatch.setattr(wire, "MAX_PAGES", 2)
    count = pages.page_count(many, 0)
    assert count == 2
    parts = pages.split(many, count)
    for index, part in enumerate(parts):
        assert len(part) == wire.MAX_PAGE_LINKS and list(part) == sorted(part, key=lambda x: x.peer)
        wire.decode_link_page(wire.encode_link_page(LinkPage(index, count, part)))
        mine = sorted((x for x in many if wire.page_of(x.peer, count) == index), key=lambda x: x.rtt_ms)
        assert {x.peer for x in part} == {x.peer for x in mine[:wire.MAX_PAGE_LINKS]}


def test_the_page_count_has_room_either_way():
    limit = pages.PAGE_LINKS
    assert pages.page_count(_links(limit), 0) == 0  # fits the record
    count = pages.page_count(_links(limit + 1), 0)
    assert count >= 2
    # a link less does not bring them back into the record, nor re-page them
    assert pages.page_count(_links(limit), count) == count
    assert pages.page_count(_links(limit // 2), count) == 0
    # every page within the limit, at any size
    for n in (200, 1000, 5000):
        links = _links(n, seed=n % 256)
        count = pages.page_count(links, 0)
        assert count & (count - 1) == 0
        assert max(map(len, pages.split(links, count))) <= limit
        assert pages.page_count(links, count) == count


def _claims_agree(sim, hub):
    """Every node sees ``hub``'s links as the hub claims them."""
    core = sim.nodes[hub].core
    mine = core.routing.graph.claims[core.id8]
    return all(node.core.routing.graph.claims.get(core.id8) == mine
               for name, node in sim.nodes.items() if node.alive and name != hub)


def test_a_hub_with_many_links_pages_them_and_a_changed_link_resends_one_page(monkeypatch):
    monkeypatch.setattr(pages, "PAGE_LINKS", 8)
    sim = star(40, seed=3, hubs=3, link_policy="static")
    assert sim.run_until_true(lambda: sim.converged(sample=200), 5, step=0.1) is not None
    sim.run_for(15)  # (the links' RTT claims settle ~10 s after they came up)
    hub = sim.nodes["hub0"].core
    me = hub.membership.get(hub.id8)
    assert me.info.is_paged and me.info.links == ()
    count = hub.membership.pages.count_of(hub.id8)
    assert count >= 4
    assert _claims_agree(sim, "hub0")
    # no record or page anywhere lists more than PAGE_LINKS links
    for node in sim.nodes.values():
        for held in node.core.membership.pages.items().values():
            assert len(held.page.links) <= 8
        assert all(len(m.info.links) <= 8 for m in node.core.members.values())
    held = {k: p.record.version for k, p in hub.membership.pages.items().items() if p.owner == hub.id8}
    record_version = me.record.version
    sim.stop("n7")
    assert sim.run_until_true(lambda: sim.nodes["n7"].core.id8 not in hub.routing.graph.claims[hub.id8], 20,
                              step=0.1) is not None
    sim.run_for(1)
    assert _claims_agree(sim, "hub0")
    now = {k: p.record.version for k, p in hub.membership.pages.items().items() if p.owner == hub.id8}
    assert now.keys() == held.keys()
    assert sum(now[k] != held[k] for k in now) == 1  # the page that listed n7, only
    assert hub.membership.get(hub.id8).record.version == record_version  # the record itself is unchanged
    # what every node holds of the hub: the record and its pages, as the hub has them
    for name, node in sim.nodes.items():
        if node.alive and name != "hub0":
            theirs = {k: p.record.version for k, p in node.core.membership.pages.items().items()
                      if p.owner == hub.id8}
            assert theirs == now, name


def test_links_go_back_into_the_record_when_few_and_every_node_drops_the_pages(monkeypatch):
    monkeypatch.setattr(pages, "PAGE_LINKS", 8)
    sim = star(12, seed=4, hubs=1, link_policy="static")
    assert sim.run_until_true(lambda: sim.converged(), 5, step=0.1) is not None
    sim.run_for(3)
    hub = sim.nodes["hub0"].core
    assert hub.membership.get(hub.id8).info.is_paged
    assert all(hub.id8 in node.core.membership.pages.of for node in sim.nodes.values())
    for i in range(7):
        sim.stop(f"n{i}")
    assert sim.run_until_true(lambda: not hub.membership.get(hub.id8).info.is_paged, 30, step=0.1) is not None
    assert sim.run_until_true(lambda: sim.converged(), 10, step=0.1) is not None
    sim.run_for(5)
    assert len(hub.membership.get(hub.id8).info.links) == 4
    for name, node in sim.nodes.items():
        if node.alive:
            assert hub.id8 not in node.core.membership.pages.of, name
            assert not any(p.owner == hub.id8 for p in node.core.membership.pages.items().values())
    assert _claims_agree(sim, "hub0")


def test_a_hub_whose_links_go_into_pages_never_looks_linkless(monkeypatch):
    """The hub's record stops listing its links before every node holds its pages: meanwhile
    each node keeps the links it knew (no path through the hub breaks)."""
    monkeypatch.setattr(pages, "PAGE_LINKS", 16)
    sim = star(12, seed=6, hubs=1, link_policy="static")
    assert sim.run_until_true(lambda: sim.converged(), 5, step=0.1) is not None
    sim.run_for(15)
    hub = sim.nodes["hub0"].core
    assert not hub.membership.get(hub.id8).info.is_paged
    monkeypatch.setattr(pages, "PAGE_LINKS", 4)  # (the hub pages at its next version)
    sim.stop("n0")
    gone = sim.nodes["n0"].core.id8
    kept = set(hub.routing.graph.claims[hub.id8]) - {gone}
    assert len(kept) == 10
    paged_at = None
    while paged_at is None or sim.now < paged_at + 3:
        assert sim.now < 60
        sim.run_for(0.02)
        if paged_at is None and hub.membership.get(hub.id8).info.is_paged:
            paged_at = sim.now
        for name, node in sim.nodes.items():
            if node.alive and name != "hub0":
                view = node.core.routing.graph.claims.get(hub.id8, {})
                assert kept <= view.keys(), (name, sim.now)
    assert hub.membership.get(hub.id8).info.is_paged
    assert hub.membership.pages.count_of(hub.id8) >= 4
    assert _claims_agree(sim, "hub0")
    for node in sim.nodes.values():
        if node.alive:
            assert hub.id8 not in node.core.membership.pages.before


def _page_record(links, index, count, version):
    page = LinkPage(index, count, tuple(link for link in links if wire.page_of(link.peer, count) == index))
    return wire.make_record(ALICE, version, wire.RECORD_LINKS, wire.encode_link_page(page)), page


def test_links_claimed_before_stand_until_a_page_of_the_new_count_covers_them():
    owner = ALICE.id8
    links = sorted(_links(30), key=lambda x: x.peer)
    claimed = {link.peer: link.rtt_ms for link in links}
    held = pages.Pages()
    held.paged(owner, claimed)  # the record stopped listing them; no page here yet
    assert held.links_of(owner) == claimed
    record, page = _page_record(links, 0, 2, 5)
    held.take(wire.page_key(ALICE.public, 0), owner, record, page)
    assert held.links_of(owner) == claimed  # page 1's half still from before
    newer = [LinkClaim(x.peer, x.rtt_ms + 1) for x in links]
    record, page = _page_record(newer, 1, 2, 6)
    old_view = held.links_of(owner)
    held.take(wire.page_key(ALICE.public, 1), owner, record, page)
    assert owner not in held.before
    view = held.links_of(owner)
    assert view == {x.peer: (x.rtt_ms + (wire.page_of(x.peer, 2) == 1)) for x in links}
    # the view tells the graph which links changed: page 1's, not page 0's
    in_1 = sorted(x.peer for x in links if wire.page_of(x.peer, 2) == 1)
    assert pages.changed_peers(old_view, view) == in_1 and len(view) == len(links)
    assert all(view.get(x.peer) == view[x.peer] and x.peer in view for x in links)
    assert pages.changed_peers(claimed, view) is None  # (not two views: every link compared)
    # the count doubles: the first page of 4 replaces a quarter, the rest stands
    record, page = _page_record(links[:-1], 3, 4, 7)
    held.take(wire.page_key(ALICE.public, 3), owner, record, page)
    view = held.links_of(owner)
    in_3 = [x.peer for x in links if wire.page_of(x.peer, 4) == 3]
    assert set(view) == set(claimed) - ({links[-1].peer} & set(in_3))
    assert held.count_of(owner) == 4
    # an older page of the old count is refused
    record, page = _page_record(links, 0, 2, 6)
    assert held.take(wire.page_key(ALICE.public, 0), owner, record, page) is None

