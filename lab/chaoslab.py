"""Chaos on real parts: the faults of daily life injected into an 8-box mesh (the benchmark is
bench/chaos.py; tests/test_chaos_netns.py runs a short version in CI).

Topology (``topologies.chaos``): two public boxes (beta, the static peer, and gamma), a
firewalled data-centre box (alpha), five boxes behind one home NAT router, one of them a laptop
(golf) that roams to a café NAT and back. Ten fixed pairs ping at 5/s throughout (``ping -D``:
every reply is time-stamped). Every ``period`` seconds one fault, drawn at random (``seed``),
for ``minutes``:

  kill_controller    kill -9 of a controller; started again 1 s later (RestartSec=1)
  kill_helper        kill -9 of a helper; started again 2 s later (RestartSec=2)
  restart_controller SIGTERM, then started again at once (systemctl restart)
  pause              SIGSTOP of a controller for 10 s, then SIGCONT (a suspend as peers see it)
  restart_box        both daemons stopped and started again; the device stays
  reboot             both daemons killed, the device, our routes and the box's pings gone;
                     1 s later the helper, the box's pings and the controller start again
  lan_cut            two boxes on the home LAN cannot reach each other for 15 s (frames between
                     them dropped by the LAN's switch)
  roam               the laptop moves to the café, and home again 10 s later

then, a period after the last fault ended, a quiet minute. A fault's outage is the longest
time, from its start until the next fault, that any pair went without a reply beyond the ping
interval; for a reboot the time the box was down by design (kill -> daemons starting) does not
count.

Counted besides: link downs and Applies in the quiet minute (controller logs; their lines,
with link and path changes, in "quiet_log"), WireGuard peers
and proto-157 routes left that belong to no live node (at the end), overlay packets in clear
text on any underlay segment (an nftables bridge counter on every segment: a packet to or from
the overlay subnet that is not inside the tunnel), ICMP redirects sent or received by the
mesh boxes (/proc/net/snmp), tracebacks in any log, and the growth of every controller's
resident set (a least-squares slope over each process's life after its first minute, for
processes that lived at least half the run).

The result: {"faults": {type: n}, "max_outage_s": {type: s}, "median_outage_s": {type: s},
"quiet_link_downs", "quiet_applies" (most by one node), "stale_peers", "stale_routes",
"cleartext_leaks", "redirects", "tracebacks", "rss_growth_mb_per_h", ...}. Progress goes to stderr.
"""


from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from . import topologies
from .demo import paths
from .meshlab import ping_replies, rss_mb
from .netlab import Box, Lab

FAULTS = ("kill_controller", "kill_helper", "restart_controller", "pause", "restart_box", "reboot", "lan_cut",
          "roam")
PAIRS = [("alpha", "beta"), ("beta", "charlie"), ("charlie", "delta"), ("delta", "echo"), ("echo", "foxtrot"),
         ("foxtrot", "golf"), ("golf", "gamma"), ("gamma", "alpha"), ("charlie", "golf"), ("alpha", "echo")]
INTERVAL = 0.2
LEAK_NFT = """table bridge wgnmleak {
  counter clear { }
  set seen { type ipv4_addr . ipv4_addr; flags dynamic; size 4096; }
  chain f { type filter hook forward priority 0;
    ip daddr 10.1.1.0/24 counter name clear add @seen { ip saddr . ip daddr }
    ip saddr 10.1.1.0/24 ip daddr != 10.1.1.0/24 counter name clear add @seen { ip saddr . ip daddr }
  }
}
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Pingers:
    """One ``ping -D`` per pair, started again whenever it exits (ping gives up at once when its
    box has no route yet); replies (wall-clock times) are collected from every run."""

    def __init__(self, mesh: topologies.Mesh) -> None:
        self.mesh = mesh
        self.procs: dict[tuple[str, str], subprocess.Popen] = {}
        self.files: dict[tuple[str, str], list[str]] = {pair: [] for pair in PAIRS}
        self.wanted: set[tuple[str, str]] = set()
        self.runs = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.keeper = threading.Thread(target=self._keep, daemon=True)
        self.keeper.start()

    def _spawn(self, pair: tuple[str, str]) -> None:
        box = self.mesh.boxes[pair[0]]
        self.runs += 1
        path = box.dir / f"ping-{pair[1]}-{self.runs}.log"
        self.files[pair].append(str(path))
        with open(path, "wb") as out:
            self.procs[pair] = subprocess.Popen(
                box._enter() + ["ping", "-n", "-D", "-i", str(INTERVAL), "-W", "1", self.mesh.overlay[pair[1]]],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def _keep(self) -> None:
        while not self.stopping.wait(0.2):
            with self.lock:
                for pair in self.wanted:
                    if self.procs[pair].poll() is not None:
                        self._spawn(pair)

    def start(self, src: str | None = None) -> None:
        with self.lock:
            for pair in PAIRS:
                if src is None or pair[0] == src:
                    self.wanted.add(pair)
                    self._spawn(pair)

    def stop(self, src: str | None = None) -> None:
        with self.lock:
            for pair in [p for p in self.wanted if src is None or p[0] == src]:
                self.wanted.discard(pair)
                proc = self.procs.pop(pair)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                proc.wait(5)

    def replies(self) -> dict[tuple[str, str], list[float]]:
        out = {}
        for pair, paths_ in self.files.items():
            out[pair] = sorted(t for path in paths_ for t in ping_replies(path))
        return out


def outage(replies: list[float], start: float, end: float, excused_until: float | None) -> float:
    """The longest time within [start, end] without a reply, beyond one ping interval; time
    before ``excused_until`` does not count."""
    worst = 0.0
    previous = None
    for t in replies + [end]:
        if previous is not None and t > start and previous < end:
            since = max(previous, excused_until or previous)
            worst = max(worst, min(t, end) - since - INTERVAL)
        previous = t
    if previous is None:
        worst = end - start
    return max(0.0, worst)


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    end: float = 0.0  # when the injection finished
    excused: tuple[float, float] | None = None  # (box down by design: from, until)
    leaks: int = 0  # overlay packets seen in clear text from its start to the next fault's


class Chaos:
    def __init__(self, mesh: topologies.Mesh, rng: random.Random, pingers: Pingers,
                 targets: Sequence[str] | None = None) -> None:
        self.mesh = mesh
        self.rng = rng
        self.targets = list(targets) if targets else list(mesh.boxes)  # the boxes faults hit
        self.pingers = pingers
        self.net_yaml = {name: box.dir / "net.yaml" for name, box in mesh.boxes.items()}

    def box(self, name: str) -> Box:
        return self.mesh.boxes[name]

    def start_controller(self, name: str) -> None:
        self.box(name).start_controller(self.net_yaml[name], self.mesh.overlay[name])

    def start_helper(self, name: str) -> None:
        self.box(name).start_helper(self.net_yaml[name], verbose=False)

    def inject(self, kind: str) -> Fault:
        names = self.targets
        if kind == "lan_cut":
            a, b = self.rng.choice([p for p in PAIRS if p[0] in topologies.CHAOS_HOME and
                                    p[1] in topologies.CHAOS_HOME])
            target = f"{a}-{b}"
        else:
            target = "golf" if kind == "roam" else self.rng.choice(names)
        fault = Fault(kind, target, time.time())
        getattr(self, kind)(fault)
        fault.end = time.time()
        return fault

    def kill_controller(self, fault: Fault) -> None:
        self.box(fault.target).kill("controller", signal.SIGKILL)
        time.sleep(1)
        self.start_controller(fault.target)

    def kill_helper(self, fault: Fault) -> None:
        self.box(fault.target).kill("helper", signal.SIGKILL)
        time.sleep(2)
        self.start_helper(fault.target)

    def restart_controller(self, fault: Fault) -> None:
        self.box(fault.target).kill("controller", signal.SIGTERM)
        self.start_controller(fault.target)

    def pause(self, fault: Fault) -> None:
        group = os.getpgid(self.box(fault.target).procs["controller"].pid)
        os.killpg(group, signal.SIGSTOP)
        try:
            time.sleep(10)
        finally:
            os.killpg(group, signal.SIGCONT)

    def restart_box(self, fault: Fault) -> None:
        box = self.box(fault.target)
        box.kill("controller", signal.SIGTERM)
        box.kill("helper", signal.SIGTERM)
        self.start_helper(fault.target)
        self.start_controller(fault.target)

    def reboot(self, fault: Fault) -> None:
        name = fault.target
        box = self.box(name)
        self.pingers.stop(name)
        box.kill("controller", signal.SIGKILL)
        box.kill("helper", signal.SIGKILL)
        box.run(["ip", "link", "del", "wg0"], check=False)  # (wireguard-go exits with it)
        box.run(["ip", "route", "flush", "proto", "157"], check=False)
        box.run(["ip", "route", "del", "unreachable", "10.1.1.0/24"], check=False)
        time.sleep(1)
        up = time.time()
        fault.excused = (fault.start, up)
        self.start_helper(name)
        self.pingers.start(name)
        self.start_controller(name)

    def lan_cut(self, fault: Fault) -> None:
        a, b = (topologies.CHAOS_HOME[name][0] for name in fault.target.split("-"))
        home = self.mesh.lab.segments["home"]
        home.cut(a, b)
        try:
            time.sleep(15)
        finally:
            home.cut(a, b, on=False)

    def roam(self, fault: Fault) -> None:
        topologies.roam(self.mesh)
        time.sleep(10)
        topologies.come_home(self.mesh)


class RssSampler(threading.Thread):
    """Every controller's and helper's RSS every 5 s: {(box, daemon, pid): [(t, MB)]}."""

    def __init__(self, mesh: topologies.Mesh) -> None:
        super().__init__(daemon=True)
        self.mesh = mesh
        self.samples: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(5):
            now = time.time()
            for name, box in self.mesh.boxes.items():
                for daemon in ("controller", "helper"):
                    proc = box.procs.get(daemon)
                    try:
                        mb = rss_mb(proc.pid) if proc is not None else 0.0
                    except OSError:  # (restarted meanwhile)
                        continue
                    if mb:
                        self.samples.setdefault((name, daemon, proc.pid), []).append((now, mb))

    def growth_mb_per_h(self, daemon: str, min_span: float) -> tuple[float | None, float | None, float]:
        """The largest least-squares slope over processes that lived ``min_span`` s past their
        first minute, the largest slope over the second half of those lives (warm-up left
        out: a Python heap grows to its working size first), and the largest RSS seen (MB)."""
        slopes, late, peak = [], [], 0.0
        for (_, kind, _), series in self.samples.items():
            if kind != daemon:
                continue
            peak = max(peak, max(mb for _, mb in series))
            warm = [(t, mb) for t, mb in series if t - series[0][0] >= 60]
            if len(warm) < 6 or warm[-1][0] - warm[0][0] < min_span:
                continue
            slopes.append(_slope(warm) * 3600)
            half = warm[len(warm) // 2:]
            late.append(_slope(half) * 3600)
            log(f"rss {daemon} {warm[0][1]:.1f} -> {half[0][1]:.1f} -> {warm[-1][1]:.1f} MB over "
                f"{(warm[-1][0] - warm[0][0]) / 60:.1f} min: {slopes[-1]:+.2f} MB/h, "
                f"second half {late[-1]:+.2f} MB/h")
        return ((round(max(slopes), 2) if slopes else None), (round(max(late), 2) if late else None),
                round(peak, 1))


def _slope(series: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) samples, per second."""
    mt = statistics.fmean(t for t, _ in series)
    my = statistics.fmean(y for _, y in series)
    return sum((t - mt) * (y - my) for t, y in series) / sum((t - mt) ** 2 for t, _ in series)


#: what fault_log keeps of a controller's log: links, paths, nodes, the data plane, trouble
FAULT_LOG_KEYS = ("msg=link_", "msg=path_changed", "msg=node_", "msg=applied", 'msg="device ready',
                  'msg="controller running', "level=warning", "level=error")


def fault_log(logs: dict[str, str], boxes: Sequence[str], start: float, end: float,
              per_box: int = 60) -> dict[str, list[str]]:
    """The lines of the boxes' controller logs stamped within [start, end] (epoch s) that say
    what links, paths and the data plane did: what the worst fault of each type left, so
    that a slow one can be read after the lab is gone."""
    out = {}
    for name in boxes:
        kept = []
        for line in logs.get(name, "").splitlines():
            if not line.startswith("ts=") or not any(key in line for key in FAULT_LOG_KEYS):
                continue
            stamp = line[3:26]
            try:
                t = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(stamp[19:] or 0)
            except ValueError:
                continue
            if start <= t <= end:
                kept.append(line[:240])
        if kept:
            out[name] = kept[:per_box]
    return out


def snmp_redirects(box: Box) -> int:
    lines = [line.split() for line in box.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Icmp:")]
    fields = dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))
    return fields["InRedirects"] + fields["OutRedirects"]


def leak_packets(lab: Lab) -> int:
    total = 0
    for segment in lab.segments.values():
        r = subprocess.run(["ip", "netns", "exec", segment.ns, "nft", "-j", "list", "counter", "bridge",
                            "wgnmleak", "clear"], capture_output=True, text=True, check=True)
        total += sum(item["counter"]["packets"] for item in json.loads(r.stdout)["nftables"] if "counter" in item)
    return total


def leak_flows(lab: Lab) -> dict[str, list[str]]:
    """segment -> "source > destination" of the overlay packets seen there in clear text."""
    out = {}
    for name, segment in lab.segments.items():
        r = subprocess.run(["ip", "netns", "exec", segment.ns, "nft", "-j", "list", "set", "bridge", "wgnmleak",
                            "seen"], capture_output=True, text=True, check=True)
        for item in json.loads(r.stdout)["nftables"]:
            for element in item.get("set", {}).get("elem", []):
                value = element.get("elem", {}).get("val", element) if isinstance(element, dict) else element
                pair = value.get("concat", value) if isinstance(value, dict) else value
                out.setdefault(name, []).append(" > ".join(map(str, pair)))
    return out


def stale(mesh: topologies.Mesh) -> tuple[int, int, int]:
    """(WireGuard peers with no live node's key, proto-157 routes to no live node's address,
    pairs whose route is missing)."""
    keys = {name: box.run(["wg", "show", "wg0", "public-key"]).stdout.strip() for name, box in mesh.boxes.items()}
    stale_peers = stale_routes = missing = 0
    for name, box in mesh.boxes.items():
        others = {keys[n] for n in mesh.boxes if n != name}
        peers = [line.split()[0] for line in box.run(["wg", "show", "wg0", "peers"]).stdout.splitlines()]
        stale_peers += sum(key not in others for key in peers)
        routes = {line.split()[0] for line in box.run(["ip", "-4", "route", "show", "proto", "157", "type",
                                                       "unicast"]).stdout.splitlines()}
        wanted = {mesh.overlay[n] for n in mesh.boxes if n != name}
        stale_routes += len(routes - wanted)
        missing += len(wanted - routes)
    return stale_peers, stale_routes, missing


def run(minutes: float = 10.0, period: float = 20.0, quiet: float = 60.0, seed: int = 1,
        kinds: Sequence[str] = FAULTS, targets: Sequence[str] | None = None) -> dict:
    """The whole run (see the module's docstring); returns the result (bench/chaos.py prints it).
    ``targets``: the boxes the faults are drawn among (default: all; lan_cut and roam keep
    their own)."""
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault types: {', '.join(sorted(unknown))}")
    unknown = set(targets or ()) - set(topologies.CHAOS_NAMES)
    if unknown:
        raise ValueError(f"unknown boxes: {', '.join(sorted(unknown))}")
    rng = random.Random(seed)
    with Lab("ch") as lab:
        mesh = topologies.chaos(lab)
        for segment in lab.segments.values():
            subprocess.run(["ip", "netns", "exec", segment.ns, "nft", "-f", "-"], input=LEAK_NFT, text=True,
                           check=True, capture_output=True)
        started = time.monotonic()
        mesh.start()
        every = list(mesh.boxes)

        def reachable() -> bool:
            return all(len(p) == len(every) - 1 and "unreachable" not in p.values()
                       for p in (paths(mesh.boxes[n]) for n in every))
        while not reachable():
            if time.monotonic() - started > 120:
                raise RuntimeError(f"mesh did not form: {({n: paths(b) for n, b in mesh.boxes.items()})}")
            time.sleep(0.5)
        log(f"mesh formed in {time.monotonic() - started:.1f} s")
        time.sleep(10)
        pingers = Pingers(mesh)
        pingers.start()
        redirects_before = {name: snmp_redirects(box) for name, box in mesh.boxes.items()}
        leaks_before = leaks_seen = leak_packets(lab)
        sampler = RssSampler(mesh)
        sampler.start()
        chaos = Chaos(mesh, rng, pingers, targets)
        time.sleep(5)
        faults: list[Fault] = []
        t0 = time.time()
        n_faults = int(minutes * 60 // period)
        for i in range(n_faults):
            delay = t0 + i * period - time.time()
            if delay > 0:
                time.sleep(delay)
            kind = rng.choice(list(kinds))
            if faults:
                leaked = leak_packets(lab)
                faults[-1].leaks, leaks_seen = leaked - leaks_seen, leaked
            fault = chaos.inject(kind)
            faults.append(fault)
            log(f"fault {i + 1}/{n_faults}: {kind} {fault.target} ({fault.end - fault.start:.1f} s)")
        time.sleep(period)  # the last fault's own window, after it ended
        faults_end = time.time()
        marks = {name: len(box.log("controller")) for name, box in mesh.boxes.items()}
        time.sleep(quiet)
        quiet_end = time.time()
        tails = {name: box.log("controller")[marks[name]:] for name, box in mesh.boxes.items()}  # the quiet minute's
        downs = {name: tail.count("msg=link_down") for name, tail in tails.items()}
        applies = {name: tail.count("msg=applied") for name, tail in tails.items()}
        quiet_lines = {name: [line[:240] for line in tail.splitlines()
                              if "msg=applied" in line or "msg=link_" in line or "msg=path_changed" in line]
                       for name, tail in tails.items()}
        pingers.stop()
        pingers.stopping.set()
        sampler.stopping.set()
        sampler.join()
        replies = pingers.replies()
        stale_peers, stale_routes, missing_routes = stale(mesh)
        redirects = sum(snmp_redirects(box) - redirects_before[name] for name, box in mesh.boxes.items())
        leaks = leak_packets(lab) - leaks_before
        faults[-1].leaks = leak_packets(lab) - leaks_seen
        flows = leak_flows(lab) if leaks else {}
        tracebacks = sum(box.log(key).count("Traceback") for box in mesh.boxes.values()
                         for key in ("controller", "helper"))
        direct = sum(v == "direct" for box in mesh.boxes.values() for v in paths(box).values())
        logs = {name: box.log("controller") for name, box in mesh.boxes.items()}

    by_kind: dict[str, list[float]] = {}
    worst_pair: dict[str, tuple[float, str]] = {}
    worst_log: dict[str, dict[str, list[str]]] = {}
    for i, fault in enumerate(faults):
        end = faults[i + 1].start if i + 1 < len(faults) else faults_end
        worst, which = 0.0, ""
        for pair, times in replies.items():
            excused = fault.excused[1] if fault.excused and fault.target in pair else None
            o = outage(times, fault.start, end, excused)
            if o > worst:
                worst, which = o, "-".join(pair)
        by_kind.setdefault(fault.kind, []).append(worst)
        if worst >= worst_pair.get(fault.kind, (-1.0, ""))[0]:
            worst_pair[fault.kind] = (worst, f"{fault.target} #{i + 1} worst pair {which}")
            until = (fault.excused[1] if fault.excused else fault.end) + worst + 2 * INTERVAL + 1.0
            boxes = {b for b in [*which.split("-"), *fault.target.split("-")] if b in logs}
            worst_log[fault.kind] = fault_log(logs, sorted(boxes), fault.start, until)
        log(f"#{i + 1} {fault.kind} {fault.target}: outage {worst:.2f} s ({which or '-'})"
            + (f", {fault.leaks} packets in clear text" if fault.leaks else ""))
    quiet_outage = max(outage(times, faults_end, quiet_end, None) for times in replies.values())
    growth, growth_late, peak = sampler.growth_mb_per_h("controller", minutes * 30)
    helper_growth, helper_late, helper_peak = sampler.growth_mb_per_h("helper", minutes * 30)
    result = {
        "faults": {k: len(v) for k, v in sorted(by_kind.items())},
        "max_outage_s": {k: round(max(v), 2) for k, v in sorted(by_kind.items())},
        "median_outage_s": {k: round(statistics.median(v), 2) for k, v in sorted(by_kind.items())},
        "quiet_link_downs": sum(downs.values()),
        "quiet_applies": max(applies.values()),
        "quiet_applies_total": sum(applies.values()),
        "quiet_max_outage_s": round(quiet_outage, 2),
        "stale_peers": stale_peers, "stale_routes": stale_routes, "missing_routes": missing_routes,
        "cleartext_leaks": leaks, "cleartext_flows": flows, "redirects": redirects, "tracebacks": tracebacks,
        "rss_growth_mb_per_h": growth, "rss_growth_late_mb_per_h": growth_late, "controller_rss_peak_mb": peak,
        "helper_rss_growth_mb_per_h": helper_growth, "helper_rss_growth_late_mb_per_h": helper_late,
        "helper_rss_peak_mb": helper_peak,
        "direct_paths_at_end": direct, "worst": {k: v[1] for k, v in sorted(worst_pair.items())},
        "quiet_link_downs_by_node": {k: v for k, v in downs.items() if v},
        "quiet_log": {k: v for k, v in quiet_lines.items() if v},
        "worst_log": worst_log,
        "minutes": minutes, "period_s": period, "quiet_s": quiet, "seed": seed,
        "boxes": len(every), "pairs": len(PAIRS), "ping_interval_s": INTERVAL,
    }
    return result
