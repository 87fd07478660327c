"""Loading and validating the shared ``net.yaml`` (the original's format, unchanged).

Used by both daemons: the controller for everything, the root helper only for the
bounds it enforces (the overlay subnet). Errors name the file and line.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .endpoints import endpoint_refusal

log = logging.getLogger(__name__)

DEFAULT_ADMIN_PORT = 55555


class ConfigError(Exception):
    """A configuration problem, rendered as ``file:line: message``."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class StaticPeer:
    endpoint_host: str
    endpoint_port: int
    admin_port: int
    wg_ip: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class NetworkConfig:
    path: str
    shared_key: bytes
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    peers: tuple[StaticPeer, ...]
    warnings: tuple[str, ...] = field(default=())


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings remember the line of each key."""


class _Map(dict):
    lines: dict[str, int]
    line: int


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.lines = {}
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise ConfigError(loader.name, key_node.start_mark.line + 1, f"duplicate key {key!r}")
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; syntax errors become ConfigError with the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror}") from None
    loader = _LineLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(path, line, f"YAML syntax: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(path, None, f"YAML: {e}") from None
    finally:
        loader.dispose()


def _line(m: Any, key: str | None = None) -> int | None:
    if isinstance(m, _Map):
        return m.lines.get(key, m.line) if key is not None else m.line
    return None


def _require(path: str, m: Any, key: str, where: str) -> Any:
    if not isinstance(m, dict):
        raise ConfigError(path, _line(m), f"{where} must be a mapping")
    if key not in m or m[key] is None:
        raise ConfigError(path, _line(m), f"{where}: missing '{key}'")
    return m[key]


def parse_shared_key(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("must be a base64 string as printed by `wg genkey`")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ValueError("is not valid base64 (generate one with `wg genkey`)") from None
    if len(raw) != 32:
        raise ValueError(f"must decode to 32 bytes, not {len(raw)} (generate one with `wg genkey`)")
    return raw


def parse_subnet(text: Any, warnings: list[str]) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str):
        raise ValueError("must be a CIDR such as 10.1.1.0/24")
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as e:
        raise ValueError(f"is not a CIDR ({e})") from None
    if str(net) != text.strip():
        # The original's example reads `10.1.1.0/8`: host bits set. Accept, normalized.
        warnings.append(f"subnet {text.strip()} has host bits set; using {net}")
    if net.prefixlen >= net.max_prefixlen - 1:
        raise ValueError(f"{net} is too small for a mesh")
    return net


def parse_endpoint(text: Any) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port). The host may be a DNS name."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError("must be host:port")
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("must be [ipv6]:port")
    else:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ValueError("an IPv6 endpoint must be written [addr]:port")
    if not host:
        raise ValueError("has no host")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not in 1..65535")
    return host, int(port)


def _literal_endpoint_refusal(host: str, port: int, subnet) -> str | None:
    """The helper's endpoint rule for an endPoint written as an address (a host name is
    resolved, and checked, by the controller)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    return endpoint_refusal(addr, port, subnet)


def _port(path: str, m: dict, key: str, default: int | None = None) -> int:
    value = m.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(path, _line(m, key), f"{key} must be a port number 1..65535, not {value!r}")
    return value


KNOWN_TOP = {"network", "peers"}
KNOWN_NETWORK = {"sharedKey", "subnet"}
KNOWN_PEER = {"endPoint", "adminPort", "wgIp"}


def load_network_config(path: str | Path) -> NetworkConfig:
    """Load and validate net.yaml. Raises ConfigError naming file and line."""
    spath = str(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(spath, None, "top level must be a mapping with 'network' and 'peers'")
    warnings: list[str] = []
    for key in doc:
        if key not in KNOWN_TOP:
            warnings.append(f"{spath}:{_line(doc, key)}: unknown key {key!r} ignored")
    network = _require(spath, doc, "network", "top level")
    if not isinstance(network, dict):
        raise ConfigError(spath, _line(doc, "network"), "'network' must be a mapping")
    for key in network:
        if key not in KNOWN_NETWORK:
            warnings.append(f"{spath}:{_line(network, key)}: unknown key network.{key} ignored")
    try:
        shared_key = parse_shared_key(_require(spath, network, "sharedKey", "network"))
    except ValueError as e:
        raise ConfigError(spath, _line(network, "sharedKey"), f"sharedKey {e}") from None
    try:
        subnet = parse_subnet(_require(spath, network, "subnet", "network"), warnings)
    except ValueError as e:
        raise ConfigError(spath, _line(network, "subnet"), f"subnet {e}") from None

    raw_peers = _require(spath, doc, "peers", "top level")
    if not isinstance(raw_peers, list) or not raw_peers:
        raise ConfigError(spath, _line(doc, "peers"), "'peers' must list at least one static peer")
    peers: list[StaticPeer] = []
    seen: set[Any] = set()
    for entry in raw_peers:
        if not isinstance(entry, dict):
            raise ConfigError(spath, _line(doc, "peers"), "each peer must be a mapping")
        for key in entry:
            if key not in KNOWN_PEER:
                warnings.append(f"{spath}:{_line(entry, key)}: unknown key peers[].{key} ignored")
        try:
            host, port = parse_endpoint(_require(spath, entry, "endPoint", "peer"))
        except ValueError as e:
            raise ConfigError(spath, _line(entry, "endPoint"), f"endPoint {e}") from None
        problem = _literal_endpoint_refusal(host, port, subnet)
        if problem is not None:
            raise ConfigError(spath, _line(entry, "endPoint"), f"endPoint {problem}")
        admin_port = _port(spath, entry, "adminPort", DEFAULT_ADMIN_PORT)
        try:
            wg_ip = ipaddress.ip_address(str(_require(spath, entry, "wgIp", "peer")).strip())
        except ValueError as e:
            raise ConfigError(spath, _line(entry, "wgIp"), f"wgIp {e}") from None
        if wg_ip not in subnet or wg_ip in (subnet.network_address, subnet.broadcast_address):
            raise ConfigError(spath, _line(entry, "wgIp"), f"wgIp {wg_ip} is not a host address in {subnet}")
        if wg_ip in seen:
            raise ConfigError(spath, _line(entry, "wgIp"), f"wgIp {wg_ip} is listed twice")
        seen.add(wg_ip)
        peers.append(StaticPeer(host, port, admin_port, wg_ip))
    return NetworkConfig(spath, shared_key, subnet, tuple(peers), tuple(warnings))


@dataclass(frozen=True)
class PeerConfig:
    """The original's optional peer.yaml: this box's own settings."""

    path: str
    name: str | None = None
    wg_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    interface: str | None = None
    existing_interface: bool = False
    wg_port: int | None = None
    admin_port: int | None = None
    warnings: tuple[str, ...] = ()


KNOWN_PEER_YAML = {"name", "wgIp", "wgInterface", "existingInterface", "wgPort", "adminPort"}


def load_peer_config(path: str | Path) -> PeerConfig:
    spath = str(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(spath, None, "must be a mapping (name, wgIp, wgInterface, existingInterface)")
    warnings = [f"{spath}:{_line(doc, k)}: unknown key {k!r} ignored" for k in doc if k not in KNOWN_PEER_YAML]
    name = doc.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 63):
        raise ConfigError(spath, _line(doc, "name"), "name must be a non-empty string of at most 63 characters")
    wg_ip = None
    if doc.get("wgIp") is not None:
        try:
            wg_ip = ipaddress.ip_address(str(doc["wgIp"]).strip())
        except ValueError as e:
            raise ConfigError(spath, _line(doc, "wgIp"), f"wgIp {e}") from None
    interface = doc.get("wgInterface")
    if interface is not None and (not isinstance(interface, str) or not 1 <= len(interface) <= 15):
        raise ConfigError(spath, _line(doc, "wgInterface"), "wgInterface must be an interface name (1..15 chars)")
    existing = doc.get("existingInterface", False)
    if not isinstance(existing, bool):
        raise ConfigError(spath, _line(doc, "existingInterface"), "existingInterface must be true or false")
    wg_port = _port(spath, doc, "wgPort") if "wgPort" in doc else None
    admin_port = _port(spath, doc, "adminPort") if "adminPort" in doc else None
    return PeerConfig(spath, name.strip() if name else None, wg_ip, interface, existing, wg_port, admin_port,
                      tuple(warnings))
