"""The core one message at a time (h11/aioquic style): two cores wired by hand, a clock we
move ourselves, every datagram delivered (or dropped) by the test."""

import pytest

from wg_netmanager.controller import wire
from wg_netmanager.controller.core import UP, Core, CoreConfig, EventKind, PeerObservation, StaticPeerConfig

KEY = bytes(range(32))
T0 = 1_800_000_000.0
HUB = ("198.51.100.1", 55555)  # the static peer's admin address (net.yaml)
LEAF = ("203.0.113.5", 55555)  # where the leaf speaks from
STATIC = (StaticPeerConfig("10.1.0.1", "198.51.100.1", 51820, 55555),)


class Rng:
    def __init__(self, seed: int) -> None:
        self.n = seed

    def __call__(self, k: int) -> bytes:
        self.n += 1
        return (self.n.to_bytes(8, "big") * (k // 8 + 1))[:k]


def core(name: str, ip: str, seed: int, wg_key: bytes, lan=(), **overrides) -> Core:
    cfg = CoreConfig(shared_key=KEY, subnet="10.1.0.0/16", overlay_ip=ip, name=name, wg_port=51820,
                     admin_port=55555, static_peers=STATIC, **overrides)
    return Core(cfg, bytes([seed]) * 32, wg_key, T0, Rng(seed * 1000), lan_endpoints=lan)


class Pair:
    """A hub (the static peer, public) and a leaf; ``now`` moves only when the test says so."""

    def __init__(self, **overrides) -> None:
        self.now = T0
        self.hub = core("hub", "10.1.0.1", 1, b"H" * 32, lan=[("198.51.100.1", 24)], **overrides)
        self.leaf = core("leaf", "10.1.0.2", 2, b"L" * 32, lan=[("192.168.1.5", 24)], **overrides)
        self.addr = {HUB: self.hub, ("10.1.0.1", 55555): self.hub, LEAF: self.leaf, ("10.1.0.2", 55555): self.leaf}
        self.source = {id(self.hub): HUB, id(self.leaf): LEAF}

    def flush(self, rounds: int = 10, drop=lambda sender, data, addr: False) -> list[tuple[str, int]]:
        """Deliver until nothing is in flight: [(sender name, message type)]."""
        seen = []
        for _ in range(rounds):
            moved = False
            for sender in (self.hub, self.leaf):
                for data, addr in sender.take_datagrams():
                    receiver = self.addr[addr]
                    seen.append((sender.config.name, receiver.transport.open(data).type & ~wire.AUTH_MAC))
                    # through the tunnel the source is the sender's overlay address
                    src = (sender.config.overlay_ip, 55555) if addr[0].startswith("10.1.") else self.source[id(sender)]
                    if not drop(sender, data, addr):
                        receiver.datagram_received(data, src, self.now)
                    moved = True
            if not moved:
                break
        return seen

    def tick(self, seconds: float = 0.0) -> None:
        self.now += seconds
        for c in (self.hub, self.leaf):
            if c.next_deadline() <= self.now:
                c.handle_timer(self.now)

    def apply(self) -> None:
        for c in (self.hub, self.leaf):
            c.dataplane_applied(c.dataplane_version, self.now)

    def run(self, steps: int, step: float = 0.5) -> None:
        """Time passes; every data plane is applied; every datagram is delivered."""
        for _ in range(steps):
            self.tick(step)
            self.apply()
            self.flush()

    def handshake(self) -> None:
        """WireGuard completed a handshake between the two (as GetState would report it)."""
        self.hub.dataplane_observed(self.now, {b"L" * 32: PeerObservation("203.0.113.5:51820", self.now, 100, 100)})
        self.leaf.dataplane_observed(self.now, {b"H" * 32: PeerObservation("198.51.100.1:51820", self.now, 100, 100)})


def kinds(c: Core) -> list[str]:
    return [str(e.kind) for e in c.take_events()]


def test_bootstrap_is_one_digest_and_its_answer():
    p = Pair()
    p.tick()
    sent = p.flush()
    # the leaf challenges the static peer's address (validation.StaticProof) and asks it with its
    # digest; the answer carries the hub's record and asks for the leaf's
    assert sent[:2] == [("leaf", wire.PROBE), ("leaf", wire.DIGEST)]
    assert ("hub", wire.RECORDS) in sent and ("hub", wire.REQUEST) in sent
    assert p.leaf.id8 in p.hub.members and p.hub.id8 in p.leaf.members
    assert "node_discovered" in kinds(p.hub) and "node_discovered" in kinds(p.leaf)


def test_a_replayed_datagram_is_dropped():
    p = Pair()
    p.tick()
    _challenge, (data, addr) = p.leaf.take_datagrams()
    p.hub.datagram_received(data, LEAF, p.now)
    p.hub.datagram_received(data, LEAF, p.now)
    assert p.hub.counters["drop_replay"] == 1 and p.hub.counters["rx_digest"] == 1


def _record(identity_seed: int, version: int, ip: str, wg_key: bytes, name: str = "x") -> bytes:
    info = wire.NodeInfo(wg_key, ip, 51820, 55555, name)
    return wire.make_record(wire.Identity(bytes([identity_seed]) * 32), version, wire.RECORD_NODE,
                            wire.encode_node_info(info)).raw


@pytest.mark.parametrize("ip,wg_key,reason", [
    ("10.2.0.9", b"Z" * 32, "outside_subnet"),
    ("10.1.0.1", b"Z" * 32, "claims_our_address"),
    ("10.1.0.2", b"Z" * 32, "address_bound"),  # the leaf's address, by another identity
    ("10.1.0.9", b"L" * 32, "wg_key_taken"),  # the leaf's WireGuard key, by another identity
])
def test_records_breaking_a_rule_are_refused_with_a_reason(ip, wg_key, reason):
    p = Pair()
    p.tick()
    p.flush()
    kinds(p.hub)
    sealed = wire.seal(p.hub.transport.key, bytes(24), wire.Identity(bytes([9]) * 32), wire.RECORDS,
                       int(p.now * 1000), 1, wire.body_records([_record(9, 1, ip, wg_key)]))
    p.hub.datagram_received(sealed, ("203.0.113.9", 55555), p.now)
    events = p.hub.take_events()
    assert [(str(e.kind), e.data["reason"]) for e in events] == [("claim_refused", reason)]
    assert len(p.hub.members) == 2


def _link_up(p: Pair) -> None:
    p.tick()
    p.flush()
    p.run(6, 0.3)  # attempts start, the data plane is applied, CONNECT and its ack cross
    p.handshake()
    p.tick(0.01)
    p.flush()


def test_link_attempt_up_and_probes_once_a_second():
    p = Pair()
    _link_up(p)
    assert p.leaf.links.get(p.hub.id8).state == UP and p.hub.links.get(p.leaf.id8).state == UP
    hub_events, leaf_events = kinds(p.hub), kinds(p.leaf)
    assert "link_up" in hub_events and "link_attempt" in leaf_events and "link_up" in leaf_events
    # both ends claim the link: each routes the other directly
    p.run(5)
    assert p.leaf.hops == {p.hub.id8: p.hub.id8} and p.hub.hops == {p.leaf.id8: p.leaf.id8}
    # the leaf (the initiator) probes, once a second; the hub answers
    probes = []
    for _ in range(10):
        p.tick(0.5)
        probes += [t for who, t in p.flush() if t == wire.PROBE]
    assert 4 <= len(probes) <= 6, probes


def test_a_link_without_answers_goes_down_once():
    p = Pair()
    _link_up(p)
    p.run(4)
    kinds(p.leaf)
    # the hub falls silent (its datagrams are lost) and WireGuard shows no rx progress
    for _ in range(12):
        p.tick(0.5)
        p.flush(drop=lambda sender, data, addr: sender is p.hub)
    events = p.leaf.take_events()
    downs = [e for e in events if e.kind == EventKind.LINK_DOWN]
    assert len(downs) == 1 and downs[0].data["reason"] == "probes unanswered"
    assert p.hub.id8 not in p.leaf.hops


def test_a_new_wireguard_key_under_the_same_identity_replaces_the_peer():
    p = Pair()
    _link_up(p)
    p.run(4)
    kinds(p.hub)
    p.leaf.set_wg_public_key(b"N" * 32, p.now)
    p.tick(0.1)
    p.flush()
    assert "wg_key_rotated" in kinds(p.hub)
    assert p.hub.members[p.leaf.id8].info.wg_public_key == b"N" * 32
    for _ in range(3):  # the link starts over: the new key is a new WireGuard peer
        p.tick(0.1)
    assert b"N" * 32 in {peer.public_key for peer in p.hub.dataplane.peers}
    assert b"L" * 32 not in {peer.public_key for peer in p.hub.dataplane.peers}


def test_a_late_probe_answer_is_dropped_when_unknown():
    p = Pair()
    _link_up(p)
    forged = wire.seal(p.leaf.transport.key, bytes(24), p.hub.identity, wire.PROBE_ACK, int(p.now * 1000) + 5, 99,
                       wire.body_probe_ack(123456, None, None))
    p.leaf.datagram_received(forged, HUB, p.now)
    assert p.leaf.counters["drop_unexpected_ack"] == 1


def test_a_clock_jump_revalidates_links_instead_of_dropping_them():
    """Our process was paused 10 s (SIGSTOP, suspend): the overdue timer must not read the
    silence as dead links; the links are probed at once and get the usual grace."""
    p = Pair()
    _link_up(p)
    p.run(4)
    kinds(p.leaf)
    p.now += 10
    p.leaf.handle_timer(p.now)
    events = p.leaf.take_events()
    assert [str(e.kind) for e in events] == ["clock_jumped"] and events[0].data["seconds"] >= 9
    sent = p.flush()
    assert ("leaf", wire.PROBE) in sent  # probed at once
    assert p.leaf.links.get(p.hub.id8).state == UP
    # a probe sent before the jump and answered after it does not become the link's RTT
    assert p.leaf.links.get(p.hub.id8).claimed_rtt < 100


def test_an_answer_to_a_probe_sent_before_a_jump_is_not_an_rtt():
    p = Pair()
    _link_up(p)
    p.run(4)
    link = p.leaf.links.get(p.hub.id8)
    claimed = link.claimed_rtt
    p.tick(1.0)  # the leaf probes ...
    probes = p.leaf.take_datagrams()
    assert probes
    p.now += 8  # ... and the answers come 8 s later
    p.leaf.handle_timer(p.now)
    for data, addr in probes:
        p.hub.datagram_received(data, LEAF if not addr[0].startswith("10.") else ("10.1.0.2", 55555), p.now)
    p.flush()
    assert link.claimed_rtt == claimed and link.rtt < 1000
    assert p.leaf.counters.get("probe_answer_late", 0) >= 1


def test_state_stays_bounded_under_churn():
    """Ten nodes publishing new versions for a simulated hour, speaking from changing
    addresses, and strangers that come and go: what the core holds grows with the mesh, not
    with time or churn."""
    p = Pair()
    p.tick()
    p.flush()
    hub = p.hub
    idents = [wire.Identity(bytes([40 + i]) * 32) for i in range(10)]
    for step in range(600):  # one round every 6 s for an hour
        p.now += 6
        raws = [_record(40 + i, step + 1, f"10.1.2.{i + 1}", bytes([60 + i]) * 32, f"n{i}") for i in range(10)]
        for i, ident in enumerate(idents):
            src = (f"203.0.113.{(step + i) % 200 + 1}", 40000 + step % 50)  # roaming, NAT ports
            sealed = wire.seal(hub.transport.key, bytes(24), ident, wire.RECORDS, int(p.now * 1000), step,
                               wire.body_records([raws[i]]))
            hub.datagram_received(sealed, src, p.now)
        stranger = wire.Identity((1000 + step).to_bytes(2, "big") * 16)
        sealed = wire.seal(hub.transport.key, bytes(24), stranger, wire.SYNC, int(p.now * 1000), 1,
                           wire.body_sync(0, bytes(16)))
        hub.datagram_received(sealed, ("198.51.100.77", 40000 + step), p.now)
        if hub.next_deadline() <= p.now:
            hub.handle_timer(p.now)
        hub.take_datagrams()
        hub.take_events()
    members = len(hub.members)
    assert members == 12
    assert len(hub.verified._seen) <= max(256, 4 * members)
    m = hub.membership
    window = int(2 * hub.config.replay_window / 6) + 2  # strangers seen in the last two replay windows
    assert len(m.replay) <= members + window
    assert len(m.underlay_addr) <= members + window and len(m.underlay_seen) <= members + window
    assert sum(len(v) for v in m.by_public_ip.values()) <= members + window
    assert len(hub.links.probes.pending) <= 16 and len(hub._planes) <= 16


def test_a_flood_of_fresh_identities_within_one_window_is_capped():
    """A holder of the shared key sends signed probes from 20 000 fresh identities within a few
    seconds (inside one replay window, so pruning by age cannot help): what the core keeps of
    strangers stays under STRANGERS_MAX; the members' state is untouched."""
    from wg_netmanager.controller.core.membership import STRANGERS_MAX

    p = Pair()
    _link_up(p)
    hub = p.hub
    members = len(hub.members)
    for k in range(20_000):
        stranger = wire.Identity(k.to_bytes(4, "big") * 8)
        sealed = wire.seal(hub.transport.key, bytes(24), stranger, wire.PROBE, int(p.now * 1000), 1,
                           wire.body_probe(k))
        hub.datagram_received(sealed, (f"198.51.100.{k % 250 + 1}", 40000 + k % 1000), p.now)
        if k % 1000 == 0:
            hub.take_datagrams()
    hub.take_datagrams()
    m = hub.membership
    assert len(m.replay) <= members + STRANGERS_MAX + 1
    assert len(m.underlay_seen) <= members + STRANGERS_MAX + 1 and len(m.underlay_addr) <= members + STRANGERS_MAX + 1
    assert sum(len(v) for v in m.by_public_ip.values()) <= members + STRANGERS_MAX + 1
    assert hub.counters.get("strangers_evicted", 0) > 0
    assert p.leaf.identity.public in m.replay  # (members are never evicted)


def test_a_damaged_saved_state_does_not_stop_the_controller():
    persisted = {"version": 5, "links": {"zz" * 8: 3, "ab" * 8: True, "cd" * 8: -1, "ef" * 8: 10**9, 7: 3,
                                         "0123456789abcdef": 12}}
    cfg = CoreConfig(shared_key=KEY, subnet="10.1.0.0/16", overlay_ip="10.1.0.2", name="leaf", wg_port=51820,
                     admin_port=55555, static_peers=STATIC)
    c = Core(cfg, bytes([2]) * 32, b"L" * 32, T0, Rng(1), persisted=persisted)
    assert c.links.kept_claims == {bytes.fromhex("0123456789abcdef"): 12}


def test_the_core_never_asks_for_an_endpoint_the_helper_refuses():
    """A record may advertise anything (a bug, a hostile key holder): endpoints the helper would
    refuse (loopback, broadcast) and a node's overlay address (common.endpoints.collision) are
    never link candidates, so one record cannot make every Apply fail."""
    leaf = core("leaf", "10.1.0.2", 2, b"L" * 32, lan=[("192.168.1.5", 24)])
    leaf.local.reflexive = ("203.0.113.5", 51820)  # (hole punching needs our own public endpoint)
    leaf.membership.bindings["10.1.0.9"] = b"Z" * 32  # (a node's overlay address)
    bad = [wire.Endpoint(wire.EP_REFLEXIVE, address, 51820)
           for address in ("127.0.0.1", "255.255.255.255", "10.1.0.9", "10.1.0.2", "224.0.0.1")]
    good = wire.Endpoint(wire.EP_REFLEXIVE, "198.51.100.9", 51820)
    info = wire.NodeInfo(b"X" * 32, "10.1.0.3", 51820, 55555, "other", endpoints=(*bad, good))
    assert [c[0] for c in leaf.links.candidates(info)] == [("198.51.100.9", 51820)]
    assert leaf.counters["endpoint_refused"] == len(bad)


def test_a_node_on_an_underlay_address_in_use_is_left_unrouted():
    """An overlay subnet may contain underlay addresses; a node whose overlay address is one in
    use here (this box's own, an endpoint, a static endPoint) gets no route and no allowed IP
    (the helper would refuse the Apply: common.endpoints.collision), and `status` says why."""
    p = Pair()
    _link_up(p)
    p.run(5)
    leaf_route = "10.1.0.2/32"
    assert leaf_route in [r.destination for r in p.hub.dataplane.routes]
    p.hub.set_lan_endpoints([("198.51.100.1", 24), ("10.1.0.2", 24)], p.now)  # (the leaf's overlay address)
    p.run(3)
    assert leaf_route not in [r.destination for r in p.hub.dataplane.routes]
    assert all(leaf_route not in peer.allowed_ips for peer in p.hub.dataplane.peers)
    assert p.hub.counters["route_refused_underlay"] == 1
    (refusal,) = p.hub.self_status()["refused"]
    assert refusal["name"] == "leaf" and "an address of this box outside the tunnel" in refusal["reason"]


def test_the_device_is_read_through_the_helper_when_its_counters_moved_or_every_few_seconds():
    from wg_netmanager.controller.core.node import OBSERVE_UNCHANGED
    p = Pair()
    _link_up(p)
    leaf = p.leaf
    # handshakes awaited or traffic flowing: every observation reads the device
    leaf.dataplane_observed(p.now, {b"H" * 32: PeerObservation("198.51.100.1:51820", p.now, 100, 100)})
    assert leaf.look_needed(p.now + 1, True)
    # at the slow pace: only when the device's packet counters moved, or OBSERVE_UNCHANGED later
    p.now += 60
    leaf.dataplane_observed(p.now, {b"H" * 32: PeerObservation("198.51.100.1:51820", p.now - 30, 100, 100)})
    assert leaf.observation_interval() == 1.0
    assert not leaf.look_needed(p.now + 1, False)
    assert leaf.look_needed(p.now + 1, True)
    assert leaf.look_needed(p.now + OBSERVE_UNCHANGED, False)


def test_device_packets_reads_this_namespaces_counters():
    from wg_netmanager.controller.runtime import device_packets
    rx, tx = device_packets("lo")
    assert rx >= 0 and tx >= 0
    assert device_packets("no-such-dev0") is None


def test_a_static_peers_address_goes_only_to_who_answers_there():
    """A holder of the shared key reaches a brand-new node first with a record that claims the
    static peer's overlay address (even from the static peer's own address, forged): refused,
    unbound, not reported as a conflict; the static peer answers the challenge sent to its
    net.yaml address and gets its address (validation.StaticProof)."""
    p = Pair()
    mallory = wire.Identity(bytes([9]) * 32)
    info = wire.NodeInfo(b"M" * 32, "10.1.0.1", 51820, 55555, "hub", wire.FLAG_STATIC)
    record = wire.make_record(mallory, 1, wire.RECORD_NODE, wire.encode_node_info(info)).raw
    for src in (("203.0.113.9", 55555), HUB):
        sealed = wire.seal(p.leaf.transport.key, bytes(24), mallory, wire.RECORDS, int(p.now * 1000),
                           1 if src != HUB else 2, wire.body_records([record]))
        p.leaf.datagram_received(sealed, src, p.now)
    assert p.leaf.counters["refused_static_unproven"] == 2
    assert "10.1.0.1" not in p.leaf.membership.bindings and len(p.leaf.members) == 1
    assert "claim_refused" not in kinds(p.leaf)
    p.tick()
    p.flush()
    assert p.leaf.membership.bindings["10.1.0.1"] == p.hub.identity.public
    assert p.leaf.counters["static_peers_proven"] == 1
    assert p.hub.id8 in p.leaf.members and p.leaf.local.is_hub(p.leaf.members[p.hub.id8].info)
    # an answer to the challenge from another identity proves nothing once the address is bound
    assert p.leaf.static_proof.answered(p.leaf.static_proof.challenge("10.1.0.1", p.now), mallory.public,
                                        p.leaf._unproven_static_peers(), p.now) is None
