"""Client side of org.wgnetmanager.Helper1.

Used by the controller runtime, by the tests, and as a small debugging tool:
``python -m wg_netmanager.controller.helper_client METHOD JSON-ARGS...`` prints the
reply (or the error name and message) as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass

from wg_netmanager.dbus import HELPER_BUS_NAME, HELPER_INTERFACE, HELPER_OBJECT_PATH
from wg_netmanager.dbus.compat import BusType, DBusError, Message, MessageBus, MessageType

SIGNATURES = {
    "EnsureDevice": "sqsb",
    "Apply": "sa(ssasu)a(ss)",
    "GetState": "s",
    "Teardown": "s",
    "SetDNS": "sss",
}


class HelperError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass
class PeerStatus:
    public_key: str
    endpoint: str
    last_handshake: float
    rx_bytes: int
    tx_bytes: int
    allowed_ips: list[str]
    keepalive: int


class HelperClient:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    @classmethod
    async def connect(cls, address: str | None = None) -> HelperClient:
        bus = MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SYSTEM)
        return cls(await bus.connect())

    async def call(self, member: str, *args) -> list:
        reply = await self.bus.call(Message(
            destination=HELPER_BUS_NAME, path=HELPER_OBJECT_PATH, interface=HELPER_INTERFACE,
            member=member, signature=SIGNATURES[member], body=list(args)))
        if reply.message_type == MessageType.ERROR:
            raise HelperError(reply.error_name, reply.body[0] if reply.body else "")
        return reply.body

    async def ensure_device(self, ifname: str, listen_port: int, address: str, adopt: bool = False
                            ) -> tuple[str, str]:
        pub, backend = await self.call("EnsureDevice", ifname, listen_port, address, adopt)
        return pub, backend

    async def apply(self, ifname: str, peers: list, routes: list) -> dict[str, int]:
        (summary,) = await self.call("Apply", ifname, [list(p) for p in peers], [list(r) for r in routes])
        return summary

    async def get_state(self, ifname: str) -> tuple[str, int, list[PeerStatus]]:
        pub, port, peers = await self.call("GetState", ifname)
        return pub, port, [PeerStatus(*p) for p in peers]

    async def teardown(self, ifname: str) -> dict[str, int]:
        (summary,) = await self.call("Teardown", ifname)
        return summary

    async def set_dns(self, ifname: str, server: str, domain: str) -> str:
        (how,) = await self.call("SetDNS", ifname, server, domain)
        return how

    def disconnect(self) -> None:
        self.bus.disconnect()


async def _cli(argv: list[str]) -> int:
    address = None
    if argv and argv[0].startswith("--address="):
        address = argv.pop(0).split("=", 1)[1]
    if not argv or argv[0] not in SIGNATURES:
        print(f"usage: helper_client [--address=ADDR] {{{','.join(SIGNATURES)}}} JSON-ARG...", file=sys.stderr)
        return 2
    try:
        client = await HelperClient.connect(address)
    except (OSError, DBusError) as e:
        print(json.dumps({"error": "connect", "message": str(e)}))
        return 1
    try:
        body = await client.call(argv[0], *[json.loads(a) for a in argv[1:]])
        print(json.dumps({"reply": body}))
        return 0
    except HelperError as e:
        print(json.dumps({"error": e.name, "message": e.message}))
        return 1
    finally:
        client.disconnect()


if __name__ == "__main__":
    sys.exit(asyncio.run(_cli(sys.argv[1:])))
