"""Host routes on the WireGuard device, in batches over rtnetlink (helper.rtnl).

The route set (up to thousands of /32s) goes in batches of fixed-shape messages, two orders
of magnitude faster than one library call per route (see BENCHMARKS.md). Every route we
install carries our own protocol number, so a dump tells exactly which routes are ours:
routes of other origin are never deleted.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from .model import RouteSpec
from .rtnl import F_ACK, F_CREATE, F_DUMP, F_REPLACE, F_REQUEST, HDR, IFINFO, RTM_SETLINK, Rtnl, RtnlError, attr
from .rtnl import parse_attrs as _parse_attrs

RTPROT_WGNM = 157  # our rtm_protocol; `ip route show proto 157`
RT_TABLE_MAIN = 254

_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWROUTE, _RTM_DELROUTE, _RTM_GETROUTE = 24, 25, 26
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_PRIORITY, _RTA_PREFSRC, _RTA_TABLE = 1, 4, 5, 6, 7, 15
_SCOPE_UNIVERSE, _SCOPE_LINK = 0, 253
_RTN_UNICAST, _RTN_UNREACHABLE = 1, 7
#: the leak guard's metric: the last resort, below every other route to the same prefix
GUARD_METRIC = 0xFFFFFFFF
_RTNH_F_ONLINK = 4
_HDR = HDR
_RTMSG = struct.Struct("=BBBBBBBBI")
_attr = attr
#: a route change the kernel refused (its errno in ``code``)
RouteError = RtnlError


def _route_message(seq: int, cmd: int, body: bytes) -> bytes:
    """An RTM_NEWROUTE (create or replace) or RTM_DELROUTE request, acknowledged."""
    nl_flags = F_REQUEST | F_ACK | (F_CREATE | F_REPLACE if cmd == _RTM_NEWROUTE else 0)
    return _HDR.pack(_HDR.size + len(body), cmd, nl_flags, seq, 0) + body


def encode_route(seq: int, cmd: int, oif: int, dst: str, gateway: str | None, prefsrc: str | None) -> bytes:
    """A host route on the device, always with a gateway: the relay, or for a direct peer the
    destination itself (``10.1.1.3 via 10.1.1.3 dev wg0 onlink``). WireGuard picks the peer by
    allowed IPs either way; what the gateway changes is the kernel's view of the source when it
    forwards: with a plain device route (scope link) it takes a relayed packet's sender for a
    neighbour on the same link and sends it an ICMP redirect (send_redirects is ORed with
    net.ipv4.conf.all's, so the device's own 0 does not stop it); with a gateway it does not."""
    net = ipaddress.ip_network(dst)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    if cmd == _RTM_NEWROUTE and gateway is None:
        gateway = str(net.network_address)
    scope = _SCOPE_UNIVERSE
    if cmd == _RTM_DELROUTE:
        scope = 255  # RT_SCOPE_NOWHERE: match any scope when deleting
    flags = _RTNH_F_ONLINK if gateway is not None and cmd == _RTM_NEWROUTE else 0
    body = _RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_WGNM, scope, _RTN_UNICAST, flags)
    body += _attr(_RTA_DST, net.network_address.packed)
    body += _attr(_RTA_OIF, struct.pack("=I", oif))
    if cmd == _RTM_NEWROUTE:
        if gateway is not None:
            body += _attr(_RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        if prefsrc is not None and ipaddress.ip_address(prefsrc).version == net.version:
            body += _attr(_RTA_PREFSRC, ipaddress.ip_address(prefsrc).packed)
    return _route_message(seq, cmd, body)


def encode_guard(seq: int, cmd: int, subnet: str) -> bytes:
    """``unreachable <subnet> proto 157 metric 4294967295``: an overlay address with no /32 of
    ours gets "no route to host" here instead of following the default route out of the
    box in clear text."""
    net = ipaddress.ip_network(subnet)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    body = _RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_WGNM, _SCOPE_UNIVERSE,
                       _RTN_UNREACHABLE, 0)
    body += _attr(_RTA_DST, net.network_address.packed)
    body += _attr(_RTA_PRIORITY, struct.pack("=I", GUARD_METRIC))
    return _route_message(seq, cmd, body)


#: what parse_route_dump reports for a route of ours without a gateway (made by an older version):
#: it differs from every desired gateway, so the next Apply replaces it
LEGACY_DEVICE_ROUTE = "dev"


@dataclass
class RouteScan:
    """What one dump of the main table tells: our routes on the device, our leak guard's
    prefixes, and the underlay's own routes (other origin, other devices)."""

    ours: dict[str, str | None] = field(default_factory=dict)
    guard: set[str] = field(default_factory=set)
    underlay: list = field(default_factory=list)  # ip_network of every other unicast route


def parse_route_dump(data: bytes, oif: int, scan: RouteScan | None = None,
                     skip_oifs: frozenset[int] = frozenset()) -> tuple[dict[str, str | None], bool]:
    """Our routes on ``oif`` from a dump buffer: ({dst/len: gateway}, done); gateway None for a
    direct route (via the destination itself, see encode_route). With ``scan``, also the guard's
    prefixes and the underlay routes (not on ``oif`` nor ``skip_oifs``) go there."""
    routes: dict[str, str | None] = {}
    off = 0
    while off + _HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            break
        if kind == _NLMSG_DONE:
            return routes, True
        if kind == _NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, off + _HDR.size)
            raise RouteError(-err, "route dump")
        if kind == _RTM_NEWROUTE:
            family, dst_len, _s, _t, table, proto, _sc, rtype, _fl = _RTMSG.unpack_from(data, off + _HDR.size)
            if scan is not None and (proto != RTPROT_WGNM or rtype == _RTN_UNREACHABLE):
                _scan_other(scan, data[off + _HDR.size + _RTMSG.size: off + length], dst_len, table, proto, rtype,
                            family, oif, skip_oifs)
            if proto == RTPROT_WGNM:
                attrs = _parse_attrs(data[off + _HDR.size + _RTMSG.size: off + length])
                route_oif = struct.unpack("=I", attrs[_RTA_OIF])[0] if _RTA_OIF in attrs else 0
                if _RTA_TABLE in attrs:
                    table = struct.unpack("=I", attrs[_RTA_TABLE])[0]
                if route_oif == oif and table == RT_TABLE_MAIN and _RTA_DST in attrs:
                    dst = ipaddress.ip_address(attrs[_RTA_DST])
                    gw = str(ipaddress.ip_address(attrs[_RTA_GATEWAY])) if _RTA_GATEWAY in attrs else \
                        LEGACY_DEVICE_ROUTE
                    routes[f"{dst}/{dst_len}"] = None if gw == str(dst) else gw
        off += (length + 3) & ~3
    return routes, False


def _scan_other(scan: RouteScan, payload: bytes, dst_len: int, table: int, proto: int, rtype: int, family: int,
                oif: int, skip_oifs: frozenset[int]) -> None:
    attrs = _parse_attrs(payload)
    if _RTA_TABLE in attrs:
        table = struct.unpack("=I", attrs[_RTA_TABLE])[0]
    if table != RT_TABLE_MAIN:
        return
    raw = attrs.get(_RTA_DST, bytes(4 if family == socket.AF_INET else 16))
    net = ipaddress.ip_network((ipaddress.ip_address(raw), dst_len))
    if proto == RTPROT_WGNM:
        scan.guard.add(str(net))
        return
    route_oif = struct.unpack("=I", attrs[_RTA_OIF])[0] if _RTA_OIF in attrs else 0
    if rtype == _RTN_UNICAST and route_oif != oif and route_oif not in skip_oifs:
        scan.underlay.append(net)


_IFLA_AF_SPEC = 26
_IFLA_INET_CONF = 1
IPV4_DEVCONF_FORWARDING = 1
IPV4_DEVCONF_ACCEPT_REDIRECTS = 4  # (linux/ip.h: FORWARDING 1, MC_FORWARDING, PROXY_ARP, ACCEPT_REDIRECTS)
IPV4_DEVCONF_SEND_REDIRECTS = 6


def encode_ipv4_devconf(seq: int, index: int, values: dict[int, int]) -> bytes:
    """RTM_SETLINK setting per-interface IPv4 sysctls (net.ipv4.conf.<if>.*) without /proc."""
    conf = b"".join(_attr(key, struct.pack("=I", value)) for key, value in sorted(values.items()))
    af_inet = _attr(socket.AF_INET, _attr(_IFLA_INET_CONF, conf))
    body = IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0) + _attr(_IFLA_AF_SPEC, af_inet)
    return _HDR.pack(_HDR.size + len(body), RTM_SETLINK, F_REQUEST | F_ACK, seq, 0) + body


class RouteTable(Rtnl):
    """Our routes on a device, and its IPv4 settings."""

    def list(self, oif: int) -> dict[str, str | None]:
        return self.scan(oif).ours

    def scan(self, oif: int, skip_oifs: frozenset[int] = frozenset()) -> RouteScan:
        """One dump of the main table (both families): see RouteScan."""
        scan = RouteScan()
        for family in (socket.AF_INET, socket.AF_INET6):
            seq = self.next_seq()
            req = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            self.sock.send(_HDR.pack(_HDR.size + len(req), _RTM_GETROUTE, F_REQUEST | F_DUMP, seq, 0) + req)
            while True:
                part, done = parse_route_dump(self.sock.recv(1 << 20), oif, scan, skip_oifs)
                scan.ours.update(part)
                if done:
                    break
        return scan

    def set_guard(self, have: set[str], want: list[str]) -> None:
        """The leak guard from ``have`` to ``want`` (prefixes): new pieces first, then the old
        ones go (no moment without a guard)."""
        add = [p for p in want if p not in have]
        gone = sorted(have - set(want))
        msgs = []
        for p in add:
            seq = self.next_seq()
            msgs.append((seq, encode_guard(seq, _RTM_NEWROUTE, p)))
        if msgs:
            self.batch(msgs, set(), "adding the leak guard")
        self.remove_guard(gone)

    def remove_guard(self, prefixes: list[str]) -> None:
        msgs = []
        for p in prefixes:
            seq = self.next_seq()
            msgs.append((seq, encode_guard(seq, _RTM_DELROUTE, p)))
        if msgs:
            self.batch(msgs, {errno.ESRCH}, "removing the leak guard")

    def add_or_replace(self, oif: int, routes: list[RouteSpec], prefsrc: str | None) -> None:
        msgs = []
        for r in routes:
            seq = self.next_seq()
            msgs.append((seq, encode_route(seq, _RTM_NEWROUTE, oif, r.dst, r.gateway, prefsrc)))
        self.batch(msgs, set(), "route change(s)")

    def set_ipv4_devconf(self, index: int, values: dict[int, int]) -> None:
        seq = self.next_seq()
        self.batch([(seq, encode_ipv4_devconf(seq, index, values))], set(), "setting IPv4 sysctls")

    def delete(self, oif: int, dsts: list[str]) -> None:
        msgs = []
        for d in dsts:
            seq = self.next_seq()
            msgs.append((seq, encode_route(seq, _RTM_DELROUTE, oif, d, None, None)))
        self.batch(msgs, {errno.ESRCH}, "route removal(s)")
