"""Probes: one end of each up link asks the other every second; the answer is the link's
liveness and its RTT. An answer that comes too late (after a pause of ours, or of theirs) or
belongs to an earlier up period is never taken as an RTT: estimates cannot be poisoned."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .. import wire
from .link import INFINITY, MAX_PENDING_PROBES, PENDING_PROBE_KEEP, RESUME_WINDOW, RTT_PUBLISH_DELAY, UP, Link
from .routes import Routing
from .transport import Transport
from .types import CoreConfig, Counters


class Probes:
    def __init__(self, config: CoreConfig, links: Mapping[bytes, Link], routing: Routing, transport: Transport,
                 counters: Counters, publish: Callable[..., None]) -> None:
        self.config = config
        self.links = links
        self.routing = routing
        self.transport = transport
        self.counters = counters
        self.publish = publish  # (now, delay): our record must change (an RTT claim moved)
        #: id -> (to, sent at, direct, user, clean: the link's probe before it was answered)
        self.pending: dict[int, tuple[bytes, float, bool, bool, bool]] = {}
        self.seq = 0
        #: when our clock last jumped (we were paused or suspended): what was sent before is
        #: late, and silence before it says nothing about the links
        self.resumed_at = -INFINITY

    def send(self, id8: bytes, now: float, user: bool = False) -> int | None:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        pid = self.seq
        direct = self.routing.direct(id8)
        if not self.transport.send(id8, wire.PROBE, wire.body_probe(pid), now):
            return None
        link = self.links.get(id8)
        # (Karn's rule, as for TCP's retransmissions: a probe sent while the one before it was
        # still unanswered measures no RTT - the other end may have been stalled, and answers
        # every waiting probe at once when it resumes)
        clean = link is None or link.last_ack >= link.last_probe_sent
        self.pending[pid] = (id8, now, direct, user, clean)
        if link is not None:
            link.last_probe_sent = now
        if len(self.pending) > MAX_PENDING_PROBES:
            for old in sorted(self.pending)[:MAX_PENDING_PROBES // 4]:
                del self.pending[old]
        return pid

    def expire(self, now: float) -> None:
        """Forget probes unanswered for PENDING_PROBE_KEEP (the housekeeping tick's); not right
        after our clock jumped (their answers may be waiting in our socket's backlog)."""
        if now < self.resumed_at + RESUME_WINDOW:
            return
        for pid, pending in list(self.pending.items()):  # (in the order they were sent)
            if now - pending[1] < PENDING_PROBE_KEEP:
                break
            del self.pending[pid]

    def answered(self, sender8: bytes, probe_id: int, now: float) -> tuple[float, bool] | None:
        """(RTT in ms, asked by the user) of an answered probe; None if we sent no such probe."""
        pending = self.pending.pop(probe_id, None)
        if pending is None or pending[0] != sender8:
            self.counters.count("drop_unexpected_ack")
            return None
        _, sent_at, direct, user, clean = pending
        rtt_ms = max((now - sent_at) * 1000.0, 0.1)
        link = self.links.get(sender8)
        if link is not None and direct and link.state == UP and sent_at >= link.up_since:
            if sent_at < self.resumed_at + RESUME_WINDOW or rtt_ms > self.config.link_down_after * 1000 or \
                    sent_at < link.last_probe_sent or not clean:
                # sent before a pause of ours or while we catch up after it (its answer waits
                # in our backlog), or answered after the other end's; or, as Karn's rule for
                # TCP, a later probe went out meanwhile or the one before was unanswered when it
                # went (a paused end answers every waiting probe at once when it resumes: in
                # the simulator the oldest 2.8 s late, the latest 0.3 s, and its LAN link was
                # claimed at 61-624 ms): it shows the other end is there, not what the link takes
                self.counters.count("probe_answer_late")
                link.last_ack = now
                link.suspect_since = 0.0
            else:
                link.measured(rtt_ms, now)
                new = max(1, int(round(link.rtt)))
                if link.rtt_claim_moved(new):
                    link.claimed_rtt = min(new, 65535)
                    self.publish(now, RTT_PUBLISH_DELAY)
        elif link is not None and direct:
            self.counters.count("probe_answer_stale")  # from before the link's current up period
        return rtt_ms, user
