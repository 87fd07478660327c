"""Sending admin datagrams: sealing, and which address reaches a node.

Through the tunnel once the applied data plane routes the destination (until then the
kernel has no route for it), else a static peer's address from net.yaml, a shared LAN's, or
where the node last spoke from over the underlay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .. import crypto, wire
from .local import LocalNode
from .membership import Member, Membership
from .routes import Routing
from .types import Counters

TX_COUNTERS = {t: f"tx_{name}" for t, name in wire.TYPE_NAMES.items()}
#: record batches: the underlay may not pass fragments; inside the tunnel a fragmented datagram is fine
RECORDS_LIMIT_UNDERLAY = 1100
RECORDS_LIMIT_OVERLAY = 8000
#: the admin bytes a datagram costs on a link beyond its body (header, auth, UDP/IP, WireGuard)
ADMIN_OVERHEAD = 200


class Transport:
    def __init__(self, key: bytes, local: LocalNode, members: Membership, routing: Routing,
                 links: Mapping, counters: Counters, random_bytes: Callable[[int], bytes],
                 pair_memo: dict | None = None) -> None:
        self.key = key
        self.local = local
        self.identity = local.identity
        self.pairs = crypto.PairKeys(local.identity, key, memo=pair_memo)
        self.members = members
        self.routing = routing
        self.links = links  # id8 -> Link (read-only here: who gets our pair MAC, admin bytes per link)
        self.counters = counters
        self.random_bytes = random_bytes
        self.seq = 0
        self._out: list[tuple[bytes, tuple[str, int]]] = []

    def take(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self._out = self._out, []
        return out

    def open(self, data: bytes) -> wire.Inner:
        return wire.open_datagram(self.key, data, self.pairs)

    def send_to_addr(self, addr: tuple[str, int], mtype: int, body: bytes, now: float,
                     to: bytes | None = None) -> None:
        """``to``: the receiver's identity, if known. Towards a node we link to, the datagram is
        authenticated by our pair's MAC (derived once per link), else signed (see wire)."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        pair = (to, self.pairs.key(to)) if to is not None and to[:wire.ID8_LEN] in self.links else None
        data = wire.seal(self.key, self.random_bytes(wire.NONCE_LEN), self.identity, mtype, int(now * 1000),
                         self.seq, body, pair)
        self._out.append((data, addr))
        self.counters.count(TX_COUNTERS[mtype])
        self.counters.count("tx_bytes", len(data))

    # ------------------------------------------------------------------ addresses

    def static_admin_addr(self, member: Member | None) -> tuple[str, int] | None:
        """A static peer's admin address from net.yaml (None for other nodes)."""
        static = self.local.static_by_ip.get(member.info.overlay_ip) if member is not None else None
        return (static.host, static.admin_port) if static is not None else None

    def lan_admin_addr(self, member: Member | None) -> tuple[str, int] | None:
        """A node's admin address on a LAN we share with it."""
        address = self.local.lan.shared_address(member.info) if member is not None else None
        return (address, member.info.admin_port) if address is not None else None

    def addr_of(self, id8: bytes) -> tuple[str, int] | None:
        member = self.members.get(id8)
        if member is not None and id8 in self.routing.hops and id8 in self.routing.applied_hops:
            return member.info.overlay_ip, member.info.admin_port
        return self.static_admin_addr(member) or self.lan_admin_addr(member) or self.members.underlay_addr.get(id8)

    def underlay_of(self, id8: bytes, now: float) -> tuple[str, int] | None:
        """An address outside the overlay: a static peer's, or where the node recently spoke from."""
        static = self.static_admin_addr(self.members.get(id8))
        return static if static is not None else self.members.recent_underlay(id8, now)

    # ------------------------------------------------------------------ sending to a node

    def send(self, id8: bytes, mtype: int, body: bytes, now: float) -> bool:
        addr = self.addr_of(id8)
        if addr is None:
            self.counters.count("tx_no_route")
            return False
        link = self.links.get(id8)
        if link is not None and self.routing.direct(id8):
            link.admin_bytes += len(body) + ADMIN_OVERHEAD
            link.admin_tx += len(body) + ADMIN_OVERHEAD
        self.send_to_addr(addr, mtype, body, now, self.members.identity_of(id8))
        return True

    def send_both(self, id8: bytes, mtype: int, body: bytes, now: float) -> None:
        """For messages that must arrive although the other end's link-state may not yet
        route our overlay traffic: over the underlay where possible, and over the overlay."""
        under = self.underlay_of(id8, now)
        member = self.members.get(id8)
        if under is not None:
            self.send_to_addr(under, mtype, body, now, member.identity if member else None)
        if member is not None and id8 in self.routing.hops:
            self.send_to_addr((member.info.overlay_ip, member.info.admin_port), mtype, body, now, member.identity)
        elif under is None:
            self.send(id8, mtype, body, now)

    def send_outside(self, id8: bytes, mtype: int, body: bytes, now: float) -> None:
        """As :meth:`send_both`, but once: over the underlay where possible, else the overlay."""
        under = self.underlay_of(id8, now)
        if under is not None:
            member = self.members.get(id8)
            self.send_to_addr(under, mtype, body, now, member.identity if member else None)
        else:
            self.send(id8, mtype, body, now)

    def send_records(self, addr: tuple[str, int], raws: list[bytes], now: float, why: str = "reply",
                     to: bytes | None = None, flags: int = 0) -> None:
        """Records in as few datagrams as fit (see RECORDS_LIMIT_*)."""
        self.counters.count(f"tx_records_{why}", len(raws))
        limit = RECORDS_LIMIT_OVERLAY if self.local.subnet.is_overlay(addr[0]) else RECORDS_LIMIT_UNDERLAY
        chunk: list[bytes] = []
        size = 0
        for raw in raws:
            if chunk and size + len(raw) > limit:
                self.send_to_addr(addr, wire.RECORDS, wire.body_records(chunk, flags), now, to)
                chunk, size = [], 0
            chunk.append(raw)
            size += len(raw)
        if chunk:
            self.send_to_addr(addr, wire.RECORDS, wire.body_records(chunk, flags), now, to)
