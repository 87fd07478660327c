"""Where WireGuard may be told to send: the one rule, for the helper (which refuses any other
endpoint) and for the controller (which never asks for one the helper would refuse)."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def endpoint_refusal(addr: IPAddress, port: int, subnet: IPNetwork) -> str | None:
    """Why ``addr:port`` cannot be a peer's endpoint, or None. A unicast, routable underlay
    address outside the overlay: not unspecified, loopback, multicast or broadcast (WireGuard
    would send to local services or flood a segment), not IPv4's reserved 240/4, not an IPv6
    link-local address (it needs a scope, and a scope names an interface of this box), not inside
    the overlay subnet (WireGuard's own packets would be routed into the tunnel)."""
    if not 1 <= port <= 65535:
        return "port must be 1..65535"
    if addr.version == 6 and addr.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is a.b.c.d on the wire (and Python's is_loopback says no to ::ffff:127.0.0.1)
        return endpoint_refusal(addr.ipv4_mapped, port, subnet)
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr == _LIMITED_BROADCAST:
        return f"{addr} cannot be a peer address (unspecified, loopback, multicast or broadcast)"
    if addr.version == 4 and addr.is_reserved:
        return f"{addr} is a reserved address"
    if addr.version == 6 and (addr.is_link_local or getattr(addr, "scope_id", None)):
        return f"{addr} is link-local (it needs an interface scope): not a peer address"
    if addr.version == subnet.version and addr in subnet:
        return f"{addr} lies inside the overlay {subnet} (routing loop)"
    return None
