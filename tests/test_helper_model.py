"""The helper's validation and declarative diff, without root."""

import base64
import ipaddress

import pytest

from wg_netmanager.helper.model import (
    MAX_PEERS,
    InvalidArgs,
    PeerState,
    RouteSpec,
    decode_key,
    parse_interface_address,
    parse_peers,
    parse_routes,
    plan_peers,
    plan_routes,
)

SUBNET = ipaddress.ip_network("10.1.1.0/24")


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def raw(n: int) -> bytes:
    return bytes([n]) * 32


def peers(*entries):
    return parse_peers([list(e) for e in entries], SUBNET, own_key=raw(99))


@pytest.mark.parametrize("entry,words", [
    ((key(1), "", ["10.1.2.5/32"], 0), "outside the managed subnet"),
    ((key(1), "", ["10.1.1.0/24"], 0), "not a host route"),
    ((key(1), "", ["0.0.0.0/0"], 0), "not a host route"),
    ((key(1), "", ["10.1.1.255/32"], 0), "broadcast"),
    ((key(1), "", ["fe80::1/128"], 0), "outside the managed subnet"),
    ((key(1), "", ["banana"], 0), "not an address"),
    (("abc", "", [], 0), "not valid base64"),
    ((base64.b64encode(b"x" * 31).decode(), "", [], 0), "31 bytes, not 32"),
    ((key(99), "", [], 0), "own key"),
    ((key(1), "198.51.100.1", [], 0), "ip:port"),
    ((key(1), "198.51.100.1:0", [], 0), "port must be"),
    ((key(1), "198.51.100.1:70000", [], 0), "port must be"),
    ((key(1), "vps.example:51820", [], 0), "not an IP address"),
    ((key(1), "0.0.0.0:51820", [], 0), "cannot be a peer"),
    ((key(1), "2001:db8::1:5", [], 0), "ip:port"),
    ((key(1), "", [], 86400), "keepalive"),
    # what WireGuard must never be told to send to (common/endpoints.py: the one rule)
    ((key(1), "127.0.0.1:51820", [], 0), "loopback"),
    ((key(1), "[::1]:51820", [], 0), "loopback"),
    ((key(1), "255.255.255.255:51820", [], 0), "broadcast"),
    ((key(1), "224.0.0.1:51820", [], 0), "multicast"),
    ((key(1), "240.0.0.1:51820", [], 0), "reserved"),
    ((key(1), "[fe80::1%eth0]:51820", [], 0), "link-local"),
    ((key(1), "[fe80::1]:51820", [], 0), "link-local"),
    ((key(1), "[::ffff:127.0.0.1]:51820", [], 0), "loopback"),  # (IPv4-mapped: 127.0.0.1 on the wire)
    ((key(1), "198.51.100.1:\u0668\u0660", [], 0), "ASCII digits"),
    # keys of small order: any private key agrees on a public secret with them
    ((base64.b64encode(bytes(32)).decode(), "", [], 0), "small order"),
    ((base64.b64encode(bytes([1]) + bytes(31)).decode(), "", [], 0), "small order"),
    ((base64.b64encode(bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")).decode(),
      "", [], 0), "small order"),
    # a peer may not own this node's overlay address, nor be sent to there
    ((key(1), "", ["10.1.1.1/32"], 0), "own address"),
    ((key(1), "10.1.1.1:51820", [], 0), "own overlay address"),
])
def test_peer_refusals(entry, words):
    with pytest.raises(InvalidArgs, match=words):
        parse_peers([list(entry)], SUBNET, own_key=raw(99), own_ip=ipaddress.ip_address("10.1.1.1"))


WIDE = ipaddress.ip_network("10.0.0.0/8")  # an overlay over a 10.128.1.0/24 LAN
FIXED = {ipaddress.ip_address("10.128.1.1"): "an address of this box (on eth0)",
         ipaddress.ip_address("10.128.1.2"): "static peer 10.1.1.2's endPoint"}


@pytest.mark.parametrize("peer_list,route_list,words", [
    # an endpoint inside the overlay subnet is fine; a /32 on an underlay address in use is not
    ([(key(1), "10.128.1.7:51820", ["10.1.1.7/32"], 0)], [("10.1.1.7/32", "")], None),
    ([(key(1), "10.128.1.7:51820", ["10.128.1.7/32"], 0)], [], "peer #0: allowed IP 10.128.1.7 is peer #0's endpoint"),
    ([(key(1), "10.128.1.7:51820", [], 0), (key(2), "", ["10.128.1.7/32"], 0)], [], "peer #1: allowed IP"),
    ([(key(1), "[::ffff:10.128.1.7]:51820", [], 0), (key(2), "", ["10.128.1.7/32"], 0)], [], "peer #0's endpoint"),
    ([(key(1), "", ["10.128.1.1/32"], 0)], [], "10.128.1.1 is an address of this box"),
    ([(key(1), "", ["10.128.1.2/32"], 0)], [], "static peer 10.1.1.2's endPoint"),
    ([(key(1), "10.128.1.7:51820", [], 0)], [("10.128.1.1/32", "")], "route #0: destination 10.128.1.1"),
    ([(key(1), "10.128.1.7:51820", [], 0)], [("10.1.1.9/32", "10.128.1.7")], "route #0: gateway 10.128.1.7"),
])
def test_no_overlay_route_on_an_underlay_address_in_use(peer_list, route_list, words):
    """common.endpoints.collision, as the helper applies it (check_underlay): allowed IPs, routes
    and gateways against the endpoints of the resulting peer set, the static endPoints and this
    box's own addresses."""
    from wg_netmanager.helper.model import check_underlay, peer_set_endpoints

    desired = parse_peers([list(e) for e in peer_list], WIDE, own_key=raw(99))
    routes = parse_routes([list(r) for r in route_list], WIDE, None)
    endpoints = peer_set_endpoints(desired, {})
    if words is None:
        assert ipaddress.ip_address("10.128.1.7") in endpoints
        check_underlay(desired, routes, endpoints, FIXED)
    else:
        with pytest.raises(InvalidArgs, match=words + ".*routing it into the tunnel would loop"):
            check_underlay(desired, routes, endpoints, FIXED)


def test_a_kept_endpoint_counts_as_in_use():
    """An empty endpoint keeps the live one: that one is in use too."""
    from wg_netmanager.helper.model import check_underlay, peer_set_endpoints

    desired = parse_peers([[key(1), "", [], 0], [key(2), "", ["10.128.1.7/32"], 0]], WIDE, own_key=raw(99))
    live = {raw(1): PeerState(raw(1), endpoint="10.128.1.7:51820")}
    with pytest.raises(InvalidArgs, match="peer #0's endpoint"):
        check_underlay(desired, {}, peer_set_endpoints(desired, live), {})


def test_the_leak_guard_covers_the_subnet_or_else_every_address_routed():
    from wg_netmanager.helper.model import guard_prefixes

    net, addr = ipaddress.ip_network, ipaddress.ip_address
    routed = ["10.1.1.3/32", "10.1.1.4/32", "10.128.1.7/32"]
    # apart from the underlay (the usual case), or inside a LAN's wider range: the subnet itself
    assert guard_prefixes(net("10.1.1.0/24"), [net("0.0.0.0/0"), net("192.168.1.0/24")], [], routed) == \
        ["10.1.1.0/24"]
    assert guard_prefixes(net("10.1.1.0/24"), [net("10.0.0.0/8")], [addr("198.51.100.2")], routed) == \
        ["10.1.1.0/24"]
    # the subnet contains a LAN, or an endpoint (a static peer behind the default route), or is
    # the LAN: a host route per address routed, none on an endpoint in use
    for routes, endpoints in (([net("10.128.1.0/24")], []), ([], [addr("10.200.0.5")]),
                              ([net("10.0.0.0/8")], [addr("10.128.1.7")])):
        expected = ["10.1.1.3/32", "10.1.1.4/32"] + ([] if addr("10.128.1.7") in endpoints else ["10.128.1.7/32"])
        assert guard_prefixes(WIDE, routes, endpoints, routed) == expected


def test_peer_set_level_refusals():
    with pytest.raises(InvalidArgs, match="listed twice"):
        peers((key(1), "", [], 0), (key(1), "", [], 0))
    with pytest.raises(InvalidArgs, match="given to peer #0 and peer #1"):
        peers((key(1), "", ["10.1.1.2/32"], 0), (key(2), "", ["10.1.1.2"], 0))
    with pytest.raises(InvalidArgs, match="exceed the cap"):
        parse_peers([[key(1), "", [], 0]] * (MAX_PEERS + 1), SUBNET, None)
    with pytest.raises(InvalidArgs, match="must be"):
        parse_peers([["x"]], SUBNET, None)
    with pytest.raises(InvalidArgs, match=r"peer #1: public key .* is revoked in net.yaml"):
        parse_peers([[key(1), "", [], 0], [key(2), "", [], 0]], SUBNET, None, revoked=frozenset({raw(2)}))


def test_valid_peers_are_normalized():
    spec = peers((key(1), "[2001:db8::1]:51820", ["10.1.1.2"], 25))[raw(1)]
    assert spec.endpoint == "[2001:db8::1]:51820"
    assert spec.allowed_ips == frozenset({"10.1.1.2/32"})
    assert spec.keepalive == 25
    assert peers((key(1), "", [], 0))[raw(1)].endpoint is None


@pytest.mark.parametrize("routes,words", [
    ([("10.1.1.0/24", "")], "not a host route"),
    ([("0.0.0.0/0", "")], "not a host route"),
    ([("192.168.1.1/32", "")], "outside"),
    ([("10.1.1.5/32", "10.1.2.1")], "outside"),
    ([("10.1.1.5/32", "10.1.1.5")], "cannot be the destination"),
    ([("10.1.1.1/32", "")], "own address"),
    ([("10.1.1.5/32", ""), ("10.1.1.5", "")], "listed twice"),
])
def test_route_refusals(routes, words):
    with pytest.raises(InvalidArgs, match=words):
        parse_routes([list(r) for r in routes], SUBNET, ipaddress.ip_address("10.1.1.1"))


def test_interface_address_rules():
    assert str(parse_interface_address("10.1.1.1/24", SUBNET)) == "10.1.1.1/24"
    assert str(parse_interface_address("10.1.1.1", SUBNET)) == "10.1.1.1/24"
    for bad in ("10.1.2.1/24", "10.1.1.1/16", "10.1.1.0/24", "x"):
        with pytest.raises(InvalidArgs):
            parse_interface_address(bad, SUBNET)
    with pytest.raises(InvalidArgs):
        decode_key(7)


def live(n, ips=(), endpoint=None, keepalive=0):
    return PeerState(raw(n), endpoint, frozenset(ips), keepalive)


def test_identical_state_plans_nothing():
    desired = peers((key(1), "198.51.100.2:51820", ["10.1.1.2/32", "10.1.1.3/32"], 25))
    current = {raw(1): live(1, ["10.1.1.2/32", "10.1.1.3/32"], "198.51.100.2:51820", 25)}
    assert plan_peers(current, desired) == []


def test_empty_endpoint_leaves_a_roamed_endpoint_alone():
    desired = peers((key(1), "", ["10.1.1.2/32"], 0))
    assert plan_peers({raw(1): live(1, ["10.1.1.2/32"], "203.0.113.9:4000")}, desired) == []


def test_relay_to_direct_is_make_before_break():
    # c (10.1.1.3) was reached via relay b; now c is direct.
    current = {raw(2): live(2, ["10.1.1.2/32", "10.1.1.3/32"]), raw(3): live(3, [], "198.51.100.3:1")}
    desired = peers((key(2), "", ["10.1.1.2/32"], 0), (key(3), "", ["10.1.1.3/32"], 0))
    ops = plan_peers(current, desired)
    # one op only: adding the IP to c moves it away from b atomically; b needs no change
    assert len(ops) == 1
    assert ops[0].public_key == raw(3) and ops[0].allowed_ips == ("10.1.1.3/32",)
    assert not ops[0].replace_allowed_ips


def test_shrinking_and_removal_come_last():
    current = {raw(1): live(1, ["10.1.1.2/32", "10.1.1.9/32"]), raw(4): live(4, ["10.1.1.4/32"])}
    desired = peers((key(1), "", ["10.1.1.2/32"], 0), (key(5), "198.51.100.5:1", ["10.1.1.5/32"], 0))
    ops = plan_peers(current, desired)
    kinds = [("new" if o.new else "remove" if o.remove else "replace" if o.replace_allowed_ips else "update")
             for o in ops]
    assert kinds[0] == "new"
    assert sorted(kinds[1:]) == ["remove", "replace"]
    replace = next(o for o in ops if o.replace_allowed_ips)
    assert replace.allowed_ips == ("10.1.1.2/32",)


def test_route_plan():
    live_routes = {"10.1.1.2/32": None, "10.1.1.3/32": "10.1.1.2", "10.1.1.9/32": None}
    desired = {"10.1.1.2/32": RouteSpec("10.1.1.2/32", None), "10.1.1.3/32": RouteSpec("10.1.1.3/32", None),
               "10.1.1.4/32": RouteSpec("10.1.1.4/32", "10.1.1.2")}
    add, replace, delete = plan_routes(live_routes, desired)
    assert [r.dst for r in add] == ["10.1.1.4/32"]
    assert [r.dst for r in replace] == ["10.1.1.3/32"]
    assert delete == ["10.1.1.9/32"]
    assert plan_routes({"10.1.1.2/32": None}, {"10.1.1.2/32": RouteSpec("10.1.1.2/32", None)}) == ([], [], [])


def test_kernel_backend_messages_round_trip_and_split_where_wg_would():
    """WireGuard's generic netlink messages (helper.kernel), as the kernel would read them back:
    changes of many peers share a request; a peer whose allowed IPs do not fit continues in
    the next one with its key alone (the kernel adds to what the first part set). Against the
    kernel itself: tests/test_kernel_guest.py."""
    from wg_netmanager.helper.kernel import (
        WGDEVICE_A_PEERS,
        decode_endpoint,
        encode_endpoint,
        encode_peer_ops,
        nested,
        parse_device,
    )
    from wg_netmanager.helper.model import DeviceState, PeerOp

    for ep in ("198.51.100.7:51820", "[2001:db8::1]:443"):
        assert decode_endpoint(encode_endpoint(ep)) == ep
    ops = [PeerOp(bytes([i]) * 32, new=True, endpoint=f"198.51.100.{i}:51820", keepalive=25, replace_allowed_ips=True,
                  allowed_ips=(f"10.1.1.{i}/32",)) for i in range(1, 40)]
    big = [f"10.2.{i // 250}.{i % 250}/32" for i in range(2000)]
    ops.append(PeerOp(b"\xee" * 32, new=True, endpoint="[2001:db8::9]:51820", replace_allowed_ips=True,
                      allowed_ips=tuple(big)))
    requests = encode_peer_ops(ops)
    assert len(requests) == 4 and all(len(r) <= 16384 for r in requests)  # (2000 IPs: 48 KB)
    dev = DeviceState()
    parse_device([nested(WGDEVICE_A_PEERS, r) for r in requests], dev)
    assert len(dev.peers) == 40
    assert dev.peers[bytes([7]) * 32].endpoint == "198.51.100.7:51820"
    assert dev.peers[bytes([7]) * 32].keepalive == 25
    assert dev.peers[bytes([7]) * 32].allowed_ips == {"10.1.1.7/32"}
    assert dev.peers[b"\xee" * 32].allowed_ips == set(big)
    assert dev.peers[b"\xee" * 32].endpoint == "[2001:db8::9]:51820"
    removal = encode_peer_ops([PeerOp(b"\x01" * 32, remove=True)])
    assert len(removal) == 1 and len(removal[0]) < 64


def test_a_refused_value_is_quoted_short_never_echoed_whole():
    """A 1 MB string as an address, an endpoint or an interface name: the error (returned on the
    bus and logged) quotes at most QUOTE_MAX characters of it and says how long it was."""
    from wg_netmanager.common import QUOTE_MAX
    from wg_netmanager.helper.model import check_ifname, parse_endpoint, parse_interface_address

    huge = "1" * 1_000_000
    subnet = ipaddress.ip_network("10.1.1.0/24")
    for call in (lambda: parse_interface_address(huge, subnet), lambda: parse_endpoint(huge),
                 lambda: check_ifname(huge)):
        with pytest.raises(InvalidArgs) as refused:
            call()
        message = str(refused.value)
        assert len(message) < QUOTE_MAX + 150, message[:300]  # (the address says "... (1000000 characters)")
