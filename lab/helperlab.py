"""Shared pieces for tests that drive Helper1 in network-namespace boxes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from wg_netmanager.controller.helper_client import HelperClient, HelperError
from wg_netmanager.lab.netlab import Box, net_yaml

NET_YAML = net_yaml("198.51.100.2:51820", "10.1.1.2")

# On one box the bus policy is opened to an unrelated user, to show that the helper's
# own UID check refuses it too.
OPEN_POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="wgnm-other">
    <allow send_destination="org.wgnetmanager.Helper1"/>
  </policy>
</busconfig>
"""


class Helper:
    """Synchronous Helper1 calls to one box, as root, from the test process."""

    def __init__(self, box: Box) -> None:
        self.box = box

    def _run(self, coro_fn):
        async def go():
            client = await HelperClient.connect(self.box.bus_address)
            try:
                return await coro_fn(client)
            finally:
                client.disconnect()
        return asyncio.run(go())

    def ensure(self, address: str, port: int = 51820, adopt: bool = False, ifname: str = "wg0"):
        return self._run(lambda c: c.ensure_device(ifname, port, address, adopt))

    def apply(self, peers, routes, ifname: str = "wg0"):
        return self._run(lambda c: c.apply(ifname, peers, routes))

    def state(self, ifname: str = "wg0"):
        return self._run(lambda c: c.get_state(ifname))

    def teardown(self, ifname: str = "wg0"):
        return self._run(lambda c: c.teardown(ifname))

    def call(self, member: str, *args):
        return self._run(lambda c: c.call(member, *args))

    def error(self, member: str, *args) -> tuple[str, str]:
        try:
            self.call(member, *args)
        except HelperError as e:
            return e.name, e.message
        raise AssertionError(f"{member}{args!r} was accepted")


def call_as(box: Box, user: str, member: str, *args) -> dict:
    """Call Helper1 from inside the box as another user; returns the client's JSON line."""
    r = box.run([sys.executable, "-m", "wg_netmanager.controller.helper_client", member,
                 *[json.dumps(a) for a in args]], user=user, check=False)
    return json.loads(r.stdout.strip().splitlines()[-1])


def start_ping(box: Box, address: str, count: int, interval: float = 0.01) -> subprocess.Popen:
    return subprocess.Popen(box._enter() + ["ping", "-n", "-q", "-i", str(interval), "-W", "1", "-c", str(count),
                                            address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ping_loss(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, int]:
    """(transmitted, received) from ping's summary."""
    out, _ = proc.communicate(timeout=timeout)
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise AssertionError(f"no ping summary in {out!r}")
