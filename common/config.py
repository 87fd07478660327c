"""Loading and validating the shared ``net.yaml`` (the original's format, unchanged).

Used by both daemons: the controller for everything, the root helper only for the
bounds it enforces (the overlay subnet). Errors name the file and line.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .endpoints import collision, endpoint_refusal, plain

log = logging.getLogger(__name__)

DEFAULT_ADMIN_PORT = 55555


#: the exit status of a daemon (and of ``check``) that refuses its configuration: LSB's "program
#: is not configured"; the units do not restart on it (RestartPreventExitStatus=6)
EXIT_CONFIG = 6


class ConfigError(Exception):
    """A configuration problem, rendered as ``file:line: message`` (and how to fix it)."""

    def __init__(self, path: str | Path, line: int | None, message: str, fix: str | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        self.fix = fix
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}" + (f" - fix: {fix}" if fix else ""))


class ConfigProblems(ConfigError):
    """Several problems at once (every one a ConfigError); the first gives path and line."""

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.path, first.line, first.message, first.fix)
        self.problems = problems
        self.args = ("\n".join(str(p) for p in problems),)

    def __str__(self) -> str:
        return self.args[0]


def raise_problems(problems: list[ConfigError]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigProblems(problems)


def _unknown_key(path: str, m: Any, key: Any, known: set[str], where: str = "") -> ConfigError:
    """An unknown key is an error (a typo would otherwise be silently ignored)."""
    import difflib  # (only for a mistyped key: not a module every daemon carries)

    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    if not close:
        close = [k for k in sorted(known) if k.lower() == str(key).lower()]
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
    return ConfigError(path, _line(m, key), f"unknown key {where}{key!r}", hint)


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
    #: expelled nodes (``revoked:``): their identities (Ed25519 public keys) and WireGuard keys
    revoked_identities: frozenset[bytes] = frozenset()
    revoked_wg_keys: frozenset[bytes] = frozenset()
    #: strict mode (``allowed:``): overlay IP -> the identities that may claim it; None = off
    allowed: dict[str, frozenset[bytes]] | None = None
    #: node names resolve as <name>.<domain> (``network.domain``)
    domain: str = "mesh.internal"


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


def _literal_endpoint_refusal(host: str, port: int) -> str | None:
    """The helper's endpoint rule for an endPoint written as an address (a host name is
    resolved, and checked, by the controller)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    return endpoint_refusal(addr, port)


def static_underlay(peers) -> dict:
    """The static peers' endPoints written as addresses: underlay addresses in use on every
    node (common.endpoints.collision), with what uses them."""
    out = {}
    for p in peers:
        try:
            out[plain(ipaddress.ip_address(p.endpoint_host))] = f"static peer {p.wg_ip}'s endPoint"
        except ValueError:
            pass  # (a host name: the controller checks what it resolves to)
    return out


def _port(path: str, m: dict, key: str, default: int | None = None) -> int:
    value = m.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(path, _line(m, key), f"{key} must be a port number 1..65535, not {value!r}")
    return value


KNOWN_TOP = {"network", "peers", "revoked", "allowed"}
KNOWN_REVOKED = {"identity", "wgKey", "name"}
KNOWN_NETWORK = {"sharedKey", "subnet", "domain"}
DEFAULT_DOMAIN = "mesh.internal"  # .internal: the top-level domain reserved for private use
KNOWN_PEER = {"endPoint", "adminPort", "wgIp"}


def load_network_config(path: str | Path) -> NetworkConfig:
    """Load and validate net.yaml. Raises ConfigError naming file and line (ConfigProblems:
    every problem found, not only the first)."""
    spath = str(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(spath, None, "top level must be a mapping with 'network' and 'peers'")
    problems: list[ConfigError] = []
    warnings: list[str] = []
    problems += [_unknown_key(spath, doc, key, KNOWN_TOP) for key in doc if key not in KNOWN_TOP]
    shared_key, subnet, domain = b"", None, DEFAULT_DOMAIN
    try:
        network = _require(spath, doc, "network", "top level")
        if not isinstance(network, dict):
            raise ConfigError(spath, _line(doc, "network"), "'network' must be a mapping")
        problems += [_unknown_key(spath, network, key, KNOWN_NETWORK, "network.") for key in network
                     if key not in KNOWN_NETWORK]
        try:
            shared_key = parse_shared_key(_require(spath, network, "sharedKey", "network"))
        except ValueError as e:
            problems.append(ConfigError(spath, _line(network, "sharedKey"), f"sharedKey {e}"))
        except ConfigError as e:
            problems.append(e)
        try:
            subnet = parse_subnet(_require(spath, network, "subnet", "network"), warnings)
        except ValueError as e:
            problems.append(ConfigError(spath, _line(network, "subnet"), f"subnet {e}"))
        if network.get("domain") is not None:
            try:
                domain = parse_domain(network["domain"])
            except ValueError as e:
                problems.append(ConfigError(spath, _line(network, "domain"), f"domain {e}"))
    except ConfigError as e:
        problems.append(e)

    peers: list[StaticPeer] = []
    raw_peers = doc.get("peers")
    if not isinstance(raw_peers, list) or not raw_peers:
        problems.append(ConfigError(spath, _line(doc, "peers") if "peers" in doc else _line(doc),
                                    "'peers' must list at least one static peer"))
        raw_peers = []
    seen: set[Any] = set()
    entries: list[Any] = []
    for entry in raw_peers:
        try:
            peer = _static_peer(spath, doc, entry, subnet, problems)
        except ConfigError as e:
            problems.append(e)
            continue
        if peer is None:
            continue
        if peer.wg_ip in seen:
            problems.append(ConfigError(spath, _line(entry, "wgIp"), f"wgIp {peer.wg_ip} is listed twice"))
        seen.add(peer.wg_ip)
        peers.append(peer)
        entries.append(entry)
    underlay = static_underlay(peers)
    for peer, entry in zip(peers, entries, strict=True):
        problem = collision(peer.wg_ip, underlay)
        if problem is not None:
            problems.append(ConfigError(spath, _line(entry, "wgIp"), f"wgIp {problem}",
                                        "give this peer a wgIp that no box uses on its LAN"))
    revoked_ids, revoked_keys = _revoked(spath, doc, problems)
    allowed = _allowed(spath, doc, subnet, problems)
    raise_problems(problems)
    return NetworkConfig(spath, shared_key, subnet, tuple(peers), tuple(warnings), revoked_ids, revoked_keys, allowed,
                         domain)


def is_dns_label(text: str) -> bool:
    """A DNS label as host names use them (RFC 1123): letters, digits, inner hyphens, 1-63."""
    return (1 <= len(text) <= 63 and text.isascii() and text[0] != "-" and text[-1] != "-"
            and all(c.isalnum() or c == "-" for c in text))


def parse_domain(text: Any) -> str:
    """The mesh's DNS domain, e.g. mesh.internal (lower case, no trailing dot)."""
    if not isinstance(text, str):
        raise ValueError("must be a domain name such as mesh.internal")
    name = text.strip().rstrip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 200 or not all(is_dns_label(label) for label in labels):
        raise ValueError(f"{text!r} is not a domain name (letters, digits, hyphens; e.g. mesh.internal)")
    return name


def parse_identity(text: Any) -> bytes:
    """A node's identity as `wg_netmanager nodes --full` and `revoke` print it: 64 hex digits."""
    if not isinstance(text, str) or len(text.strip()) != 64:
        raise ValueError("must be a node identity: 64 hex digits (`wg_netmanager revoke NODE` prints it)")
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("must be 64 hex digits") from None


def parse_wg_public_key(text: Any) -> bytes:
    try:
        raw = base64.b64decode(str(text).strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("must be a WireGuard public key: 32 bytes of base64 (`wg_netmanager revoke NODE` prints it)")
    return raw


def _revoked(spath: str, doc: Any, problems: list[ConfigError]) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """``revoked:``: expelled nodes, each an identity and its WireGuard key."""
    raw = doc.get("revoked")
    if raw is None:
        return frozenset(), frozenset()
    if not isinstance(raw, list):
        problems.append(ConfigError(spath, _line(doc, "revoked"), "'revoked' must be a list of nodes",
                                    "`wg_netmanager revoke NODE` prints an entry"))
        return frozenset(), frozenset()
    ids, keys = set(), set()
    for entry in raw:
        if not isinstance(entry, dict):
            problems.append(ConfigError(spath, _line(doc, "revoked"), "each revoked node must be a mapping "
                                        "(identity, wgKey, name)"))
            continue
        problems += [_unknown_key(spath, entry, k, KNOWN_REVOKED, "revoked[].") for k in entry
                     if k not in KNOWN_REVOKED]
        try:
            ids.add(parse_identity(_require(spath, entry, "identity", "revoked node")))
        except ValueError as e:
            problems.append(ConfigError(spath, _line(entry, "identity"), f"identity {e}"))
        except ConfigError as e:
            problems.append(e)
        if entry.get("wgKey") is not None:
            try:
                keys.add(parse_wg_public_key(entry["wgKey"]))
            except ValueError as e:
                problems.append(ConfigError(spath, _line(entry, "wgKey"), f"wgKey {e}"))
    return frozenset(ids), frozenset(keys)


def _allowed(spath: str, doc: Any, subnet, problems: list[ConfigError]) -> dict[str, frozenset[bytes]] | None:
    """``allowed:`` (strict mode): overlay IP -> the identity (or list of identities) that may
    claim it; a node not listed is refused everywhere."""
    raw = doc.get("allowed")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        problems.append(ConfigError(spath, _line(doc, "allowed"), "'allowed' must map overlay addresses to "
                                    "node identities"))
        return None
    out = {}
    for ip_text, ids in raw.items():
        line = _line(raw, ip_text)
        try:
            ip = ipaddress.ip_address(str(ip_text).strip())
        except ValueError as e:
            problems.append(ConfigError(spath, line, f"allowed: {e}"))
            continue
        if subnet is not None and not is_host_in(ip, subnet):
            problems.append(ConfigError(spath, line, f"allowed: {ip} is not a host address in {subnet}"))
            continue
        try:
            out[str(ip)] = frozenset(parse_identity(i) for i in (ids if isinstance(ids, list) else [ids]))
        except ValueError as e:
            problems.append(ConfigError(spath, line, f"allowed: {ip}: identity {e}"))
    return out


def _static_peer(spath: str, doc: Any, entry: Any, subnet, problems: list[ConfigError]) -> StaticPeer | None:
    """One entry of ``peers``; its problems are added to ``problems`` (None if it has any)."""
    if not isinstance(entry, dict):
        raise ConfigError(spath, _line(doc, "peers"), "each peer must be a mapping")
    before = len(problems)
    problems += [_unknown_key(spath, entry, key, KNOWN_PEER, "peers[].") for key in entry if key not in KNOWN_PEER]
    host = port = admin_port = wg_ip = None
    try:
        host, port = parse_endpoint(_require(spath, entry, "endPoint", "peer"))
        problem = _literal_endpoint_refusal(host, port)
        if problem is not None:
            problems.append(ConfigError(spath, _line(entry, "endPoint"), f"endPoint {problem}"))
    except ValueError as e:
        problems.append(ConfigError(spath, _line(entry, "endPoint"), f"endPoint {e}"))
    except ConfigError as e:
        problems.append(e)
    try:
        admin_port = _port(spath, entry, "adminPort", DEFAULT_ADMIN_PORT)
    except ConfigError as e:
        problems.append(e)
    try:
        wg_ip = ipaddress.ip_address(str(_require(spath, entry, "wgIp", "peer")).strip())
        if subnet is not None and not is_host_in(wg_ip, subnet):
            problems.append(ConfigError(spath, _line(entry, "wgIp"), f"wgIp {wg_ip} is not a host address in {subnet}"))
    except ValueError as e:
        problems.append(ConfigError(spath, _line(entry, "wgIp"), f"wgIp {e}"))
    except ConfigError as e:
        problems.append(e)
    if len(problems) > before:
        return None
    return StaticPeer(host, port, admin_port, wg_ip)


def is_host_in(ip, subnet) -> bool:
    """A node's address: inside the subnet, and neither its network nor broadcast address."""
    return ip in subnet and ip not in (subnet.network_address, subnet.broadcast_address)


@dataclass(frozen=True)
class PeerConfig:
    """The original's peer.yaml: this box's own settings."""

    path: str
    name: str | None = None
    wg_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    interface: str | None = None
    existing_interface: bool = False
    wg_port: int | None = None
    admin_port: int | None = None
    warnings: tuple[str, ...] = ()
    lines: dict[str, int] = field(default_factory=dict, compare=False)


KNOWN_PEER_YAML = {"name", "wgIp", "wgInterface", "existingInterface", "wgPort", "adminPort"}


def load_peer_config(path: str | Path) -> PeerConfig:
    spath = str(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(spath, None, "must be a mapping (name, wgIp, wgInterface, existingInterface)")
    problems = [_unknown_key(spath, doc, k, KNOWN_PEER_YAML) for k in doc if k not in KNOWN_PEER_YAML]
    name = doc.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 63):
        problems.append(ConfigError(spath, _line(doc, "name"),
                                    "name must be a non-empty string of at most 63 characters"))
        name = None
    wg_ip = None
    if doc.get("wgIp") is not None:
        try:
            wg_ip = ipaddress.ip_address(str(doc["wgIp"]).strip())
        except ValueError as e:
            problems.append(ConfigError(spath, _line(doc, "wgIp"), f"wgIp {e}"))
    interface = doc.get("wgInterface")
    if interface is not None and (not isinstance(interface, str) or not 1 <= len(interface) <= 15):
        problems.append(ConfigError(spath, _line(doc, "wgInterface"),
                                    "wgInterface must be an interface name (1..15 chars)"))
    existing = doc.get("existingInterface", False)
    if not isinstance(existing, bool):
        problems.append(ConfigError(spath, _line(doc, "existingInterface"),
                                    "existingInterface must be true or false"))
    ports = {}
    for key in ("wgPort", "adminPort"):
        try:
            ports[key] = _port(spath, doc, key) if key in doc else None
        except ConfigError as e:
            problems.append(e)
    raise_problems(problems)
    lines = {k: _line(doc, k) for k in doc} if isinstance(doc, _Map) else {}
    return PeerConfig(spath, name.strip() if name else None, wg_ip, interface, existing, ports["wgPort"],
                      ports["adminPort"], (), lines)


def merge_problems(network: NetworkConfig, peer: PeerConfig | None, interface: str | None,
                   address: str | None, local: Mapping | None = None) -> list[ConfigError]:
    """What the controller refuses in net.yaml, peer.yaml and the command line taken together;
    ``local``: this box's underlay addresses (address -> "this box's address on eth0")."""
    problems = []
    peer = peer or PeerConfig("")
    if interface and peer.interface and interface != peer.interface:
        problems.append(ConfigError(peer.path, peer.lines.get("wgInterface"),
                                    f"wgInterface {peer.interface} contradicts the command line's -i {interface} "
                                    "(the unit passes -i wg0)",
                                    "remove wgInterface, or change -i in the unit (systemctl edit wg-netmanager)"))
    ip_text = address or (str(peer.wg_ip) if peer.wg_ip else None)
    where = (peer.path, peer.lines.get("wgIp")) if not address and peer.wg_ip else ("-a", None)
    if ip_text is None:
        problems.append(ConfigError(peer.path or network.path, None, "no overlay address",
                                    "give wgIp in peer.yaml (or -a ADDRESS)"))
    elif not _is_ip(ip_text):
        problems.append(ConfigError(*where, f"{ip_text!r} is not an IP address"))
    elif not is_host_in(ipaddress.ip_address(ip_text), network.subnet):
        problems.append(ConfigError(*where, f"address {ip_text} is not a host address in the subnet "
                                    f"{network.subnet} of {network.path}"))
    else:
        problem = collision(ipaddress.ip_address(ip_text), {**static_underlay(network.peers), **(local or {})})
        if problem is not None:
            problems.append(ConfigError(*where, f"address {problem}",
                                        "choose an overlay address that no box uses on its LAN"))
    return problems


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------ the files themselves

#: the group the controller runs as (the units' User=/Group=) and reads net.yaml through
SERVICE_GROUP = "wg-netmanager"


def trust_problems(path: str | Path, st: os.stat_result | None = None) -> list[ConfigError]:
    """The root helper's rule for net.yaml: a regular file owned by root that nobody else can
    write, and that not every user can read (it holds the shared key)."""
    path = str(path)
    try:
        st = st or os.stat(path)
    except OSError as e:
        return [ConfigError(path, None, f"cannot read: {e.strerror}")]
    fix_owner = f"chown root:{SERVICE_GROUP} {path} && chmod 0640 {path}"
    problems = []
    if not stat.S_ISREG(st.st_mode):
        return [ConfigError(path, None, "not a regular file")]
    if st.st_uid != 0:
        problems.append(ConfigError(path, None, "must be owned by root: the helper trusts only root-owned "
                                    "configuration", fix_owner))
    if st.st_mode & 0o022:
        problems.append(ConfigError(path, None, "must not be writable by group or others", f"chmod go-w {path}"))
    if st.st_mode & 0o004:
        problems.append(ConfigError(path, None, "is readable by every user, and its sharedKey lets anyone join",
                                    f"chmod o-r {path} (the controller reads it through group {SERVICE_GROUP})"))
    return problems


def service_read_problem(path: str | Path, user: str = SERVICE_GROUP) -> ConfigError | None:
    """None if the controller's user (when it exists here) can read the file."""
    path = str(path)
    try:
        pw = pwd.getpwnam(user)
        st = os.stat(path)
    except (KeyError, OSError):
        return None
    groups = set(os.getgrouplist(user, pw.pw_gid))
    mode = st.st_mode
    if (st.st_uid == pw.pw_uid and mode & 0o400) or (st.st_gid in groups and mode & 0o040) or mode & 0o004:
        return None
    return ConfigError(path, None, f"the service user '{user}' cannot read it",
                       f"chown root:{SERVICE_GROUP} {path} && chmod 0640 {path}")
