"""Running meshes of real boxes (helper + controller + wireguard-go) for the end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time

from wg_netmanager.lab.demo import NET_YAML, OVERLAY, build, controller_call, paths
from wg_netmanager.lab.netlab import Box, Lab

__all__ = ["NET_YAML", "OVERLAY", "build", "controller_call", "paths", "wait_for", "all_direct", "our_routes",
           "wg_peers", "status_json", "Lab", "pings", "every_pair_pings", "all_paths", "count_underlay",
           "underlay_packets", "daemon_pids", "cpu_seconds", "rss_mb", "ping_replies"]


def wait_for(pred, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    return None


def pings(box: Box, ip: str, tries: int = 3) -> bool:
    """A pair pings when one of a few probes half a second apart gets through: a path switch
    (relay -> direct) may lose one packet by design."""
    for _ in range(tries):
        if box.ping(ip, count=1, wait=2):
            return True
        time.sleep(0.5)
    return False


def every_pair_pings(boxes: dict[str, Box], addresses: dict[str, str]) -> list[tuple[str, str]]:
    """The (src, dst) pairs that do not ping; [] when all do."""
    return [(src, dst) for src, box in boxes.items() for dst, ip in addresses.items()
            if src != dst and not pings(box, ip)]


def all_paths(boxes: dict[str, Box]) -> dict[str, dict[str, str]]:
    """box -> {other node -> "direct" / "via X" / "unreachable"}, as each controller sees it."""
    return {name: paths(box) for name, box in boxes.items()}


def all_direct(boxes: dict[str, Box]) -> bool:
    return all(p == "direct" for box in boxes.values() for p in paths(box).values()) and \
        all(len(paths(box)) == len(boxes) - 1 for box in boxes.values())


def our_routes(box: Box) -> dict[str, str]:
    """destination -> "direct" or the gateway, from the kernel (proto 157 = ours)."""
    out = {}
    for line in box.run(["ip", "-4", "route", "show", "proto", "157", "type", "unicast"]).stdout.splitlines():
        parts = line.split()
        via = parts[parts.index("via") + 1] if "via" in parts else parts[0]
        out[parts[0]] = "direct" if via == parts[0] else via  # (a direct route goes via its destination)
    return out


def wg_peers(box: Box) -> dict[str, list[str]]:
    """public key -> allowed IPs, from `wg show wg0 allowed-ips`."""
    out = {}
    for line in box.run(["wg", "show", "wg0", "allowed-ips"]).stdout.splitlines():
        key, *ips = line.split()
        out[key] = [ip for ip in ips if ip != "(none)"]
    return out


def status_json(box: Box, user: str | None = None) -> dict:
    r = box.run([sys.executable, "-m", "wg_netmanager.controller.cli", "status", "--json"], user=user)
    return json.loads(r.stdout)


def probe(box: Box, node: str):
    return asyncio.run(controller_call(box, "Probe", "s", [node]))


# a WireGuard keepalive is a transport message without payload: 32 bytes of UDP payload
_COUNT_NFT = """table inet wgnmcount {
  counter wg { }
  counter keepalive { }
  counter admin { }
  chain out { type filter hook output priority 0;
    oifname "eth0" udp sport 50000 counter name wg
    oifname "eth0" udp sport 50000 udp length 40 counter name keepalive
    oifname "eth0" udp sport 55555 counter name admin
  }
}
"""


def count_underlay(box: Box) -> None:
    """Count the UDP packets the box sends on eth0 from now on (see underlay_packets)."""
    box.nft(_COUNT_NFT)


def underlay_packets(box: Box) -> tuple[int, int, int]:
    """(WireGuard packets, admin datagrams outside the tunnel, WireGuard keepalives) sent so far."""
    data = json.loads(box.run(["nft", "-j", "list", "counters", "table", "inet", "wgnmcount"]).stdout)
    got = {item["counter"]["name"]: item["counter"]["packets"] for item in data["nftables"] if "counter" in item}
    return got["wg"], got["admin"], got["keepalive"]


def daemon_pids(box: Box) -> dict[str, int]:
    """controller, helper and wireguard-go of the box: name -> pid."""
    pids = {key: box.procs[key].pid for key in ("controller", "helper") if key in box.procs}
    r = subprocess.run(["ip", "netns", "pids", box.ns], capture_output=True, text=True)
    for pid in r.stdout.split():
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "wireguard-go":
                    pids["wireguard-go"] = int(pid)
        except OSError:
            pass
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """A process's resident set (OSError when it is gone)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


_PING_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


def ping_replies(path: str | os.PathLike) -> list[float]:
    """The wall-clock times of the replies in the output of ``ping -D``."""
    with open(path, errors="replace") as f:
        return [float(m.group(1)) for m in map(_PING_REPLY.match, f) if m]
