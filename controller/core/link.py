"""A link's state and its transitions (see :mod:`.links` for the machine that drives them)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from ..wire import EP_LAN, EP_REFLEXIVE, EP_STATIC


class LinkState(StrEnum):
    DOWN = "down"
    ATTEMPTING = "attempting"  # the peer is configured; waiting for a handshake newer than the attempt
    UP = "up"


ATTEMPTING, UP, DOWN = LinkState.ATTEMPTING, LinkState.UP, LinkState.DOWN
#: a candidate kind of our own (never on the wire): a LAN address of a node behind the same
#: public address as ours that is not on any of our LANs - NAT behind NAT, routed subnets
EP_NEARBY = 0x80
ENDPOINT_KINDS = {EP_STATIC: "static endpoint", EP_LAN: "LAN", EP_REFLEXIVE: "NAT-mapped endpoint",
                  EP_NEARBY: "LAN behind the same NAT"}
#: an RTT claim that moved waits this long before it is published: a link's first measurement
#: replaces a placeholder, and its neighbours' often follow; one record version carries them all
RTT_PUBLISH_DELAY = 1.0
#: how long a new link that only shortens a path waits to be announced with others (see up)
LINK_BATCH_DELAY = 1.0
#: how long a node's first announced links wait for its other link attempts in flight
FIRST_LINKS_WAIT = 0.3
#: a link's probe due within this share of the probe interval goes with the one due now: a
#: node's probes fall into step, one wakeup a second rather than one per link
PROBE_ALIGN = 0.25
#: the answering end probes itself once the other end's probes stopped this many intervals
PROBE_TAKEOVER = 2.5
#: a link whose users sent nothing over it this long is quiet: it is asked for a proof of life
#: (a probe answered, anything received from the other end) every QUIET_PROBE rather than every
#: probe interval; a link to a static peer every QUIET_PROBE_STATIC (a static peer that
#: restarted knows only who speaks to it). Both are below WireGuard's 25 s keepalive, so the
#: probe keeps a NAT mapping too. An ask not answered is repeated every QUIET_CHECK_PACE, and
#: the link is down QUIET_GRACE after the ask. Traffic ends quiet at once (and a link that
#: carries traffic is watched as ever). BFD's idea again: probe fast only where it matters
QUIET_AFTER = 10.0
#: links are looked at when something of theirs is due (a probe, a timeout, a retry), when
#: something changes (wake), and at least this often
LINKS_RECHECK = 5.0
QUIET_PROBE = 20.0
QUIET_PROBE_STATIC = 10.0
QUIET_CHECK_PACE = 0.5
QUIET_GRACE = 1.5
#: an untranslated end waits this long before it sends towards a NATed one (see holds_back)
HOLD_BACK = 1.0
#: a CONNECT not acknowledged is sent again after this long; a static end's "ready" each second
CONNECT_RETRY = 0.25
READY_REPEAT = 1.0
#: a static peer that never says "ready" (an old version): go anyway after this long
READY_WAIT = 2.0
#: failed attempts back off from this, doubling up to CoreConfig.retry_max
RETRY_BASE = 5.0
#: a WireGuard session is usable this long after its handshake; a live one (a restart kept
#: the data plane) proves the path for the first attempt
SESSION_LIFETIME = 180.0
LIVE_SESSION = 120.0


def live_session(last_handshake: float, now: float) -> bool:
    """Whether a WireGuard peer's session, by its last handshake, was kept live from before
    our own start (a controller restart keeps the data plane; a reboot's new device has none)."""
    return last_handshake > 0 and now - last_handshake < LIVE_SESSION


#: first RTT claims (ms) until probes measure the link: on a LAN, elsewhere
RTT_HINT_LAN = 2
RTT_HINT_DEFAULT = 50
#: WireGuard traffic beyond twice our admin bytes plus this much in a window counts as use of the link
TRAFFIC_SLACK = 600
TRAFFIC_WINDOW = 1.0
#: probes waiting for an answer: at most this many (the oldest quarter goes beyond it), and
#: none older than PENDING_PROBE_KEEP (an answer that late measures nothing and proves
#: nothing a fresh probe would not - a link is down 3 s without answers; unanswered probes to
#: links that went down or nodes that went away piled up towards the cap under churn, ~6 a
#: minute at a node of the chaos mesh)
MAX_PENDING_PROBES = 4096
PENDING_PROBE_KEEP = 60.0
#: a static peer says "ready" this long after our attempt began: our WireGuard's handshake is
#: likely in its 5 s back-off (it was away), so the attempt starts over with a fresh peer
STALE_ATTEMPT = 2.0
#: after our clock jumped, the other ends' records are newer than our view of the links for this long
RESUME_WINDOW = 10.0
#: a link whose data plane sent traffic (not only ours) but received nothing since the last
#: observation is suspect: it is probed this often, and it is down when neither a probe answer
#: nor anything from the peer's WireGuard came this long (or three RTTs) after the suspicion (BFD's idea: probe
#: fast only where it matters, and only while it matters)
SUSPECT_PROBE = 0.1
SUSPECT_GRACE = 0.5
#: a WireGuard keepalive (an empty transport message): not traffic that expects an answer
KEEPALIVE_BYTES = 32
#: what `wg_netmanager why` shows of a link's past: its last few transitions
HISTORY = 6
#: the weight of a new RTT sample in a link's moving average
RTT_GAIN = 0.2
#: a new attempt is checked again this soon; a retry waiting for its time at least this late;
#: a link with no candidate yet (our public endpoint unknown) looks again after this long
ATTEMPT_RECHECK = 0.25
RETRY_RECHECK = 0.05
NO_CANDIDATE_RETRY = 1.0
#: our first links wait for attempts to static peers and LAN neighbours started this recently
FIRST_LINKS_WINDOW = 1.0
#: the other end measures a link while its probes came within this many probe intervals
MEASURED_WITHIN = 3
INFINITY = float("inf")


@dataclass(slots=True)
class Link:
    peer: bytes  # id8
    static: bool  # one end is a static peer: kept forever, re-established by WireGuard itself
    initiator: bool  # this side starts attempts (and sets keepalive first)
    state: LinkState = DOWN
    endpoint: str = ""  # the WireGuard endpoint we configured for the peer
    endpoint_kind: int = 0
    attempt: int = 0
    attempt_started: float = 0.0
    candidates: list = field(default_factory=list)
    candidate_index: int = 0
    up_since: float = 0.0
    used_since: float = 0.0  # when our path to the peer became this link
    last_ack: float = 0.0  # last probe answered over this link
    last_probe_sent: float = 0.0  # (only the answer to the latest probe is an RTT sample: see Probes.answered)
    rtt: float = 0.0  # EWMA, ms
    rtt_hint: int = 0  # ms, before probes measured the link (see Links.up)
    claimed_rtt: int = 0
    fails: int = 0
    retry_at: float = 0.0
    pinned: bool = False
    last_traffic: float = 0.0
    silenced: bool = False  # idle (see Links.active): no keepalive, no probes
    woke_at: float = 0.0  # traffic ended its quiet (see QUIET_AFTER): the usual grace counts from here
    admin_bytes: int = 0  # our admin traffic over this link in the current traffic window
    admin_tx: int = 0  # what we sent since the last observation
    window_bytes: int = 0  # WireGuard rx + tx in the current traffic window
    window_start: float = 0.0
    last_rx: int = -1
    last_tx: int = -1
    tx_stalled_since: float = 0.0
    suspect_since: float = 0.0  # sent and received nothing since (see SUSPECT_GRACE); 0 = not suspect
    down_since: float = 0.0
    ever_up: bool = False
    next_probe: float = 0.0
    last_probe_rx: float = 0.0  # last probe the other end sent over this link
    last_rx_progress: float = 0.0  # WireGuard received bytes from the peer (observed)
    connect_sent: float = 0.0
    connect_acked: bool = False
    connect_body: bytes = b""
    connect_due: bool = False  # send CONNECT once our data plane has the peer
    held_back_done: bool = False
    peer_ready: bool = False  # the other end has us configured (static links)
    removal_applied: bool = True  # after a failure: the data plane no longer has the peer
    lost: bool = False  # it went down while up (silence): retried as soon as the other end speaks
    last_failure: str = ""  # why it last went down or an attempt failed
    #: (when, what, detail) of its last transitions, for `wg_netmanager why`
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))

    # ------------------------------------------------------------------ transitions

    def begin_attempt(self, now: float, endpoint: str, kind: int, connect_body: bytes) -> None:
        """Our side starts a new attempt: the peer goes into the data plane, and CONNECT follows
        once it is applied (see Links.applied)."""
        self.state = ATTEMPTING
        self.attempt = (self.attempt + 1) & 0xFFFFFFFF
        self.attempt_started = now
        self.endpoint = endpoint
        self.endpoint_kind = kind
        self.connect_body = connect_body
        self.connect_due = True
        self.connect_acked = False
        self.connect_sent = 0.0

    def answer_attempt(self, attempt: int, now: float, endpoint: str, kind: int) -> None:
        """The other end started attempt ``attempt`` towards us."""
        self.attempt = attempt
        self.state = ATTEMPTING
        self.attempt_started = now
        self.held_back_done = False
        self.endpoint = endpoint
        self.endpoint_kind = kind

    def default_claim(self) -> int:
        """The RTT claimed before anything was measured: a LAN's few ms, else a pessimistic 50."""
        return RTT_HINT_LAN if self.endpoint_kind in (EP_LAN, EP_NEARBY) else RTT_HINT_DEFAULT

    def note(self, now: float, what: str, detail: str = "") -> None:
        self.history.append((now, what, detail))

    def went_up(self, now: float) -> None:
        self.state = UP
        self.ever_up = True
        self.up_since = now
        self.last_ack = 0.0
        self.last_probe_sent = 0.0
        self.used_since = 0.0
        self.fails = 0
        self.last_traffic = now
        self.tx_stalled_since = 0.0
        self.suspect_since = 0.0
        if self.claimed_rtt == 0:
            # until probes over the link measure it: what CONNECT took (static peers), a LAN's
            # few ms, or a pessimistic 50 ms. A good first guess spares the mesh a record version
            # per link (RTT claims move only by more than max(5 ms, 25 %)).
            self.claimed_rtt = self.rtt_hint or self.default_claim()

    def went_down(self, now: float, retry_max: float) -> None:
        """An attempt failed or the link died: the peer leaves the data plane, and a retry waits
        until that was applied (a fresh peer forces a fresh handshake). What was measured over
        it is forgotten: a link that comes back is measured anew."""
        self.lost = self.state == UP
        self.rtt = 0.0
        self.rtt_hint = 0
        self.claimed_rtt = 0
        self.fails += 1
        self.state = DOWN
        self.suspect_since = 0.0
        self.down_since = now
        self.removal_applied = False
        self.peer_ready = False
        if self.static:
            self.retry_at = now  # WireGuard itself retries handshakes; the peer just has to come back
        else:
            self.retry_at = now + min(retry_max, RETRY_BASE * (2 ** min(self.fails - 1, 10)))
        self.used_since = 0.0

    def start_over(self, now: float, peer_gone: bool) -> None:
        """The link starts over at once, without backoff and without counting as a failure,
        with a fresh WireGuard peer: ``peer_gone`` when the old one leaves the data plane anyway
        (a new key is a new peer), else it is removed first (its handshake state forgotten)."""
        self.state = DOWN
        self.suspect_since = 0.0
        self.removal_applied = peer_gone
        self.retry_at = now
        self.peer_ready = False

    def measured(self, rtt_ms: float, now: float) -> None:
        """A probe over the link was answered in time."""
        self.last_ack = now
        self.suspect_since = 0.0
        self.rtt = rtt_ms if self.rtt == 0 else (1 - RTT_GAIN) * self.rtt + RTT_GAIN * rtt_ms

    def quiet(self, now: float) -> bool:
        return not self.pinned and now - self.last_traffic >= QUIET_AFTER and now - self.up_since >= QUIET_AFTER

    def quiet_interval(self) -> float:
        return QUIET_PROBE_STATIC if self.static else QUIET_PROBE

    def suspect_grace(self) -> float:
        """How long a suspect link has to answer: SUSPECT_GRACE, or three RTTs on a long one."""
        return max(SUSPECT_GRACE, 3 * self.rtt / 1000)

    def rtt_claim_moved(self, new: int) -> bool:
        """Hysteresis: a claim changes only by more than max(5 ms, 25 %)."""
        old = self.claimed_rtt
        return old == 0 or abs(new - old) > max(5, old // 4)
