"""This node's own facts (overlay address, subnet, LANs, public endpoint) and the address
helpers the parts share."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from wg_netmanager.common.endpoints import plain

from ..wire import Identity, NodeInfo, ProtocolError
from .types import CoreConfig, StaticPeerConfig


@functools.lru_cache(maxsize=65536)
def ip_int(text: str) -> tuple[int, int]:
    """(IP version, address as an integer) of an address in text; ValueError if it is none.
    Memoised: every node parses every other node's addresses."""
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip)


def net_ints(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int, int, int]:
    """(version, network address, netmask, broadcast address) as integers."""
    return net.version, int(net.network_address), int(net.netmask), int(net.broadcast_address)


def fmt_ep(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=4096)
def parse_ep(text: str) -> tuple[str, int] | None:
    """(host, port) of "host:port" / "[v6]:port". Memoised: every probe answer tells the prober
    where its WireGuard endpoint is seen."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return host.strip("[]").split("%")[0], int(port)


@functools.lru_cache(maxsize=4096)
def _plain_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` is on the wire (common.endpoints.plain), None for a host name.
    Memoised: every data-plane build looks at every peer's endpoint (Core._underlay_clashes)."""
    try:
        return plain(ipaddress.ip_address(host))
    except ValueError:
        return None


def is_hostname(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        return True


class Subnet:
    """The overlay subnet, with integer membership tests."""

    def __init__(self, text: str) -> None:
        self.network = ipaddress.ip_network(text, strict=False)
        self.version, self.base, self.mask, self.broadcast = net_ints(self.network)
        self.max_prefixlen = self.network.max_prefixlen

    def value(self, host: str) -> int | None:
        """The address as an integer if it lies inside the subnet, else None (ValueError if
        ``host`` is no address)."""
        version, value = ip_int(host)
        return value if version == self.version and value & self.mask == self.base else None

    def host_value(self, host: str) -> int | None:
        """The address as an integer if it is a host address inside the subnet (not its network
        or broadcast address), else None."""
        value = self.value(host)
        return value if value is not None and value != self.base and value != self.broadcast else None

    def is_overlay(self, host: str) -> bool:
        """Whether a datagram's source lies inside the overlay; ProtocolError if it is no address."""
        try:
            return self.value(host) is not None
        except ValueError:
            raise ProtocolError("bad_source") from None


class LanView:
    """Our underlay addresses with their prefixes, and which LAN of ours an address is on."""

    def __init__(self, lan: Iterable[tuple[str, int]]) -> None:
        self.set(lan)

    def set(self, lan: Iterable[tuple[str, int]]) -> None:
        self.addresses: tuple[tuple[str, int], ...] = tuple(lan)
        self._nets = [(*net_ints(ipaddress.ip_network(f"{ip}/{plen}", strict=False))[:3], ip)
                      for ip, plen in self.addresses]
        self._found: dict[str, str] = {}  # address -> our address on its LAN (found ones only)

    def ips(self) -> set[str]:
        return {ip for ip, _ in self.addresses}

    def on_my_lan(self, address: str) -> str | None:
        """Our own address on the LAN that contains ``address``, if any."""
        found = self._found.get(address)
        if found is not None:
            return found
        addr_version, value = ip_int(address)
        for version, network, mask, mine in self._nets:
            if version == addr_version and value & mask == network:
                self._found[address] = mine  # (only hits: every node asks once about every other)
                return mine
        return None

    def shared_address(self, info: NodeInfo) -> str | None:
        """The node's first address on a LAN of ours."""
        for address in info.lan_addresses:
            if self.on_my_lan(address):
                return address
        return None


class LocalNode:
    """Who we are and where we are: identity, overlay address, the static peers of net.yaml,
    our LANs and our public endpoint as a static peer sees it."""

    def __init__(self, config: CoreConfig, identity: Identity, wg_public_key: bytes,
                 lan: Iterable[tuple[str, int]]) -> None:
        self.identity = identity
        self.id8 = identity.id8
        self.overlay_ip = config.overlay_ip
        self.subnet = Subnet(config.subnet)
        if self.subnet.value(config.overlay_ip) is None:
            raise ValueError(f"{config.overlay_ip} is not inside {self.subnet.network}")
        self.wg_public_key = wg_public_key
        self.wg_port = config.wg_port
        #: our own entry in net.yaml's static peers, if we are one
        self.static_self = next((p for p in config.static_peers if p.overlay_ip == config.overlay_ip), None)
        self.is_static = self.static_self is not None
        self.static_by_ip: dict[str, StaticPeerConfig] = {}
        self._static_admin: set[tuple[str, int]] = set()
        self.set_static_peers(config.static_peers)
        self.lan = LanView(lan)
        self.reflexive: tuple[str, int] | None = None
        #: our WireGuard endpoint as each static peer sees it (id8 -> address): the NAT type
        self.seen_by: dict[bytes, tuple[str, int]] = {}

    def set_static_peers(self, peers: Iterable[StaticPeerConfig]) -> bool:
        """The other static peers (re-resolved by the runtime); False if nothing changed."""
        new = {p.overlay_ip: p for p in peers if p.overlay_ip != self.overlay_ip}
        if new == self.static_by_ip:
            return False
        self.static_by_ip = new
        self._static_admin = {(p.host, p.admin_port) for p in new.values()}
        return True

    def underlay_in_use(self, endpoints: Iterable[str | None]) -> dict:
        """Underlay addresses in use here that lie inside the overlay subnet (usually none), with
        what uses them (common.endpoints.collision): the WireGuard endpoints ``endpoints`` ("ip:port"
        / "[ip6]:port"), the static peers' addresses, this box's own addresses."""
        net = self.subnet.network
        found = {}

        def note(host: str, why: str) -> None:
            addr = _plain_address(host)
            if addr is not None and addr.version == net.version and addr in net:
                found[addr] = why

        for text in endpoints:
            ep = parse_ep(text) if text else None
            if ep is not None:
                note(ep[0], f"a WireGuard endpoint here ({text})")
        for p in (*self.static_by_ip.values(), *((self.static_self,) if self.static_self else ())):
            note(p.host, f"static peer {p.overlay_ip}'s endPoint")
        for ip in self.lan.ips():
            note(ip, "an address of this box outside the tunnel")
        return found

    def is_hub(self, info: NodeInfo) -> bool:
        """Whether we trust a node as a static peer (a hub: we hand on what it floods, take our
        public endpoint from what it saw, show it as static): its record says so and net.yaml
        lists its address as a static peer's (bound to the identity first seen with it:
        Membership.bindings). The flag alone is the node's own word: a holder of the shared key
        calling itself static would have its floods handed on by every node and tell nodes
        their public endpoint. (A link's roles follow the flag: see Links.wants_link.)"""
        return info.is_static and info.overlay_ip in self.static_by_ip

    def is_static_admin_addr(self, addr: tuple[str, int]) -> bool:
        """A static peer's admin address from net.yaml (trusted as a source: see core.validation)."""
        return addr in self._static_admin

    def public_endpoint(self) -> tuple[str, int] | None:
        """Where others can send to us: what a static peer saw, or our own static endpoint."""
        if self.reflexive is None and self.static_self is not None:
            return self.static_self.host, self.static_self.wg_port
        return self.reflexive

    def nat_type(self) -> str:
        """What the static peers saw of our WireGuard endpoint: "none" (our own address and
        port), "endpoint-independent" (one mapping for every destination: hole punching works),
        "symmetric" (a port per destination: pairs behind it stay relayed), "translated"
        (one static peer saw us: the mapping's kind needs a second), or "unknown"."""
        seen = set(self.seen_by.values())
        if not seen:
            return "unknown"
        if len(seen) > 1:
            return "symmetric"
        ((ip, port),) = seen
        if ip in self.lan.ips() and port == self.wg_port:
            return "none"
        return "endpoint-independent" if len(self.seen_by) > 1 else "translated"

    def behind_same_nat(self, info: NodeInfo) -> bool:
        """Both behind one public address: the same home, maybe on different LANs."""
        return self.reflexive is not None and self.reflexive[0] in info.reflexive_addresses
