"""Validated desired state, live state, and the declarative diff between them.

Pure: no I/O. The D-Bus layer turns caller input into these types (refusing
anything outside the bounds read from root-owned config), the backends report
live state in them, and :func:`plan_peers` / :func:`plan_routes` compute the
smallest set of changes, ordered make-before-break.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nacl.bindings import crypto_scalarmult
from nacl.exceptions import CryptoError

from wg_netmanager.common import quote
from wg_netmanager.common.endpoints import collision, endpoint_refusal, plain

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Caps on caller-supplied arrays. A /20 overlay is already 4094 hosts; a mesh
# that needs more than this is not one we can gossip about anyway.
MAX_PEERS = 4096
MAX_ROUTES = 4096
MAX_ALLOWED_IPS = 4096  # in total, over all peers
MAX_KEEPALIVE = 3600
IFNAME_MAX = 15


class InvalidArgs(ValueError):
    """Caller input outside the rules; the message is safe to return to the caller."""


@dataclass(frozen=True)
class PeerSpec:
    public_key: bytes
    endpoint: str | None  # normalized "ip:port" / "[ip6]:port"; None = leave as is
    allowed_ips: frozenset[str]
    keepalive: int


@dataclass(frozen=True)
class RouteSpec:
    dst: str  # "10.1.1.3/32"
    gateway: str | None  # overlay IP of the relay, or None for a plain device route


@dataclass
class PeerState:
    public_key: bytes
    endpoint: str | None = None
    allowed_ips: frozenset[str] = frozenset()
    keepalive: int = 0
    last_handshake: float = 0.0  # unix seconds, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass
class DeviceState:
    private_key: bytes | None = None
    public_key: bytes | None = None
    listen_port: int = 0
    peers: dict[bytes, PeerState] = field(default_factory=dict)


@dataclass
class PeerOp:
    """One peer change. Rendered by a backend into UAPI lines or a netlink message."""

    public_key: bytes
    remove: bool = False
    new: bool = False
    endpoint: str | None = None
    keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: tuple[str, ...] = ()


# ----------------------------------------------------------------- validation


def check_ifname(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= IFNAME_MAX:
        raise InvalidArgs(f"interface name must be 1..{IFNAME_MAX} characters")
    if name in (".", "..") or any(c in name for c in "/ \t\n:") or not name.isprintable():
        raise InvalidArgs(f"interface name {quote(name)} is not valid")
    return name


def decode_key(text: object, what: str = "public key") -> bytes:
    if not isinstance(text, str):
        raise InvalidArgs(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgs(f"{what} {quote(text)} is not valid base64") from None
    if len(raw) != 32:
        raise InvalidArgs(f"{what} {quote(text)} decodes to {len(raw)} bytes, not 32")
    return raw


def check_public_key(raw: bytes, what: str) -> None:
    """A peer's key must not be a point of small order (the all-zero key among them): any
    private key would agree on a shared secret that everyone knows."""
    try:
        crypto_scalarmult(_PROBE_SCALAR, raw)
    except CryptoError:  # libsodium refuses an all-zero result: a small-order point
        raise InvalidArgs(f"{what} {encode_key(raw)!r} is a point of small order, not a usable key") from None


_PROBE_SCALAR = bytes([0x48] + [0x11] * 30 + [0x40])  # any clamped scalar


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def parse_endpoint(text: str) -> str | None:
    """Literal ``ip:port`` / ``[ip6]:port`` -> normalized form; "" -> None (leave as is)."""
    if text == "":
        return None
    if len(text) > 64:
        raise InvalidArgs("endpoint is too long")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise InvalidArgs(f"endpoint {quote(text)}: an IPv6 endpoint is written [addr]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise InvalidArgs(f"endpoint {quote(text)} must be ip:port or [ipv6]:port")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidArgs(f"endpoint {quote(text)}: {quote(host)} is not an IP address (resolve names first)") from None
    if not (port.isascii() and port.isdigit()):
        raise InvalidArgs(f"endpoint {quote(text)}: port must be 1..65535 in ASCII digits")
    problem = endpoint_refusal(addr, int(port))
    if problem is not None:
        raise InvalidArgs(f"endpoint {quote(text)}: {problem}")
    return f"[{addr}]:{int(port)}" if addr.version == 6 else f"{addr}:{int(port)}"


def parse_host_route(text: object, subnet: IPNetwork, what: str) -> str:
    """A host route inside the subnet, normalized to ``a.b.c.d/32``."""
    if not isinstance(text, str) or len(text) > 64:
        raise InvalidArgs(f"{what} must be a host address string")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise InvalidArgs(f"{what} {quote(text)} is not an address or prefix") from None
    if net.prefixlen != net.max_prefixlen:
        raise InvalidArgs(f"{what} {quote(text)} is not a host route (/{net.max_prefixlen}); refused")
    addr = net.network_address
    if addr.version != subnet.version or addr not in subnet:
        raise InvalidArgs(f"{what} {quote(text)} is outside the managed subnet {subnet}; refused")
    if subnet.num_addresses > 2 and addr in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgs(f"{what} {quote(text)} is the network or broadcast address of {subnet}")
    return str(net)


def parse_interface_address(text: object, subnet: IPNetwork) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if not isinstance(text, str):
        raise InvalidArgs("address must be a string like 10.1.1.1/24")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidArgs(f"address {quote(text)} is not addr/prefix") from None
    if "/" not in text:
        iface = ipaddress.ip_interface(f"{iface.ip}/{subnet.prefixlen}")
    if iface.version != subnet.version or iface.ip not in subnet:
        raise InvalidArgs(f"address {quote(text)} is outside the managed subnet {subnet}")
    if iface.network.prefixlen not in (subnet.prefixlen, iface.max_prefixlen):
        raise InvalidArgs(f"address {quote(text)}: prefix must be /{subnet.prefixlen} (the subnet's) or a host prefix")
    if subnet.num_addresses > 2 and iface.ip in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgs(f"address {quote(text)} is the network or broadcast address")
    return iface


def parse_peers(raw: object, subnet: IPNetwork, own_key: bytes | None,
                own_ip: IPAddress | None = None, revoked: frozenset[bytes] = frozenset()) -> dict[bytes, PeerSpec]:
    """D-Bus ``a(ssasu)`` -> validated specs; every rule is checked before anything is applied.
    ``revoked``: WireGuard keys of nodes expelled in net.yaml (never a peer)."""
    own = f"{own_ip}/{own_ip.max_prefixlen}" if own_ip is not None else None
    if not isinstance(raw, list):
        raise InvalidArgs("peers must be an array")
    if len(raw) > MAX_PEERS:
        raise InvalidArgs(f"{len(raw)} peers exceed the cap of {MAX_PEERS}")
    peers: dict[bytes, PeerSpec] = {}
    owner: dict[str, int] = {}
    total_ips = 0
    for i, entry in enumerate(raw):
        if not isinstance(entry, (list, tuple)) or len(entry) != 4:
            raise InvalidArgs(f"peer #{i} must be (public_key, endpoint, allowed_ips, keepalive)")
        key_text, endpoint, allowed, keepalive = entry
        key = decode_key(key_text, f"peer #{i} public key")
        check_public_key(key, f"peer #{i} public key")
        if key in peers:
            raise InvalidArgs(f"peer #{i}: public key {key_text} is listed twice")
        if own_key is not None and key == own_key:
            raise InvalidArgs(f"peer #{i}: public key {key_text} is this device's own key")
        if key in revoked:
            raise InvalidArgs(f"peer #{i}: public key {key_text} is revoked in net.yaml")
        if not isinstance(endpoint, str):
            raise InvalidArgs(f"peer #{i}: endpoint must be a string")
        ep = parse_endpoint(endpoint)
        if ep is not None and own_ip is not None and endpoint_address(ep) == plain(own_ip):
            raise InvalidArgs(f"peer #{i}: endpoint {quote(endpoint)} is this device's own overlay address")
        if not isinstance(allowed, list):
            raise InvalidArgs(f"peer #{i}: allowed IPs must be an array")
        total_ips += len(allowed)
        if total_ips > MAX_ALLOWED_IPS:
            raise InvalidArgs(f"more than {MAX_ALLOWED_IPS} allowed IPs in total")
        ips = set()
        for a in allowed:
            ip = parse_host_route(a, subnet, f"peer #{i} allowed IP")
            if ip == own:
                raise InvalidArgs(f"peer #{i}: allowed IP {ip} is this node's own address")
            if ip in owner:
                # WireGuard would silently move it; the caller's state is contradictory.
                raise InvalidArgs(f"allowed IP {ip} is given to peer #{owner[ip]} and peer #{i}")
            owner[ip] = i
            ips.add(ip)
        if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 0 <= keepalive <= MAX_KEEPALIVE:
            raise InvalidArgs(f"peer #{i}: keepalive must be 0..{MAX_KEEPALIVE} seconds")
        peers[key] = PeerSpec(key, ep, frozenset(ips), keepalive)
    return peers


def parse_dns_server(text: object, own_ip: str | None) -> tuple[IPAddress, int]:
    """SetDNS's server: ``ip:port`` / ``[ip6]:port`` on the device's own overlay address."""
    if not isinstance(text, str) or ":" not in text:
        raise InvalidArgs("server must be ip:port")
    host, _, port = text.rpartition(":")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise InvalidArgs(f"server {quote(text)} is not ip:port") from None
    if own_ip is None or address != ipaddress.ip_address(own_ip):
        raise InvalidArgs(f"server {quote(text)} is not this device's own overlay address ({own_ip})")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise InvalidArgs(f"server {quote(text)}: port must be 1..65535")
    return address, int(port)


def parse_routes(raw: object, subnet: IPNetwork, own_ip: IPAddress | None) -> dict[str, RouteSpec]:
    """D-Bus ``a(ss)`` (destination, gateway or "") -> validated specs."""
    if not isinstance(raw, list):
        raise InvalidArgs("routes must be an array")
    if len(raw) > MAX_ROUTES:
        raise InvalidArgs(f"{len(raw)} routes exceed the cap of {MAX_ROUTES}")
    own = f"{own_ip}/{own_ip.max_prefixlen}" if own_ip is not None else None
    routes: dict[str, RouteSpec] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise InvalidArgs(f"route #{i} must be (destination, gateway)")
        dst = parse_host_route(entry[0], subnet, f"route #{i} destination")
        if dst in routes:
            raise InvalidArgs(f"route #{i}: destination {dst} is listed twice")
        if dst == own:
            raise InvalidArgs(f"route #{i}: {dst} is this node's own address")
        gw = None
        if entry[1] != "":
            gw_net = parse_host_route(entry[1], subnet, f"route #{i} gateway")
            if gw_net == dst or gw_net == own:
                raise InvalidArgs(f"route #{i}: gateway {entry[1]} cannot be the destination or this node")
            gw = gw_net.split("/")[0]
        routes[dst] = RouteSpec(dst, gw)
    return routes


def endpoint_address(endpoint: str) -> IPAddress:
    """The address of a normalized endpoint ("ip:port" / "[ip6]:port")."""
    return plain(ipaddress.ip_address(endpoint.rpartition(":")[0].strip("[]")))


def endpoint_addresses(endpoints: Iterable[str | None]) -> dict[IPAddress, int]:
    """The addresses WireGuard sends to for these endpoints, each with the position of the
    first endpoint that has it (None, or nothing WireGuard could send to, skipped)."""
    found: dict[IPAddress, int] = {}
    for i, endpoint in enumerate(endpoints):
        try:
            found.setdefault(endpoint_address(endpoint), i)
        except (AttributeError, ValueError):
            pass
    return found


def peer_set_endpoints(peers: Mapping[bytes, PeerSpec], live: Mapping[bytes, PeerState]) -> dict[IPAddress, int]:
    """endpoint_addresses of the resulting peer set: each peer's endpoint as given, or the live
    one it keeps when none is given."""
    return endpoint_addresses(spec.endpoint or (live[key].endpoint if key in live else None)
                              for key, spec in peers.items())


def check_underlay(peers: Mapping[bytes, PeerSpec], routes: Mapping[str, RouteSpec],
                   endpoints: Mapping[IPAddress, int], fixed: Mapping[IPAddress, str]) -> None:
    """Refuse (InvalidArgs) an allowed IP, route or gateway on an underlay address in use
    (common.endpoints.collision): ``fixed`` (this box's addresses outside the tunnel, the static
    peers' endPoints) and ``endpoints``, those of the resulting peer set (peer_set_endpoints)."""
    underlay = dict(fixed)
    for addr, i in endpoints.items():
        underlay.setdefault(addr, f"peer #{i}'s endpoint")
    for i, spec in enumerate(peers.values()):
        for ip in spec.allowed_ips:
            problem = collision(ipaddress.ip_network(ip).network_address, underlay)
            if problem is not None:
                raise InvalidArgs(f"peer #{i}: allowed IP {problem}")
    for i, route in enumerate(routes.values()):
        for what, ip in (("destination", route.dst.split("/")[0]), ("gateway", route.gateway)):
            problem = collision(ipaddress.ip_address(ip), underlay) if ip else None
            if problem is not None:
                raise InvalidArgs(f"route #{i}: {what} {problem}")


#: how many overlay addresses the leak guard remembers where it cannot cover the whole subnet
GUARD_REMEMBERED = MAX_ROUTES


def guard_prefixes(subnet: IPNetwork, underlay_routes: Iterable[IPNetwork], endpoints: Iterable[IPAddress],
                   routed: Iterable[str]) -> list[str]:
    """The leak guard's prefixes (helper.routes.encode_guard). Usually the subnet itself. When
    the subnet contains the underlay - a route of the underlay inside it (a 10.128.1.0/24 LAN
    under a 10.0.0.0/8 overlay), or an endpoint WireGuard sends to - a subnet-wide guard would
    capture the underlay's own traffic (WireGuard's, and the controller's datagrams to nodes at
    such addresses), so the guard is then one host route per overlay address we route or routed
    (``routed``, "a.b.c.d/32"; those on an endpoint in use left out): it still keeps a node's
    traffic in while its route is replaced or after the node went, but an address never routed
    here is not covered (as with the original, which has no guard at all)."""
    endpoints = {a for a in endpoints if a.version == subnet.version}
    overlap = any(n.version == subnet.version and n.subnet_of(subnet) for n in underlay_routes) or \
        any(a in subnet for a in endpoints)
    if not overlap:
        return [str(subnet)]
    return sorted(r for r in routed if ipaddress.ip_network(r).network_address not in endpoints)


# ----------------------------------------------------------------- planning


def plan_peers(live: Mapping[bytes, PeerState], desired: Mapping[bytes, PeerSpec]) -> list[PeerOp]:
    """The smallest ordered list of peer changes turning ``live`` into ``desired``.

    Make before break: first add peers and grow allowed-IP sets (WireGuard moves an
    allowed IP atomically when another peer claims it), then shrink and remove.
    A peer that only lost IPs to such moves needs no second change.
    """
    make: list[PeerOp] = []
    for key, spec in desired.items():
        cur = live.get(key)
        if cur is None:
            make.append(PeerOp(key, new=True, endpoint=spec.endpoint, keepalive=spec.keepalive,
                               allowed_ips=tuple(sorted(spec.allowed_ips))))
            continue
        op = PeerOp(key)
        if spec.endpoint is not None and spec.endpoint != cur.endpoint:
            op.endpoint = spec.endpoint
        if spec.keepalive != cur.keepalive:
            op.keepalive = spec.keepalive
        gained = spec.allowed_ips - cur.allowed_ips
        op.allowed_ips = tuple(sorted(gained))
        if op.endpoint is not None or op.keepalive is not None or gained:
            make.append(op)
    claimed = {ip for op in make for ip in op.allowed_ips}
    brk: list[PeerOp] = []
    for key, cur in live.items():
        spec = desired.get(key)
        if spec is None:
            brk.append(PeerOp(key, remove=True))
            continue
        after = (cur.allowed_ips - (claimed - spec.allowed_ips)) | spec.allowed_ips
        if after != spec.allowed_ips:
            brk.append(PeerOp(key, replace_allowed_ips=True, allowed_ips=tuple(sorted(spec.allowed_ips))))
    return make + brk


def plan_routes(live: Mapping[str, str | None], desired: Mapping[str, RouteSpec]
                ) -> tuple[list[RouteSpec], list[RouteSpec], list[str]]:
    """(add, replace, delete): adds and replaces go first, deletes last."""
    add = [r for d, r in desired.items() if d not in live]
    replace = [r for d, r in desired.items() if d in live and live[d] != r.gateway]
    delete = [d for d in live if d not in desired]
    return add, replace, delete


def summarize(ops: Iterable[PeerOp], add: list, replace: list, delete: list) -> dict[str, int]:
    ops = list(ops)
    summary = {
        "peers_added": sum(op.new for op in ops),
        "peers_removed": sum(op.remove for op in ops),
        "peers_updated": sum(not op.new and not op.remove for op in ops),
        "routes_added": len(add),
        "routes_replaced": len(replace),
        "routes_removed": len(delete),
    }
    summary["changes"] = sum(summary.values())
    return summary
