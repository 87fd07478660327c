"""The in-kernel WireGuard backend, through pyroute2's generic netlink family.

Chosen when the ``wireguard`` link kind exists. Same interface as UapiBackend.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket

from .model import DeviceState, PeerOp, PeerState


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str | bytes) -> bytes:
    return base64.b64decode(text) if isinstance(text, (str, bytes)) and len(text) == 44 else bytes(text)


def _ip_text(family: int, addr: str | bytes) -> str:
    """An allowed IP as pyroute2 gives it - raw bytes, text, or (0.7, Debian bookworm's) the
    bytes as colon-separated hex ("0a:01:01:02") - as text ("10.1.1.2")."""
    if isinstance(addr, bytes):
        return socket.inet_ntop(family, addr)
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return socket.inet_ntop(family, bytes.fromhex(addr.replace(":", "")))


class KernelBackend:
    name = "kernel"

    def __init__(self, ifname: str) -> None:
        from pyroute2 import WireGuard  # imported lazily: only where the module exists

        self.ifname = ifname
        self._wg_class = WireGuard

    def _get_sync(self) -> DeviceState:
        dev = DeviceState()
        with self._wg_class() as wg:
            for msg in wg.info(self.ifname):
                if msg.get_attr("WGDEVICE_A_PRIVATE_KEY"):
                    dev.private_key = _unb64(msg.get_attr("WGDEVICE_A_PRIVATE_KEY"))
                if msg.get_attr("WGDEVICE_A_LISTEN_PORT") is not None:
                    dev.listen_port = int(msg.get_attr("WGDEVICE_A_LISTEN_PORT"))
                for p in msg.get_attr("WGDEVICE_A_PEERS") or []:
                    key = _unb64(p.get_attr("WGPEER_A_PUBLIC_KEY"))
                    peer = dev.peers.get(key) or PeerState(key)
                    ep = p.get_attr("WGPEER_A_ENDPOINT")
                    if ep and ep.get("addr") and ep.get("port"):
                        peer.endpoint = f"[{ep['addr']}]:{ep['port']}" if ":" in ep["addr"] else \
                            f"{ep['addr']}:{ep['port']}"
                    # (a peer with many allowed IPs continues in the next message of the dump,
                    # which carries only its key and more IPs: keep what the first one said)
                    keepalive = p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")
                    if keepalive is not None:
                        peer.keepalive = int(keepalive)
                    hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
                    if hs:
                        sec = hs.get("tv_sec", 0)
                        peer.last_handshake = sec + hs.get("tv_nsec", 0) / 1e9 if sec else 0.0
                    for attr, field in (("WGPEER_A_RX_BYTES", "rx_bytes"), ("WGPEER_A_TX_BYTES", "tx_bytes")):
                        if p.get_attr(attr) is not None:
                            setattr(peer, field, int(p.get_attr(attr)))
                    ips = set(peer.allowed_ips)
                    for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or []:
                        addr = _ip_text(a.get_attr("WGALLOWEDIP_A_FAMILY"), a.get_attr("WGALLOWEDIP_A_IPADDR"))
                        ips.add(f"{addr}/{a.get_attr('WGALLOWEDIP_A_CIDR_MASK')}")
                    peer.allowed_ips = frozenset(ips)
                    dev.peers[key] = peer
        return dev

    def _apply_sync(self, ops: list[PeerOp]) -> None:
        with self._wg_class() as wg:
            for op in ops:
                peer: dict = {"public_key": _b64(op.public_key)}
                if op.remove:
                    peer["remove"] = True
                else:
                    if op.endpoint is not None:
                        host, _, port = op.endpoint.rpartition(":")
                        peer["endpoint_addr"] = host.strip("[]")
                        peer["endpoint_port"] = int(port)
                    if op.keepalive is not None:
                        peer["persistent_keepalive"] = op.keepalive
                    if op.replace_allowed_ips:
                        peer["replace_allowed_ips"] = True
                    if op.allowed_ips:
                        peer["allowed_ips"] = list(op.allowed_ips)
                wg.set(self.ifname, peer=peer)

    def _set_device_sync(self, private_key: bytes | None, listen_port: int | None) -> None:
        kwargs: dict = {}
        if private_key is not None:
            kwargs["private_key"] = _b64(private_key)
        if listen_port is not None:
            kwargs["listen_port"] = listen_port
        if kwargs:
            with self._wg_class() as wg:
                wg.set(self.ifname, **kwargs)

    async def get(self) -> DeviceState:
        return await asyncio.to_thread(self._get_sync)

    async def apply(self, ops: list[PeerOp]) -> None:
        if ops:
            await asyncio.to_thread(self._apply_sync, ops)

    async def set_device(self, private_key: bytes | None = None, listen_port: int | None = None) -> None:
        await asyncio.to_thread(self._set_device_sync, private_key, listen_port)

    async def close(self) -> None:
        return None
