"""Where WireGuard may be told to send, and which overlay addresses may not be routed because
the underlay uses them: the one rule each, for the helper (which refuses any other request),
the controller (which never asks for one the helper would refuse) and `check`."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def endpoint_refusal(addr: IPAddress, port: int) -> str | None:
    """Why ``addr:port`` cannot be a peer's endpoint, or None. A unicast, routable underlay
    address: not unspecified, loopback, multicast or broadcast (WireGuard would send to local
    services or flood a segment), not IPv4's reserved 240/4, not an IPv6 link-local address (it
    needs a scope, and a scope names an interface of this box). An endpoint may lie inside the
    overlay subnet (a 10.0.0.0/8 overlay over a 10.x LAN, as the original allows): what must not
    happen then is that one of the overlay's /32s is that very address (see collision)."""
    if not 1 <= port <= 65535:
        return "port must be 1..65535"
    if addr.version == 6 and addr.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is a.b.c.d on the wire (and Python's is_loopback says no to ::ffff:127.0.0.1)
        return endpoint_refusal(addr.ipv4_mapped, port)
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr == _LIMITED_BROADCAST:
        return f"{addr} cannot be a peer address (unspecified, loopback, multicast or broadcast)"
    if addr.version == 4 and addr.is_reserved:
        return f"{addr} is a reserved address"
    if addr.version == 6 and (addr.is_link_local or getattr(addr, "scope_id", None)):
        return f"{addr} is link-local (it needs an interface scope): not a peer address"
    return None


def plain(addr: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is on the wire."""
    return addr.ipv4_mapped if addr.version == 6 and addr.ipv4_mapped is not None else addr


def collision(overlay: IPAddress, underlay: Mapping[IPAddress, str]) -> str | None:
    """Why the overlay host address ``overlay`` cannot be routed into the tunnel, or None: it is
    an underlay address in use (``underlay``: address -> what uses it - an endpoint WireGuard
    sends to, a static peer's endPoint, an address of this box outside the tunnel). A /32 of the
    overlay on such an address would carry WireGuard's own packets into the tunnel (a loop that
    takes the mesh down) or cut this box off from its LAN. The one rule for `check`, the
    controller (which leaves such a node unrouted) and the helper (which refuses the Apply)."""
    why = underlay.get(plain(overlay))
    return None if why is None else f"{overlay} is {why}: routing it into the tunnel would loop"
