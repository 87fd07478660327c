"""What goes into the core and what comes out: configuration, the desired data plane,
events and what WireGuard reports. Plain data, no behaviour."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

LINK_POLICIES = ("auto", "all", "static")


@dataclass(frozen=True)
class StaticPeerConfig:
    """A static peer from net.yaml, its host already resolved to an IP by the runtime."""

    overlay_ip: str
    host: str
    wg_port: int
    admin_port: int


@dataclass(frozen=True)
class CoreConfig:
    shared_key: bytes
    subnet: str
    overlay_ip: str
    name: str
    wg_port: int
    admin_port: int
    static_peers: tuple[StaticPeerConfig, ...]
    #: identities allowed per overlay IP (strict mode); None = first identity seen wins
    allowed_identities: Mapping[str, frozenset[bytes]] | None = None
    #: expelled nodes (net.yaml ``revoked:``): refused by identity and by WireGuard key
    revoked_identities: frozenset[bytes] = frozenset()
    revoked_wg_keys: frozenset[bytes] = frozenset()
    #: auto: every pair tries direct, idle direct links go silent; all: every pair direct and
    #: kept alive (the original); static: direct only to static peers, LAN neighbours, pinned nodes
    link_policy: str = "auto"
    probe_interval: float = 1.0
    link_down_after: float = 3.0
    attempt_timeout: float = 3.0
    gossip_interval: float = 0.2
    gossip_fanout: int = 2
    gossip_rounds: int = 2
    sync_interval: float = 1.0
    digest_leaf: int = 256  # a digest lists at most this many ids, else hashes of ranges
    bootstrap_interval: float = 1.0
    replay_window: float = 120.0
    keepalive: int = 25
    idle_timeout: float = 120.0
    hop_cost_ms: int = 100
    path_debounce: float = 0.02
    publish_interval: float = 0.05
    retry_max: float = 300.0
    forget_after: float = 3600.0
    max_attempts_per_second: int = 20

    def __post_init__(self) -> None:
        if self.link_policy not in LINK_POLICIES:
            raise ValueError(f"link policy must be one of {', '.join(LINK_POLICIES)}")
        if len(self.shared_key) != 32:
            raise ValueError("shared key must be 32 bytes")


# ----------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class DesiredPeer:
    public_key: bytes
    endpoint: str  # "" = leave WireGuard's (roaming) endpoint alone
    allowed_ips: tuple[str, ...]
    keepalive: int


@dataclass(frozen=True, slots=True)
class DesiredRoute:
    destination: str
    gateway: str | None


@dataclass(frozen=True)
class DataPlane:
    peers: tuple[DesiredPeer, ...] = ()
    routes: tuple[DesiredRoute, ...] = ()

    def helper_args(self) -> tuple[list, list]:
        """The Helper1.Apply arguments (a(ssasu), a(ss))."""
        peers = [[base64.b64encode(p.public_key).decode(), p.endpoint, list(p.allowed_ips), p.keepalive]
                 for p in self.peers]
        routes = [[r.destination, r.gateway or ""] for r in self.routes]
        return peers, routes


class EventKind(StrEnum):
    NODE_DISCOVERED = "node_discovered"
    NODE_REACHABLE = "node_reachable"
    NODE_UNREACHABLE = "node_unreachable"
    NODE_FORGOTTEN = "node_forgotten"
    NODE_LEFT = "node_left"
    NODE_REVOKED = "node_revoked"
    PATH_CHANGED = "path_changed"
    LINK_ATTEMPT = "link_attempt"
    LINK_UP = "link_up"
    LINK_DOWN = "link_down"
    PROBE_RESULT = "probe_result"
    REFLEXIVE_ENDPOINT = "reflexive_endpoint"
    ADDRESSES_CHANGED = "addresses_changed"
    WG_KEY_ROTATED = "wg_key_rotated"
    CLAIM_REFUSED = "claim_refused"
    CLOCK_JUMPED = "clock_jumped"


class Event(NamedTuple):
    """Something that happened, for logs, the CLI and tests."""

    kind: EventKind
    data: dict

    def __str__(self) -> str:
        return f"{self.kind} " + " ".join(f"{k}={v}" for k, v in self.data.items())


@dataclass(frozen=True)
class PeerObservation:
    """One WireGuard peer as the data plane reports it."""

    endpoint: str
    last_handshake: float
    rx_bytes: int
    tx_bytes: int


class Counters(dict):
    """Named counters (``GetCounters``): drops by reason, messages by type, refusals."""

    def count(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n
