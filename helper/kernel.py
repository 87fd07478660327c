"""The in-kernel WireGuard backend, over WireGuard's generic netlink family.

Chosen when the ``wireguard`` link kind exists. Same interface as UapiBackend. The messages
are those of linux/wireguard.h (what ``wg`` sends), encoded here with helper.rtnl's
primitives: one request carries as many peer changes as fit (a peer with more allowed IPs than
fit continues in the next one, as ``wg`` does), so an Apply of 1000 peers is a handful of
round trips rather than one per peer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

from .model import DeviceState, PeerOp, PeerState
from .rtnl import F_ACK, F_DUMP, F_REQUEST, Netlink, RtnlError, attr

NETLINK_GENERIC = 16
GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 0x10, 3, 1, 2
GENL = struct.Struct("=BBH")  # cmd, version, reserved
WG_GENL_NAME, WG_GENL_VERSION = b"wireguard\0", 1
WG_CMD_GET_DEVICE, WG_CMD_SET_DEVICE = 0, 1
WGDEVICE_A_IFNAME, WGDEVICE_A_PRIVATE_KEY, WGDEVICE_A_PUBLIC_KEY = 2, 3, 4
WGDEVICE_A_LISTEN_PORT, WGDEVICE_A_PEERS = 6, 8
WGPEER_A_PUBLIC_KEY, WGPEER_A_FLAGS, WGPEER_A_ENDPOINT = 1, 3, 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, WGPEER_A_LAST_HANDSHAKE_TIME = 5, 6
WGPEER_A_RX_BYTES, WGPEER_A_TX_BYTES, WGPEER_A_ALLOWEDIPS = 7, 8, 9
WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS = 1, 2
WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGALLOWEDIP_A_CIDR_MASK = 1, 2, 3
NLA_F_NESTED = 0x8000
#: a request's size: well under the socket's buffers; ``wg`` splits at a page or two too
MAX_REQUEST = 16384
_U16, _U32, _U64 = struct.Struct("=H"), struct.Struct("=I"), struct.Struct("=Q")
_TIMESPEC = struct.Struct("=qq")


def nested(kind: int, payload: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, payload)


def iter_attrs(buf: bytes):
    """(type, payload) of each attribute, in order (nested arrays repeat their index)."""
    off = 0
    while off + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, off)
        if length < 4:
            return
        yield kind & 0x3FFF, buf[off + 4: off + length]
        off += (length + 3) & ~3


def encode_endpoint(text: str) -> bytes:
    host, _, port = text.rpartition(":")
    ip = ipaddress.ip_address(host.strip("[]"))
    if ip.version == 4:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", int(port)) + ip.packed + b"\0" * 8
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", int(port), 0) + ip.packed + struct.pack("=I", 0)


def decode_endpoint(raw: bytes) -> str | None:
    if len(raw) < 2:
        return None
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET and len(raw) >= 8:
        port, = struct.unpack_from("!H", raw, 2)
        return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{port}" if port else None
    if family == socket.AF_INET6 and len(raw) >= 24:
        port, = struct.unpack_from("!H", raw, 2)
        return f"[{socket.inet_ntop(socket.AF_INET6, raw[8:24])}]:{port}" if port else None
    return None


def _allowed_ip(index: int, cidr: str) -> bytes:
    net = ipaddress.ip_network(cidr, strict=False)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return nested(index, attr(WGALLOWEDIP_A_FAMILY, _U16.pack(family))
                  + attr(WGALLOWEDIP_A_IPADDR, net.network_address.packed)
                  + attr(WGALLOWEDIP_A_CIDR_MASK, bytes([net.prefixlen])))


def encode_peer_ops(ops: list[PeerOp], limit: int = MAX_REQUEST) -> list[bytes]:
    """The PEERS attribute's contents, one per request, each under ``limit`` bytes."""
    requests: list[bytes] = []
    peers: list[bytes] = []
    size = 0
    for op in ops:
        head = attr(WGPEER_A_PUBLIC_KEY, op.public_key)
        if op.remove:
            body, ips = head + attr(WGPEER_A_FLAGS, _U32.pack(WGPEER_F_REMOVE_ME)), []
        else:
            body = head + attr(WGPEER_A_FLAGS, _U32.pack(WGPEER_F_REPLACE_ALLOWEDIPS if op.replace_allowed_ips else 0))
            if op.endpoint is not None:
                body += attr(WGPEER_A_ENDPOINT, encode_endpoint(op.endpoint))
            if op.keepalive is not None:
                body += attr(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, _U16.pack(op.keepalive))
            ips = [_allowed_ip(i, cidr) for i, cidr in enumerate(op.allowed_ips)]
        while True:
            room = limit - size - len(body) - 8  # (the peer's and its ALLOWEDIPS' headers)
            take = 0
            used = 0
            while take < len(ips) and used + len(ips[take]) <= room:
                used += len(ips[take])
                take += 1
            if peers and (room < 0 or (ips and take == 0)):  # full: the rest goes in the next request
                requests.append(b"".join(peers))
                peers, size = [], 0
                continue
            peer = body + (nested(WGPEER_A_ALLOWEDIPS, b"".join(ips[:take])) if take else b"")
            peers.append(nested(len(peers), peer))
            size += len(peers[-1])
            ips = ips[take:]
            if not ips:
                break
            body = head  # (more of its allowed IPs: the same peer again, adding)
    if peers:
        requests.append(b"".join(peers))
    return requests


def parse_device(dumps: list[bytes], dev: DeviceState) -> None:
    """WG_CMD_GET_DEVICE answers (their attributes after the genl header) into ``dev``. A peer
    whose allowed IPs do not fit one message continues in the next with only its key."""
    for payload in dumps:
        for kind, value in iter_attrs(payload):
            if kind == WGDEVICE_A_PRIVATE_KEY and any(value):
                dev.private_key = bytes(value)
            elif kind == WGDEVICE_A_PUBLIC_KEY and any(value):
                dev.public_key = bytes(value)
            elif kind == WGDEVICE_A_LISTEN_PORT:
                dev.listen_port = _U16.unpack(value[:2])[0]
            elif kind == WGDEVICE_A_PEERS:
                for _index, peer_raw in iter_attrs(value):
                    _parse_peer(peer_raw, dev)


def _parse_peer(raw: bytes, dev: DeviceState) -> None:
    fields = dict(iter_attrs(raw))
    key = bytes(fields.get(WGPEER_A_PUBLIC_KEY, b""))
    if len(key) != 32:
        return
    peer = dev.peers.get(key) or PeerState(key)
    if WGPEER_A_ENDPOINT in fields:
        peer.endpoint = decode_endpoint(fields[WGPEER_A_ENDPOINT]) or peer.endpoint
    if WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL in fields:
        peer.keepalive = _U16.unpack(fields[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL][:2])[0]
    if WGPEER_A_LAST_HANDSHAKE_TIME in fields and len(fields[WGPEER_A_LAST_HANDSHAKE_TIME]) >= 16:
        sec, nsec = _TIMESPEC.unpack(fields[WGPEER_A_LAST_HANDSHAKE_TIME][:16])
        peer.last_handshake = sec + nsec / 1e9 if sec else 0.0
    if WGPEER_A_RX_BYTES in fields:
        peer.rx_bytes = _U64.unpack(fields[WGPEER_A_RX_BYTES][:8])[0]
    if WGPEER_A_TX_BYTES in fields:
        peer.tx_bytes = _U64.unpack(fields[WGPEER_A_TX_BYTES][:8])[0]
    if WGPEER_A_ALLOWEDIPS in fields:
        ips = set(peer.allowed_ips)
        for _index, ip_raw in iter_attrs(fields[WGPEER_A_ALLOWEDIPS]):
            a = dict(iter_attrs(ip_raw))
            family = _U16.unpack(a[WGALLOWEDIP_A_FAMILY][:2])[0]
            addr = socket.inet_ntop(family, a[WGALLOWEDIP_A_IPADDR])
            ips.add(f"{addr}/{a[WGALLOWEDIP_A_CIDR_MASK][0]}")
        peer.allowed_ips = frozenset(ips)
    dev.peers[key] = peer


class Genl(Netlink):
    """NETLINK_GENERIC, to WireGuard's family."""

    def __init__(self) -> None:
        super().__init__(NETLINK_GENERIC)
        self.family = self._family()

    def _exchange(self, kind: int, flags: int, cmd: int, version: int, attrs: bytes, what: str) -> list[bytes]:
        """One request; its answers' payloads after the genl header."""
        return [payload[GENL.size:] for _kind, payload in
                self.exchange(kind, flags, GENL.pack(cmd, version, 0) + attrs, what)]

    def _family(self) -> int:
        answers = self._exchange(GENL_ID_CTRL, F_REQUEST | F_ACK, CTRL_CMD_GETFAMILY, 1,
                                 attr(CTRL_ATTR_FAMILY_NAME, WG_GENL_NAME), "looking up WireGuard's netlink family")
        for payload in answers:
            for kind, value in iter_attrs(payload):
                if kind == CTRL_ATTR_FAMILY_ID:
                    return _U16.unpack(value[:2])[0]
        raise RtnlError(2, "looking up WireGuard's netlink family")  # (ENOENT)

    def get(self, ifname: str) -> DeviceState:
        dev = DeviceState()
        parse_device(self._exchange(self.family, F_REQUEST | F_DUMP, WG_CMD_GET_DEVICE, WG_GENL_VERSION,
                                    attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0"), f"reading {ifname}"), dev)
        return dev

    def set(self, ifname: str, device_attrs: bytes = b"", peers: bytes | None = None) -> None:
        attrs = attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0") + device_attrs
        if peers is not None:
            attrs += nested(WGDEVICE_A_PEERS, peers)
        self._exchange(self.family, F_REQUEST | F_ACK, WG_CMD_SET_DEVICE, WG_GENL_VERSION, attrs,
                       f"configuring {ifname}")


class KernelBackend:
    name = "kernel"

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname

    def _get_sync(self) -> DeviceState:
        with Genl() as genl:
            return genl.get(self.ifname)

    def _apply_sync(self, ops: list[PeerOp]) -> None:
        with Genl() as genl:
            for peers in encode_peer_ops(ops):
                genl.set(self.ifname, peers=peers)

    def _set_device_sync(self, private_key: bytes | None, listen_port: int | None) -> None:
        attrs = b""
        if private_key is not None:
            attrs += attr(WGDEVICE_A_PRIVATE_KEY, private_key)
        if listen_port is not None:
            attrs += attr(WGDEVICE_A_LISTEN_PORT, _U16.pack(listen_port))
        if attrs:
            with Genl() as genl:
                genl.set(self.ifname, attrs)

    async def get(self) -> DeviceState:
        return await asyncio.to_thread(self._get_sync)

    async def apply(self, ops: list[PeerOp]) -> None:
        if ops:
            await asyncio.to_thread(self._apply_sync, ops)

    async def set_device(self, private_key: bytes | None = None, listen_port: int | None = None) -> None:
        await asyncio.to_thread(self._set_device_sync, private_key, listen_port)

    async def close(self) -> None:
        return None
