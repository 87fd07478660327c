"""``wg_netmanager demo``: the original's example on this machine.

bob is a public VPS (the static peer); alice and charlie are laptops on one home LAN behind
a NAT router. Every box is a network namespace with its own wireguard-go, its own system
bus, the helper as root and the controller as the unprivileged user ``wg-netmanager``.
Watch the mesh form (bob introduces alice and charlie, who link directly on their LAN),
pings across it, and ``wg_netmanager status`` from alice. Everything is torn down at the
end, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import sys
import time

from wg_netmanager.controller.render import path_text
from wg_netmanager.dbus import CONTROLLER_BUS_NAME, CONTROLLER_INTERFACE, CONTROLLER_OBJECT_PATH
from wg_netmanager.dbus.compat import Message, MessageBus, MessageType

from . import topologies as labnets
from .netlab import Lab, LabError
from .topologies import NET_YAML

__all__ = ["NET_YAML", "OVERLAY", "build", "controller_call", "paths", "run_demo"]

OVERLAY = {"alice": "10.1.1.1", "bob": "10.1.1.2", "charlie": "10.1.1.3"}


def build(lab: Lab) -> dict:
    """bob 198.51.100.2 (public); a NAT router; alice 192.168.1.10 and charlie .12 on its LAN."""
    mesh = labnets.home_lan(lab, tuple(OVERLAY), public=())
    mesh.start()
    return mesh.boxes


async def controller_call(box, member: str, signature: str = "", body: list | None = None):
    bus = await MessageBus(bus_address=box.bus_address).connect()
    try:
        reply = await bus.call(Message(destination=CONTROLLER_BUS_NAME, path=CONTROLLER_OBJECT_PATH,
                                       interface=CONTROLLER_INTERFACE, member=member, signature=signature,
                                       body=body or []))
    finally:
        bus.disconnect()
    if reply.message_type == MessageType.ERROR:
        raise LabError(f"{member}: {reply.error_name}: {reply.body}")
    return reply.body


def paths(box) -> dict[str, str]:
    """node name -> "direct" / "via X" / "unreachable", as the box's controller sees it."""
    (nodes,) = asyncio.run(controller_call(box, "ListNodes"))
    return {n["name"].value: path_text({k: v.value for k, v in n.items()}) for n in nodes}


def run_demo(keep: bool = False) -> int:
    lab = None
    try:
        lab = Lab("demo")
        print("building: bob (public VPS, static peer), a NAT router, alice and charlie on its LAN ...")
        started = time.monotonic()
        boxes = build(lab)
        print(f"  3 boxes up in {time.monotonic() - started:.1f}s: wireguard-go, a system bus, the helper (root) "
              "and the controller (user wg-netmanager) each")
        seen: dict[tuple[str, str], str] = {}
        t0 = time.monotonic()
        direct_since = None
        while time.monotonic() - t0 < 30:
            for name, box in boxes.items():
                for other, path in paths(box).items():
                    if seen.get((name, other)) != path:
                        seen[(name, other)] = path
                        print(f"  {time.monotonic() - t0:5.1f}s  {name:8} -> {other:8} {path}")
            if all(seen.get((a, b)) == "direct" for a in boxes for b in boxes if a != b):
                direct_since = direct_since or time.monotonic()
                if time.monotonic() - direct_since > 1:
                    break
            time.sleep(0.2)
        print("\npings through the mesh:")
        for src, dst in (("alice", "charlie"), ("charlie", "bob"), ("bob", "alice")):
            r = boxes[src].run(["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", OVERLAY[dst]], check=False)
            summary = [line for line in r.stdout.splitlines() if "packets transmitted" in line or "rtt" in line]
            print(f"  {src} -> {dst} ({OVERLAY[dst]}): " + ("; ".join(summary) or "FAILED"))
        print("\n$ wg_netmanager status        (on alice, as root)")
        r = boxes["alice"].run([sys.executable, "-m", "wg_netmanager.controller.cli", "status"], check=False)
        print(r.stdout + r.stderr)
        print("$ wg show wg0 (on alice)")
        print(boxes["alice"].run(["wg", "show", "wg0"], check=False).stdout)
        ok = all(seen.get((a, b)) == "direct" for a in boxes for b in boxes if a != b)
        if keep:
            print(f"mesh running; box files in {lab.dir}. Ctrl-C to tear down.")
            while True:
                time.sleep(3600)
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    except LabError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    finally:
        if lab is not None:
            print("tearing down ...")
            lab.close()
