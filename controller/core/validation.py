"""Address validation, as QUIC does it: no large answer to an address that has not shown it
receives there.

A holder of the shared key can sign datagrams from fresh identities with a forged source
address. A DIGEST, SYNC or REQUEST can draw many times its size in records (a new node's
bootstrap DIGEST of 155 bytes draws the whole mesh), so those three are answered only towards
an address that is validated: the tunnel (WireGuard authenticated it), a static peer's address
from net.yaml, or an address that echoed a challenge. From any other address the message is
held (the latest of each type per address), a challenge goes out instead (a PROBE: a few
dozen bytes, less than what came in; at most one a second per address), and its PROBE_ACK
releases the held messages: one round trip more for a node's very first exchange, nothing
after.

The challenge is stateless, as QUIC's Retry token is: its id is a keyed hash of the address and
the time, so any echo of it validates the address, whether or not the held message is still
there. (A table of outstanding challenges, 1024 at most, livelocked a hub when 2,000 nodes
joined at once: each evicted challenge was answered too late, and the next message from that
address drew a new one - no node was ever validated.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from .. import wire
from .types import Counters

#: messages whose answers may be much larger than they are
AMPLIFYING = frozenset({wire.DIGEST, wire.SYNC, wire.REQUEST})
#: addresses remembered as validated, and addresses with held messages (oldest forgotten first)
VALIDATED_MAX = 4096
HELD_MAX = 1024
#: a challenge is good in the epoch it was made in and the next; one goes to an address at
#: most this often (the messages that come meanwhile replace the held ones)
CHALLENGE_EPOCH = 30.0
CHALLENGE_RESEND = 1.0

Addr = tuple[str, int]


def challenge_id(key: bytes, subject: str, epoch: int) -> int:
    """A stateless challenge: a keyed hash of what it is about and the epoch, as a probe id."""
    return int.from_bytes(hashlib.blake2b(f"{subject} {epoch}".encode(), key=key, digest_size=4).digest(), "big")


def answers(probe_id: int, challenge: Callable[[int], int], now: float) -> bool:
    """Whether ``probe_id`` echoes ``challenge`` of this epoch or the one before."""
    epoch = int(now // CHALLENGE_EPOCH)
    return probe_id in (challenge(epoch), challenge(epoch - 1))


class AddressValidation:
    def __init__(self, random_bytes: Callable[[int], bytes], counters: Counters,
                 trusted: Callable[[Addr], bool]) -> None:
        self.counters = counters
        self.trusted = trusted  # a static peer's address from net.yaml
        self.key = random_bytes(32)  # (StaticProof's challenges use it too, hashing other text)
        self.validated: dict[Addr, None] = {}  # (insertion order: oldest first)
        #: address -> (when its challenge went, the latest message of each amplifying type)
        self.held: dict[Addr, tuple[float, dict[int, wire.Inner]]] = {}

    def needs_check(self, addr: Addr, overlay: bool) -> bool:
        return not overlay and addr not in self.validated and not self.trusted(addr)

    def _challenge(self, addr: Addr, epoch: int) -> int:
        return challenge_id(self.key, f"{addr[0]} {addr[1]}", epoch)

    def hold(self, addr: Addr, inner: wire.Inner, now: float) -> int | None:
        """Hold ``inner`` until ``addr`` is validated; the challenge id to send, or None if one
        went there less than CHALLENGE_RESEND ago."""
        self.counters.count("held_for_validation")
        sent_at, messages = self.held.pop(addr, (None, {}))
        messages[inner.type] = inner
        if sent_at is not None and 0 <= now - sent_at < CHALLENGE_RESEND:
            self.held[addr] = (sent_at, messages)
            return None
        if len(self.held) >= HELD_MAX:
            del self.held[next(iter(self.held))]
        self.held[addr] = (now, messages)
        return self._challenge(addr, int(now // CHALLENGE_EPOCH))

    def answered(self, addr: Addr, probe_id: int, now: float) -> list[wire.Inner] | None:
        """A PROBE_ACK from ``addr``: None if it answers no challenge of ours, else the address
        is validated and the messages it released are returned (none if they were forgotten:
        its next one is answered at once)."""
        if addr in self.validated or self.trusted(addr):
            return None
        if not answers(probe_id, lambda epoch: self._challenge(addr, epoch), now):
            return None
        self.validated[addr] = None
        if len(self.validated) > VALIDATED_MAX:
            del self.validated[next(iter(self.validated))]
        self.counters.count("addresses_validated")
        _, messages = self.held.pop(addr, (None, {}))
        return list(messages.values())


class StaticProof:
    """Who answers at a static peer's address. A static peer's overlay address is bound to the
    first identity seen with it (trust on first use, see Membership.bindings); a holder of the
    shared key whose record reached a brand-new node before the real static peer's would take
    it, and be trusted as a hub (LocalNode.is_hub). So that first binding goes only to an
    identity that answered a challenge sent to the address net.yaml gives for that static peer:
    a PROBE whose id is a keyed hash of the static peer's overlay address and the time (stateless,
    as AddressValidation's), answered from any source (a static peer whose replies leave from
    another address than it is reached at still proves itself; only a holder of the shared key
    on the path to it could read the challenge). A record claiming the address is refused until
    then (Membership._refusal); the challenge goes with each bootstrap round (see Core)."""

    def __init__(self, key: bytes, proven: dict[str, bytes]) -> None:
        self._key = key
        #: static peer's overlay address -> the identity that answered there (Membership reads it)
        self.proven = proven

    def challenge(self, overlay_ip: str, now: float) -> int:
        return self._id(overlay_ip, int(now // CHALLENGE_EPOCH))

    def _id(self, overlay_ip: str, epoch: int) -> int:
        return challenge_id(self._key, f"static {overlay_ip}", epoch)

    def answered(self, probe_id: int, sender: bytes, candidates: list[str], now: float) -> str | None:
        """A PROBE_ACK from ``sender``: the static peer's address (of ``candidates``) whose
        challenge it answers, now proven to be ``sender``'s; None if it answers none."""
        for ip in candidates:
            if answers(probe_id, lambda epoch, ip=ip: self._id(ip, epoch), now):
                self.proven[ip] = sender
                return ip
        return None
