"""The controller core: membership, signed gossip, link management and path selection.

Sans-I/O (like h11 and aioquic): :class:`Core` is fed with

* ``datagram_received(data, src, now)`` - an admin datagram arrived from ``src``;
* ``handle_timer(now)`` - the deadline from ``next_deadline()`` has passed;
* ``dataplane_observed(now, peers)`` - what WireGuard reports (Helper1.GetState);
* ``dataplane_applied(version, now)`` - Helper1.Apply returned for that data-plane version;
* local commands: ``connect(name_or_ip)``, ``probe(name_or_ip, now)``, ``set_lan_endpoints``,
  ``set_wg_public_key``, ``set_wg_port``, ``update_static_peers``;

and drained through

* ``take_datagrams()`` - [(bytes, (host, port))] to send from the admin socket;
* ``next_deadline()`` - when to call ``handle_timer`` next;
* ``dataplane`` / ``dataplane_version`` - the complete desired WireGuard peers and /32 routes;
* ``take_events()`` - what happened, for logs, the CLI and tests.

No sockets, asyncio, threads, clock or randomness inside: ``now`` (wall-clock seconds) is
passed in and randomness comes from the injected ``random_bytes(n)``.

The parts: ``types`` (configuration, outputs, events), ``local`` (this node, address
helpers), ``membership``, ``links``, ``gossip``, ``routes`` (graph, tree, route table),
``transport`` (sealing, addresses) and ``node`` (the facade: timers and orchestration).
"""

from .link import ATTEMPTING, DOWN, UP, Link, LinkState
from .membership import Admission, Member, Membership
from .node import Core
from .types import (
    LINK_POLICIES,
    CoreConfig,
    Counters,
    DataPlane,
    DesiredPeer,
    DesiredRoute,
    Event,
    EventKind,
    PeerObservation,
    StaticPeerConfig,
)

__all__ = [
    "ATTEMPTING", "DOWN", "LINK_POLICIES", "UP", "Admission", "Core", "CoreConfig", "Counters", "DataPlane",
    "DesiredPeer", "DesiredRoute", "Event", "EventKind", "Link", "LinkState", "Member", "Membership", "PeerObservation",
    "StaticPeerConfig",
]
