"""rtnetlink, the helper's one way to the kernel's links, addresses and routes.

The helper makes a handful of fixed-shape requests (a WireGuard link, one address, /32 routes,
three per-interface sysctls), so it encodes them itself over one NETLINK_ROUTE socket rather
than load a general netlink library: pyroute2 alone would be two thirds of the helper's memory
(see BENCHMARKS.md, "What a node costs"), and the route set needs batching anyway. Every
request is acknowledged; an error comes back as :class:`RtnlError` with the kernel's errno.
The kernel answers rtnetlink at once, so the calls are synchronous.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_ACK, F_EXCL, F_REPLACE, F_CREATE, F_DUMP = 0x1, 0x4, 0x200, 0x100, 0x400, 0x300
HDR = struct.Struct("=IHHII")
RTA = struct.Struct("=HH")
_ERR = struct.Struct("=i")
_BATCH = 256

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFF_UP = 1
IFA_F_NOPREFIXROUTE = 0x200


class RtnlError(Exception):
    def __init__(self, code: int, what: str) -> None:
        super().__init__(f"{what}: {os.strerror(code)}")
        self.code = code


def attr(kind: int, payload: bytes) -> bytes:
    data = RTA.pack(4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def parse_attrs(buf: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    off = 0
    while off + RTA.size <= len(buf):
        length, kind = RTA.unpack_from(buf, off)
        if length < RTA.size:
            break
        attrs[kind & 0x3FFF] = buf[off + RTA.size: off + length]
        off += (length + 3) & ~3
    return attrs


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload) of each message in a buffer from the kernel."""
    off = 0
    while off + HDR.size <= len(data):
        length, kind, _flags, seq, _pid = HDR.unpack_from(data, off)
        if length < HDR.size:
            return
        yield kind, seq, data[off + HDR.size: off + length]
        off += (length + 3) & ~3


def message(seq: int, kind: int, flags: int, body: bytes) -> bytes:
    return HDR.pack(HDR.size + len(body), kind, flags, seq, 0) + body


class Netlink:
    """One netlink socket (``protocol``); requests are answered, errors raised."""

    def __init__(self, protocol: int = socket.NETLINK_ROUTE) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def exchange(self, kind: int, flags: int, body: bytes, what: str,
                 ignore: frozenset[int] = frozenset()) -> list[tuple[int, bytes]]:
        """One request; its answers (type, payload) until the acknowledgement or the end of a
        dump. An error whose errno is not in ``ignore`` raises RtnlError."""
        seq = self.next_seq()
        self.sock.send(message(seq, kind, flags, body))
        answers = []
        while True:
            for k, s, payload in messages(self.sock.recv(1 << 20)):
                if s != seq:
                    continue
                if k == NLMSG_ERROR:
                    (err,) = _ERR.unpack_from(payload)
                    if err and -err not in ignore:
                        raise RtnlError(-err, what)
                    return answers
                if k == NLMSG_DONE:
                    return answers
                answers.append((k, payload))

    def batch(self, requests: list[tuple[int, bytes]], ignore: set[int], what: str) -> None:
        """Send acknowledged requests ((seq, message)) a batch at a time; raise for the first
        failure whose errno is not in ``ignore`` (after every request was answered)."""
        failures: list[int] = []
        for start in range(0, len(requests), _BATCH):
            chunk = requests[start:start + _BATCH]
            self.sock.send(b"".join(m for _, m in chunk))
            pending = {seq for seq, _ in chunk}
            while pending:
                for kind, seq, payload in messages(self.sock.recv(1 << 20)):
                    if kind == NLMSG_ERROR and seq in pending:
                        pending.discard(seq)
                        (err,) = _ERR.unpack_from(payload)
                        if err and -err not in ignore:
                            failures.append(-err)
        if failures:
            raise RtnlError(failures[0], f"{len(failures)} {what} failed" if len(failures) > 1 else what)


class Rtnl(Netlink):
    """NETLINK_ROUTE: links and addresses (routes: helper.routes)."""

    def request(self, kind: int, flags: int, body: bytes, what: str, ignore: frozenset[int] = frozenset()) -> list:
        """One acknowledged request; its answers (type, payload) before the acknowledgement."""
        return self.exchange(kind, flags | F_REQUEST | F_ACK, body, what, ignore)

    def dump(self, kind: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
        return self.exchange(kind, F_REQUEST | F_DUMP, body, what)

    # ------------------------------------------------------------------ links

    def link(self, ifname: str | None = None, index: int = 0) -> tuple[int, int, str | None] | None:
        """(index, flags, link kind) of a link by name or index, or None if there is none."""
        body = IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        if ifname is not None:
            body += attr(IFLA_IFNAME, ifname.encode() + b"\0")
        try:
            answers = self.request(RTM_GETLINK, 0, body, f"looking up {ifname or index}")
        except RtnlError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        for kind, payload in answers:
            if kind == RTM_NEWLINK:
                _family, _type, index, flags, _change = IFINFO.unpack_from(payload)
                info = parse_attrs(payload[IFINFO.size:]).get(IFLA_LINKINFO)
                link_kind = parse_attrs(info).get(IFLA_INFO_KIND) if info is not None else None
                return index, flags, link_kind.rstrip(b"\0").decode() if link_kind is not None else None
        return None

    def add_link(self, ifname: str, link_kind: str) -> None:
        body = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, ifname.encode() + b"\0") \
            + attr(IFLA_LINKINFO, attr(IFLA_INFO_KIND, link_kind.encode()))
        self.request(RTM_NEWLINK, F_CREATE | F_EXCL, body, f"creating {ifname}")

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, 0, IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP), "setting the link up")

    def delete_link(self, index: int) -> None:
        self.request(RTM_DELLINK, 0, IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0), "deleting the link")

    # ------------------------------------------------------------------ addresses

    def addresses(self, index: int) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        """The link's addresses, as interfaces (address/prefix length)."""
        return [iface for at, iface in self.all_addresses() if at == index]

    def all_addresses(self) -> list[tuple[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
        """Every address of the box: (link index, address/prefix length)."""
        found = []
        for kind, payload in self.dump(RTM_GETADDR, IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0), "listing addresses"):
            if kind != RTM_NEWADDR:
                continue
            _family, prefixlen, _flags, _scope, addr_index = IFADDR.unpack_from(payload)
            attrs = parse_attrs(payload[IFADDR.size:])
            raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
            if raw is not None:
                found.append((addr_index, ipaddress.ip_interface((ipaddress.ip_address(raw), prefixlen))))
        return found

    def _address(self, kind: int, flags: int, index: int, iface, extra: bytes, what: str) -> None:
        family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        packed = iface.ip.packed
        body = IFADDR.pack(family, iface.network.prefixlen, 0, 0, index) + attr(IFA_LOCAL, packed) \
            + attr(IFA_ADDRESS, packed) + extra
        self.request(kind, flags, body, what)

    def add_address(self, index: int, iface, addr_flags: int = 0) -> None:
        self._address(RTM_NEWADDR, F_CREATE | F_EXCL, index, iface, attr(IFA_FLAGS, struct.pack("=I", addr_flags)),
                      f"adding {iface}")

    def delete_address(self, index: int, iface) -> None:
        self._address(RTM_DELADDR, 0, index, iface, b"", f"removing {iface}")
