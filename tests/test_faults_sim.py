"""Faults of daily life in the simulator: a controller paused (suspend/resume, SIGSTOP), late
probe answers, and the flapping they must not cause."""

import itertools

import pytest

from wg_netmanager.controller.core.link import QUIET_PROBE_STATIC
from wg_netmanager.lab.chaoslab import INTERVAL, PAIRS
from wg_netmanager.lab.simnets import chaos_mesh, original_example, reboot_outage

NAMES = ["alpha", "beta", "charlie", "delta"]


def direct_everywhere(sim) -> bool:
    return all(sim.path(a, b) == [a, b] for a, b in itertools.combinations(NAMES, 2))


def downs_of(sim, since: float) -> list:
    return [(t, n, e.data) for t, n, e in sim.events if e.kind == "link_down" and t >= since]


@pytest.mark.parametrize("who,seconds", [("beta", 10), ("beta", 60), ("charlie", 10), ("charlie", 60)])
def test_a_paused_controller_recovers_without_flapping(who, seconds):
    sim = original_example(seed=3)
    assert sim.run_until_true(lambda: direct_everywhere(sim), 20) is not None
    sim.run_for(5)
    sim.pause(who, seconds)
    sim.run_for(seconds)
    resumed = sim.now
    # every pair direct again within seconds of the resume ...
    back = sim.run_until_true(lambda: direct_everywhere(sim), 15)
    assert back is not None, f"not all direct {sim.now - resumed:.1f} s after the resume"
    # ... and it stays so: no link goes down again, the data planes are quiet
    settled = sim.now + 5
    sim.run_for(5)
    applies = sum(n.apply_count for n in sim.nodes.values())
    sim.run_for(60)
    assert downs_of(sim, settled) == []
    assert direct_everywhere(sim)
    assert sum(n.apply_count for n in sim.nodes.values()) - applies <= len(NAMES)


def test_the_resumed_controller_keeps_its_data_plane():
    """Traffic flows; the paused node's own WireGuard forwarded throughout, so its peers kept
    their links (WireGuard rx progress): on resume it revalidates its links by probing instead
    of declaring them all down at once."""
    sim = original_example(seed=3)
    assert sim.run_until_true(lambda: direct_everywhere(sim), 20) is not None
    sim.run_for(5)
    for other in ("alpha", "beta", "delta"):
        sim.flow(other, "10.1.0.3", 0.2, 20)
    sim.pause("charlie", 10)
    sim.run_for(10)
    resumed = sim.now
    sim.run_for(3)
    assert [d for d in downs_of(sim, resumed) if d[1] == "charlie"] == []
    assert any(e.kind == "clock_jumped" for t, n, e in sim.events if n == "charlie" and t >= resumed)


def test_a_late_probe_answer_does_not_move_the_rtt_claim():
    sim = original_example(seed=3)
    assert sim.run_until_true(lambda: direct_everywhere(sim), 20) is not None
    sim.run_for(5)
    charlie = sim.nodes["charlie"].core
    delta8 = sim.nodes["delta"].core.id8
    before = charlie.links.get(delta8).claimed_rtt
    sim.pause("delta", 8)  # charlie's probes to delta are answered 8 s late
    sim.run_for(12)
    link = charlie.links.get(delta8)
    assert link.claimed_rtt <= max(before * 2, 10), (before, link.claimed_rtt)


def _applied(node) -> tuple:
    """What the node's WireGuard model and routes hold now."""
    peers = {key: (sorted(p.allowed), p.keepalive, p.endpoint) for key, p in node.peers.items()}
    return peers, dict(node.routes)


@pytest.mark.parametrize("who", ["beta", "charlie"])
def test_a_restarted_controller_changes_nothing_that_is_still_wanted(who):
    """systemctl restart wg-netmanager: the new controller resumes from what the old one saved;
    its first Apply changes nothing, and its peers never lose their paths to it."""
    sim = original_example(seed=3)
    assert sim.run_until_true(lambda: direct_everywhere(sim), 20) is not None
    sim.run_for(10)
    node = sim.nodes[who]
    before, applies = _applied(node), node.apply_count
    restarted = sim.now
    sim.restart_controller(who, down_for=1.0)
    assert sim.run_until_true(lambda: node.apply_count > applies, 20) is not None
    assert _applied(node) == before, "the first Apply after the restart changed the data plane"
    assert all(link.state == "up" for link in node.core.links.links.values())
    sim.run_for(10)
    assert direct_everywhere(sim)
    lost = [(t, n, e.data) for t, n, e in sim.events
            if t >= restarted and e.kind in ("node_unreachable", "path_changed", "link_down")]
    assert lost == []


def test_a_controller_killed_with_9_while_relayed_changes_nothing_that_carries_traffic():
    """kill -9 (no save at the stop) while charlie reaches delta through a relay (their LAN
    link cut): the new controller resumes from what the runtime saved last - every change of
    our own record is saved within STATE_SAVE_INTERVAL - and its first Apply changes nothing
    that carries traffic. (The link to the static peer, whose attempt starts before the first
    look at the data plane, was not adopted with its kept claim: it came up claiming the
    default 50 ms, and delta's relay moved to the other hub.)"""
    sim = original_example(seed=3)
    sim.model_saves = True
    assert sim.run_until_true(lambda: direct_everywhere(sim), 20) is not None
    sim.run_for(10)
    sim.flow("charlie", "10.1.0.4", 0.1, 120)
    _lan_cut(sim)
    assert sim.run_until_true(lambda: _relayed_both_ways(sim), 15) is not None
    sim.run_for(10)
    node = sim.nodes["charlie"]
    assert node.saved_state["links"] == node.core.persistent_state()["links"]
    assert sim.nodes["delta"].core.id8.hex() not in node.saved_state["links"]
    before, applies = _applied(node), node.apply_count
    restarted = sim.now
    sim.restart_controller("charlie", down_for=1.0, killed=True)
    assert sim.run_until_true(lambda: node.apply_count > applies, 20) is not None
    carrying = {key: peer for key, peer in before[0].items() if peer[0]}  # (not the attempt at delta's)
    after = _applied(node)
    assert ({key: peer for key, peer in after[0].items() if peer[0]}, after[1]) == (carrying, before[1]), \
        "the first Apply after the restart changed the data plane"
    sim.run_for(10)
    assert _relayed_both_ways(sim)
    lost = [(t, n, e.data) for t, n, e in sim.events
            if t >= restarted and e.kind in ("node_unreachable", "path_changed", "link_down")]
    assert lost == []


@pytest.mark.parametrize("who,down,traffic,kept", [
    ("alpha", 20, False, False), ("charlie", 20, False, False), ("delta", 5, False, False),
    ("beta", 20, False, False), ("beta", 5, False, False), ("beta", 2, False, False), ("beta", 5, True, False),
    ("beta", 2, True, False), ("beta", 1, True, True), ("beta", 5, True, True), ("delta", 1, True, True),
    ("charlie", 5, True, True)])
def test_a_rebooted_box_is_reachable_from_every_node_within_2_s(who, down, traffic, kept):
    """Both daemons and the device gone (a reboot), back after ``down`` seconds with a fresh
    controller, its saved state lost or (``kept``, a box's usual reboot) kept: the links that
    state lists are not in the new device, so nothing waits for them to be adopted. Every
    node reaches it, and it every node, within 2 s (the issue asks 3 s, the
    chaos bench's goal is 2 s; a static peer took 2.3-2.5 s here until its first "ready" was
    kept across the attempt it started over, 1.35-1.65 s since). (A static peer that was
    away long: the others' WireGuard is in its 5 s handshake back-off; its "ready" makes them
    start over with a fresh peer.) A static peer restarted with no state knows only who speaks
    to it: in an idle mesh, where its links are quiet, that is within QUIET_PROBE_STATIC plus the
    2 s; while the others send it traffic, within the 2 s."""
    within = 2.0 + (QUIET_PROBE_STATIC if who == "beta" and not traffic else 0)
    sim = original_example(seed=3)
    sim.run_for(25)
    others = [o for o in NAMES if o != who]
    if traffic:
        for o in others:
            sim.flow(o, sim.nodes[who].overlay_ip, 0.2, down + 30)
    sim.stop(who)
    sim.run_for(down)
    started = sim.now
    sim.restart(who, keep_state=kept)
    t = sim.run_until_true(lambda: all(sim.path(who, o) and sim.path(o, who) for o in others), 20, step=0.05)
    assert t is not None and t - started <= within, f"reachable after {t and t - started}"


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_a_reboot_with_saved_state_does_not_wait_for_a_node_that_is_gone(seed):
    """The static peer reboots (its saved state kept) while delta, which it linked to, is gone:
    its new device holds no session to adopt, so its first record does not wait for delta's
    (it waited RESTART_FIRST_RECORD_WAIT, 3 s, for a node that never came: 3.1-3.35 s here;
    the chaos mesh's static-peer reboots took 3.4 s for that). Within the issue's 3 s: seed 5
    takes 2.1 s, charlie's link being judged dead by its traffic only 2.4 s after beta went."""
    sim = original_example(seed=seed)
    sim.run_for(25)
    for o in ("alpha", "charlie"):
        sim.flow(o, sim.nodes["beta"].overlay_ip, 0.2, 40)
    sim.stop("delta")
    sim.stop("beta")
    sim.run_for(1)
    started = sim.now
    sim.restart("beta", keep_state=True)
    t = sim.run_until_true(lambda: all(sim.path("beta", o) and sim.path(o, "beta") for o in ("alpha", "charlie")),
                           20, step=0.05)
    assert t is not None and t - started <= 2.5, f"reachable after {t and t - started}"


@pytest.mark.parametrize("who,seed", [("charlie", 3), ("charlie", 15), ("charlie", 19), ("charlie", 13),
                                      ("beta", 2), ("beta", 22), ("beta", 16), ("beta", 8), ("beta", 4),
                                      ("gamma", 22), ("foxtrot", 8), ("alpha", 9)])
def test_a_rebooted_box_of_the_chaos_mesh_costs_every_pair_under_1_5_s(who, seed):
    """The chaos bench's reboot in its mesh (saved state kept, down 1 s, the ten pairs pinging
    one way at 5/s, as the bench's do): from the daemons' start, no pair goes without replies
    for more than 1.5 s (the bench's goal is 2 s with a real process's start-up on top). The
    cases are among the slowest of 232 reboots (bench/sim_reboots.py: every box, seeds 1-29).
    Charlie's four took 2.0 s before 48db771: its link to the static peer waited for the
    static end's next "ready" (the static end had started over while charlie was away). The
    static peer beta's first four took 2.0-3.2 s before the hubs' floods were handed on: the
    rebooted hub's records reached only the nodes it had links to again, and charlie, routing
    to it by another relay than it routed to charlie, dropped what came from it. Then 1.23 s
    at most, median 0.45 s; 1.05 s at most since a link back to a static peer is announced at
    once and the node asks the static peer for anti-entropy (the static peer's median 1.03 ->
    0.45 s)."""
    worst, pair = reboot_outage(who, seed)
    assert worst <= 1.5, f"{pair} went {worst:.2f} s without replies"


def test_a_hubs_flood_is_handed_on_only_to_nodes_the_hub_has_no_link_to():
    """Ordinary nodes hand a hub's flood on to their neighbours the hub has no link to: after
    the static peer's reboot, its records reach the home boxes through the nodes it linked to
    first. While the hub links to every node (a formed mesh), they send nothing for it."""
    sim = chaos_mesh(seed=2)
    sim.keep_events = False
    sim.run_for(40)
    ordinary = [n for n in sim.nodes if n != "beta"]

    def handed_on() -> int:
        return sum(sim.nodes[n].core.counters.get("tx_records_flood", 0) for n in ordinary)

    before = handed_on()
    sim.run_for(30)  # (RTT claims still move now and then: the hub floods them)
    assert handed_on() == before
    sim.stop("beta")
    sim.run_for(1)
    old_version = sim.nodes["beta"].core.version
    sim.restart("beta", keep_state=True)
    beta = sim.nodes["beta"].core
    t = sim.run_until_true(lambda: beta.version > old_version and all(
        sim.nodes[n].core.membership.get(beta.id8).record.version == beta.version for n in ordinary), 5, step=0.05)
    assert t is not None
    assert handed_on() > before


@pytest.mark.parametrize("seed", [1, 4, 6])
def test_a_rebooted_static_peer_learns_the_mesh_from_the_first_link_back(seed):
    """The chaos mesh's only static peer reboots (saved state kept, down 1 s) while the pairs
    ping: it has no other static peer to ask for the mesh, and learned it only when some node's
    anti-entropy happened to pick it, 1.01-1.06 s after its start (seeds 1-10). A node whose
    link to a static peer comes back asks it at once (Links.up -> Gossip.sync_with): 0.11-0.39 s."""
    sim = chaos_mesh(seed=seed)
    sim.keep_events = False
    for a, b in PAIRS:
        sim.pinger(a, b, INTERVAL, 60)
    sim.run_for(40)
    everyone = len(sim.nodes["beta"].core.members)
    sim.stop("beta")
    sim.run_for(1)
    beta = sim.restart("beta", keep_state=True)
    started = sim.now
    t = sim.run_until_true(lambda: len(beta.core.members) == everyone, 5, step=0.01)
    assert t is not None and t - started <= 0.6, t and t - started


def _lan_cut(sim) -> float:
    sim.underlay.blocked.add(frozenset(("192.168.1.30", "192.168.1.40")))
    return sim.now


def _relayed_both_ways(sim) -> bool:
    there, back = sim.path("charlie", "delta"), sim.path("delta", "charlie")
    return there is not None and len(there) == 3 and back == there[::-1]


def test_a_link_that_carries_traffic_fails_over_within_a_second():
    """A ping flows between the laptops; their LAN path dies: the data plane sent and heard
    nothing back, the link is probed fast and given up within a second (not the 3 s that
    probes alone take), and the traffic goes via a relay."""
    sim = original_example(seed=3)
    assert sim.run_until_true(lambda: direct_everywhere(sim), 20) is not None
    sim.run_for(5)
    sim.flow("charlie", "10.1.0.4", 0.01, 30)
    sim.run_for(3)
    cut = _lan_cut(sim)
    t = sim.run_until_true(lambda: _relayed_both_ways(sim), 10, step=0.01)
    assert t is not None and t - cut <= 1.0, f"failover took {t and t - cut:.2f} s"
    assert any(e.data.get("reason") == "no answer while traffic flows" for _, _, e in sim.events_of("link_down"))


def test_an_idle_link_fails_over_within_3_s_once_traffic_starts():
    sim = original_example(seed=3)
    assert sim.run_until_true(lambda: direct_everywhere(sim), 20) is not None
    sim.run_for(130)  # the LAN link has gone idle (no keepalives, no probes)
    cut = _lan_cut(sim)
    sim.run_for(5)
    started = sim.now
    sim.flow("charlie", "10.1.0.4", 0.01, 10)
    t = sim.run_until_true(lambda: _relayed_both_ways(sim), 10, step=0.01)
    assert cut < started and t is not None and t - started <= 3.0, f"failover took {t and t - started:.2f} s"


def test_traffic_does_not_make_healthy_links_flap():
    """Traffic on every link for two minutes, with links probed fast whenever a direction was
    silent for a moment: not one link goes down, and the data planes are not touched."""
    sim = original_example(seed=3)
    assert sim.run_until_true(lambda: direct_everywhere(sim), 20) is not None
    sim.run_for(5)
    for a, b in itertools.permutations(NAMES, 2):
        sim.flow(a, sim.nodes[b].overlay_ip, 0.3, 120)
    since = sim.now
    applies = sum(n.apply_count for n in sim.nodes.values())
    sim.run_for(120)
    assert downs_of(sim, since) == []
    assert sum(n.apply_count for n in sim.nodes.values()) == applies


def test_a_resumed_node_keeps_the_link_its_traffic_kept_alive():
    """One pair pings while the other end's controller is paused 10 s; its other links go
    quiet and its peers give them up. After the resume the mesh re-forms around it: paths
    change for a moment and the pinged link's traffic may come back another way - which must
    not make the link with live traffic look dead (chaos bench: it did, and took every
    other link with it)."""
    sim = _delta_pings_while_charlie_pauses(3)
    resumed = sim.now
    sim.run_for(20)
    downs = [d for d in downs_of(sim, resumed) if {d[1], d[2]["node"]} == {"charlie", "delta"}]
    assert downs == []
    assert sim.path("delta", "charlie") == ["delta", "charlie"]


def _delta_pings_while_charlie_pauses(seed: int):
    """delta pings charlie (0.2 s) from 2 s before charlie's controller pauses for 10 s; the
    simulator at the resume."""
    sim = original_example(seed=seed)
    assert sim.run_until_true(lambda: direct_everywhere(sim), 20) is not None
    sim.run_for(5)
    sim.flow("delta", "10.1.0.3", 0.2, 40)
    sim.run_for(2)
    sim.pause("charlie", 10)
    sim.run_for(10)
    return sim


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_probes_a_paused_end_answers_at_once_on_resume_are_no_rtt(seed):
    """delta pings charlie and probes it fast while charlie's controller is paused; on resume
    charlie answers every probe that waited, the oldest up to 3 s late, the latest 0.3 s. As
    Karn's rule for TCP: no probe sent while the one before was unanswered is an RTT sample, so
    delta's claim for the LAN link stays a LAN's (it reached 61-624 ms: the pair went through a
    relay)."""
    sim = _delta_pings_while_charlie_pauses(seed)
    charlie8 = sim.nodes["charlie"].core.id8
    claims = []
    for _ in range(100):
        sim.run_for(0.05)
        claims.append(sim.nodes["delta"].core.links.links[charlie8].claimed_rtt)
    assert max(claims) <= 10, claims


def test_a_core_under_churn_holds_no_more_than_the_mesh_size_bounds():
    """Bounded memory: an hour of the chaos bench's faults (simulated; one every 20 s on six of
    the eight boxes) must not make the containers of the two untouched boxes' cores grow with
    time - every cache is bounded by the mesh, not by the churn. What the last third of the
    hour holds is compared with the first third (after ten minutes of warm-up), as medians of
    the samples: a container that grows grows in most samples, while what one fault leaves for a
    while - probes to a paused static peer, kept unanswered for PENDING_PROBE_KEEP - is a spike
    in one sample (35 once, among medians of 8).
    (Unanswered probes to links that went down piled up, ~6 a minute at delta, towards the
    cap of 4096: now they expire.)"""
    import random
    import statistics

    from wg_netmanager.lab.sim import census
    from wg_netmanager.lab.simnets import SIM_FAULTS, chaos_mesh, inject

    sim = chaos_mesh(seed=1)
    sim.keep_events = False
    rng = random.Random(1)
    sim.run_for(20)
    samples = []  # every 100 s from the 10th minute on: {node: {path: items}}
    for step in range(180):
        kind = rng.choice(SIM_FAULTS)
        inject(sim, kind, "golf" if kind == "roam" else rng.choice(["alpha", "beta", "charlie", "echo", "foxtrot",
                                                                     "golf"]))
        sim.run_for(20)
        if step >= 30 and step % 5 == 4:  # (often: what a fault just left, e.g. probes, comes and goes)
            samples.append({name: census(sim.nodes[name].core, skip=(sim.cache, sim.pair_memo,
                                                                       sim.nodes[name].core.config))
                            for name in ("delta", "gamma")})
    third = len(samples) // 3
    first, last = samples[:third], samples[-third:]
    for name in ("delta", "gamma"):
        grown = {}
        for path in set().union(*(s[name] for s in samples)):
            before = statistics.median(s[name].get(path, 0) for s in first)
            after = statistics.median(s[name].get(path, 0) for s in last)
            if after > 8 + 1.5 * before:
                grown[path] = (before, after)
        assert grown == {}, f"{name}: containers grew with time under churn (first third, last third): {grown}"
