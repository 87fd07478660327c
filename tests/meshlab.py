"""Running meshes of real boxes (helper + controller + wireguard-go) for the end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from wg_netmanager.controller.demo import NET_YAML, OVERLAY, build, controller_call, paths
from wg_netmanager.controller.netlab import Box, Lab

__all__ = ["NET_YAML", "OVERLAY", "build", "controller_call", "paths", "wait_for", "all_direct", "our_routes",
           "wg_peers", "status_json", "Lab"]


def wait_for(pred, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    return None


def all_direct(boxes: dict[str, Box]) -> bool:
    return all(p == "direct" for box in boxes.values() for p in paths(box).values()) and \
        all(len(paths(box)) == len(boxes) - 1 for box in boxes.values())


def our_routes(box: Box) -> dict[str, str]:
    """destination -> "direct" or the gateway, from the kernel (proto 157 = ours)."""
    out = {}
    for line in box.run(["ip", "-4", "route", "show", "proto", "157"]).stdout.splitlines():
        parts = line.split()
        out[parts[0]] = parts[parts.index("via") + 1] if "via" in parts else "direct"
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
