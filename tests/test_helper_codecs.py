"""UAPI text and route netlink encoding, without root."""

import struct

from wg_netmanager.helper.model import PeerOp
from wg_netmanager.helper.routes import _RTM_DELROUTE, _RTM_NEWROUTE, RTPROT_WGNM, encode_route, parse_route_dump
from wg_netmanager.helper.uapi import parse_get, render_ops

GET_REPLY = """private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a
listen_port=12912
public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
allowed_ip=192.168.4.4/32
endpoint=[abcd:23::33%2]:51820
last_handshake_time_sec=1
last_handshake_time_nsec=500000000
tx_bytes=38333
rx_bytes=2224
persistent_keepalive_interval=25
protocol_version=1
public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376
allowed_ip=10.1.1.3/32
allowed_ip=10.1.1.4/32
last_handshake_time_sec=0
last_handshake_time_nsec=0
persistent_keepalive_interval=0
""".splitlines()


def test_parse_get():
    dev = parse_get(GET_REPLY)
    assert dev.listen_port == 12912
    assert dev.private_key.hex().startswith("e84b5a")
    a, b = dev.peers.values()
    assert a.endpoint == "[abcd:23::33%2]:51820" and a.keepalive == 25
    assert a.last_handshake == 1.5 and a.rx_bytes == 2224 and a.tx_bytes == 38333
    assert b.allowed_ips == frozenset({"10.1.1.3/32", "10.1.1.4/32"})
    assert b.last_handshake == 0.0 and b.endpoint is None


def test_render_ops():
    text = render_ops([
        PeerOp(b"\x01" * 32, new=True, endpoint="198.51.100.2:51820", keepalive=25, allowed_ips=("10.1.1.2/32",)),
        PeerOp(b"\x02" * 32, replace_allowed_ips=True, allowed_ips=()),
        PeerOp(b"\x03" * 32, remove=True),
    ])
    assert text == (
        f"public_key={'01' * 32}\nendpoint=198.51.100.2:51820\npersistent_keepalive_interval=25\n"
        "allowed_ip=10.1.1.2/32\n"
        f"public_key={'02' * 32}\nreplace_allowed_ips=true\n"
        f"public_key={'03' * 32}\nremove=true\n")


def test_route_encoding_round_trips_through_dump_parser():
    msgs = [encode_route(1, _RTM_NEWROUTE, 7, "10.1.1.2/32", None, "10.1.1.1"),
            encode_route(2, _RTM_NEWROUTE, 7, "10.1.1.3/32", "10.1.1.2", "10.1.1.1"),
            encode_route(3, _RTM_NEWROUTE, 8, "10.1.1.4/32", None, None)]  # other device: ignored
    done = struct.pack("=IHHII", 20, 3, 2, 9, 0) + b"\0\0\0\0"
    routes, finished = parse_route_dump(b"".join(msgs) + done, 7)
    assert finished
    assert routes == {"10.1.1.2/32": None, "10.1.1.3/32": "10.1.1.2"}


def test_route_messages_carry_our_protocol():
    for cmd in (_RTM_NEWROUTE, _RTM_DELROUTE):
        msg = encode_route(1, cmd, 3, "10.1.1.2/32", None, None)
        assert msg[16 + 5] == RTPROT_WGNM
        assert struct.unpack_from("=I", msg)[0] == len(msg)


def test_a_device_route_of_an_older_version_is_reported_for_replacement():
    """Routes without a gateway (older versions made them: they let a relay send ICMP
    redirects) differ from every desired route, so the next Apply replaces them."""
    from wg_netmanager.helper.model import RouteSpec, plan_routes
    from wg_netmanager.helper.routes import LEGACY_DEVICE_ROUTE

    legacy = bytearray(encode_route(1, _RTM_DELROUTE, 7, "10.1.1.2/32", None, None))  # (no gateway attribute)
    struct.pack_into("=H", legacy, 4, _RTM_NEWROUTE)
    done = struct.pack("=IHHII", 20, 3, 2, 9, 0) + b"\0\0\0\0"
    routes, _ = parse_route_dump(bytes(legacy) + done, 7)
    assert routes == {"10.1.1.2/32": LEGACY_DEVICE_ROUTE}
    add, replace, delete = plan_routes(routes, {"10.1.1.2/32": RouteSpec("10.1.1.2/32", None)})
    assert (add, delete) == ([], []) and replace == [RouteSpec("10.1.1.2/32", None)]


def test_rtnl_reads_links_and_addresses_and_names_the_kernels_errors():
    """The helper's own rtnetlink (helper.rtnl), read-only here: the loopback link and its
    address as iproute2 shows them; a missing link is None; a refused request carries errno.
    (Creating, addressing and removing a WireGuard link: tests/test_helper_netns.py.)"""
    import errno
    import ipaddress
    import socket

    import pytest

    from wg_netmanager.helper.rtnl import IFF_UP, Rtnl, RtnlError

    with Rtnl() as rtnl:
        index, flags, kind = rtnl.link("lo")
        assert index == socket.if_nametoindex("lo") and flags & IFF_UP and kind is None
        assert rtnl.link(index=index)[0] == index
        assert rtnl.link("wgnm-nosuch") is None
        assert ipaddress.ip_interface("127.0.0.1/8") in rtnl.addresses(index)
        with pytest.raises(RtnlError) as refused:
            rtnl.delete_link(2**31 - 1)  # (no such index)
        assert refused.value.code in (errno.ENODEV, errno.EPERM) and "deleting the link" in str(refused.value)
