"""WireGuard cross-platform userspace API (wireguard-go, boringtun) over its unix socket.

Protocol: ``get=1\\n\\n`` / ``set=1\\n<key=value lines>\\n`` -> ``key=value`` lines ending in
``errno=N`` and a blank line. Keys travel as lowercase hex. A ``set`` is not atomic (lines
before a bad one are applied), so callers validate completely before rendering.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from .model import DeviceState, PeerOp, PeerState

SOCKET_DIR = Path("/run/wireguard")


class UapiError(Exception):
    pass


def socket_path(ifname: str) -> Path:
    return SOCKET_DIR / f"{ifname}.sock"


def parse_get(lines: list[str]) -> DeviceState:
    dev = DeviceState()
    peer: PeerState | None = None
    hs_sec = 0
    hs_nsec = 0
    ips: set[str] = set()

    def finish() -> None:
        if peer is not None:
            peer.allowed_ips = frozenset(ips)
            peer.last_handshake = hs_sec + hs_nsec / 1e9 if hs_sec else 0.0
            dev.peers[peer.public_key] = peer

    for line in lines:
        key, _, value = line.partition("=")
        if key == "public_key":
            finish()
            peer = PeerState(bytes.fromhex(value))
            hs_sec = hs_nsec = 0
            ips = set()
        elif peer is None:
            if key == "private_key":
                dev.private_key = bytes.fromhex(value)
            elif key == "listen_port":
                dev.listen_port = int(value)
        elif key == "endpoint":
            peer.endpoint = value
        elif key == "allowed_ip":
            ips.add(value)
        elif key == "persistent_keepalive_interval":
            peer.keepalive = int(value)
        elif key == "last_handshake_time_sec":
            hs_sec = int(value)
        elif key == "last_handshake_time_nsec":
            hs_nsec = int(value)
        elif key == "rx_bytes":
            peer.rx_bytes = int(value)
        elif key == "tx_bytes":
            peer.tx_bytes = int(value)
    finish()
    return dev


def render_ops(ops: list[PeerOp]) -> str:
    out: list[str] = []
    for op in ops:
        out.append(f"public_key={op.public_key.hex()}")
        if op.remove:
            out.append("remove=true")
            continue
        if op.endpoint is not None:
            out.append(f"endpoint={op.endpoint}")
        if op.keepalive is not None:
            out.append(f"persistent_keepalive_interval={op.keepalive}")
        if op.replace_allowed_ips:
            out.append("replace_allowed_ips=true")
        out.extend(f"allowed_ip={ip}" for ip in op.allowed_ips)
    return "".join(line + "\n" for line in out)


class UapiBackend:
    """One persistent connection per device; one transaction at a time."""

    def __init__(self, ifname: str, name: str = "wireguard-go") -> None:
        self.ifname = ifname
        self.name = name
        self.path = socket_path(ifname)
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @staticmethod
    def available(ifname: str) -> bool:
        return socket_path(ifname).is_socket()

    async def _transact(self, request: str) -> list[str]:
        async with self._lock:
            for attempt in (1, 2):
                try:
                    if self._writer is None:
                        self._reader, self._writer = await asyncio.open_unix_connection(
                            str(self.path), limit=64 * 1024 * 1024)
                    assert self._reader is not None
                    self._writer.write(request.encode())
                    await self._writer.drain()
                    raw = await asyncio.wait_for(self._reader.readuntil(b"\n\n"), 10)
                    break
                except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                    await self.close()
                    if attempt == 2 or request.startswith("set="):
                        # never resend a set blindly: it may have been half applied
                        raise UapiError(f"UAPI socket {self.path}: {e or type(e).__name__}") from None
        lines = raw.decode().split("\n")[:-2]
        if not lines or not lines[-1].startswith("errno="):
            raise UapiError("UAPI reply without errno")
        errno = int(lines[-1][6:])
        if errno != 0:
            await self.close()
            raise UapiError(f"UAPI {request.split(chr(10))[0]} failed: errno={errno} ({os.strerror(abs(errno))})")
        return lines[:-1]

    async def get(self) -> DeviceState:
        return parse_get(await self._transact("get=1\n\n"))

    async def set_device(self, private_key: bytes | None = None, listen_port: int | None = None) -> None:
        body = ""
        if private_key is not None:
            body += f"private_key={private_key.hex()}\n"
        if listen_port is not None:
            body += f"listen_port={listen_port}\n"
        if body:
            await self._transact("set=1\n" + body + "\n")

    async def apply(self, ops: list[PeerOp]) -> None:
        if ops:
            await self._transact("set=1\n" + render_ops(ops) + "\n")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None
