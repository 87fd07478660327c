"""Address validation, as QUIC does it: no large answer to an address that has not shown it
receives there.

A holder of the shared key can sign datagrams from fresh identities with a forged source
address. A DIGEST, SYNC or REQUEST can draw many times its size in records (a new node's
bootstrap DIGEST of 155 bytes draws the whole mesh), so those three are answered only towards
an address that is validated: the tunnel (WireGuard authenticated it), a static peer's address
from net.yaml, or an address that echoed a random challenge. From any other address the
message is held (the latest one per address), a challenge goes out instead (a PROBE with a
random id: a few dozen bytes, less than what came in), and its PROBE_ACK releases the held
message: one round trip more for a node's very first exchange, nothing after.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import wire
from .types import Counters

#: messages whose answers may be much larger than they are
AMPLIFYING = frozenset({wire.DIGEST, wire.SYNC, wire.REQUEST})
#: addresses remembered as validated, and challenges outstanding (oldest forgotten first)
VALIDATED_MAX = 4096
CHALLENGES_MAX = 1024

Addr = tuple[str, int]


class AddressValidation:
    def __init__(self, random_bytes: Callable[[int], bytes], counters: Counters,
                 trusted: Callable[[Addr], bool]) -> None:
        self.random_bytes = random_bytes
        self.counters = counters
        self.trusted = trusted  # a static peer's address from net.yaml
        self.validated: dict[Addr, None] = {}  # (insertion order: oldest first)
        self.challenges: dict[Addr, tuple[int, wire.Inner]] = {}  # address -> (challenge id, held message)

    def needs_check(self, addr: Addr, overlay: bool) -> bool:
        return not overlay and addr not in self.validated and not self.trusted(addr)

    def hold(self, addr: Addr, inner: wire.Inner) -> int | None:
        """Hold ``inner`` until ``addr`` is validated; the challenge id to send, or None if one
        is already out (the held message is replaced by this newer one)."""
        self.counters.count("held_for_validation")
        pending = self.challenges.pop(addr, None)
        if pending is not None:
            self.challenges[addr] = (pending[0], inner)
            return None
        if len(self.challenges) >= CHALLENGES_MAX:
            del self.challenges[next(iter(self.challenges))]
        challenge = int.from_bytes(self.random_bytes(4), "big")
        self.challenges[addr] = (challenge, inner)
        return challenge

    def answered(self, addr: Addr, probe_id: int) -> wire.Inner | None:
        """A PROBE_ACK from ``addr``: the message it released if it answers our challenge."""
        pending = self.challenges.get(addr)
        if pending is None or pending[0] != probe_id:
            return None
        del self.challenges[addr]
        self.validated[addr] = None
        if len(self.validated) > VALIDATED_MAX:
            del self.validated[next(iter(self.validated))]
        self.counters.count("addresses_validated")
        return pending[1]
