"""Emulated boxes on one machine: network namespaces, veth LANs, a private system bus each.

Used by the test suite, the benchmarks and ``wg_netmanager demo``. A *box* is a network
namespace plus its own mount namespace (private tmpfs on /run/wireguard and /run/dbus,
so every box can have its own ``wg0`` and its own system bus at the standard path), a
system-type dbus-daemon loaded with our bus policy, and whatever daemons are started in
it. Boxes are wired to *segments* (a bridge inside a namespace of its own). Nothing is
attached to the root namespace. Every namespace, process and file the lab made is removed
by :meth:`Lab.close`, and :func:`sweep` removes leftovers of crashed runs by name prefix.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from wg_netmanager.dbus import BUS_POLICY, contract_file

PREFIX = "wgnm-"
DEMO_SHARED_KEY = "YDUBM6FhERePZ4gPlxzAbCN7K61BPjy7HApWYL+P128="  # the original README's; for labs only


def net_yaml(static_endpoint: str, static_wg_ip: str, subnet: str = "10.1.1.0/24",
             shared_key: str = DEMO_SHARED_KEY, admin_port: int = 55555) -> str:
    """A net.yaml in the original's format with one static peer (labs, tests, benchmarks)."""
    return (f"network:\n  sharedKey: {shared_key}\n  subnet: {subnet}\npeers:\n"
            f"  - endPoint: {static_endpoint}\n    adminPort: {admin_port}\n    wgIp: {static_wg_ip}\n")
BUS_SOCKET = "/run/dbus/system_bus_socket"

_SYSTEM_BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- A box's system bus: the structure of /usr/share/dbus-1/system.conf, our policy included. -->
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <includedir>{policy_dir}</includedir>
  <limit name="max_incoming_bytes">134217728</limit>
  <limit name="max_message_size">33554432</limit>
  <limit name="reply_timeout">60000</limit>
</busconfig>
"""


class LabError(Exception):
    pass


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def _kill_netns_pids(ns: str) -> None:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for pid in r.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def sweep(prefix: str = PREFIX) -> list[str]:
    """Kill processes in and delete every namespace whose name starts with ``prefix``."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    gone = []
    for line in r.stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(prefix):
            _kill_netns_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            gone.append(ns)
    return gone


class Segment:
    """An L2 segment: a bridge in a namespace of its own."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = f"{lab.prefix}{name}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        lab._namespaces.append(self.ns)
        _ip("link", "add", "br0", "type", "bridge", ns=self.ns)
        _ip("link", "set", "br0", "up", ns=self.ns)
        _ip("link", "set", "lo", "up", ns=self.ns)
        self.ports = 0

    def cut(self, a: str, b: str, on: bool = True) -> None:
        """Drop every frame between hosts ``a`` and ``b`` on this segment, or stop dropping: a
        path that dies in the network (a flaky switch, Wi-Fi client isolation). Unlike
        Box.block, both ends still send - their WireGuard counts what it sent."""
        table = f"wgnmcut{a.replace('.', '_')}x{b.replace('.', '_')}"
        if on:
            script = (f"table bridge {table} {{\n  chain f {{ type filter hook forward priority 0;\n"
                      f"    ip saddr {a} ip daddr {b} drop\n    ip saddr {b} ip daddr {a} drop\n  }}\n}}\n")
            r = subprocess.run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], input=script, text=True,
                               capture_output=True)
        else:
            r = subprocess.run(["ip", "netns", "exec", self.ns, "nft", "delete", "table", "bridge", table],
                               text=True, capture_output=True)
        if r.returncode != 0:
            raise LabError(f"segment {self.name}: nft: {r.stderr.strip()}")


@functools.cache
def kernel_wireguard() -> bool:
    """Whether this kernel has WireGuard (link kind 'wireguard'): probed in a namespace of its
    own, so nothing is ever added to the root namespace. Needs root (False without)."""
    if os.geteuid() != 0:
        return False
    ns = f"wgnm-kprobe-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], capture_output=True)
    try:
        r = subprocess.run(["ip", "-n", ns, "link", "add", "wgk", "type", "wireguard"], capture_output=True)
        return r.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Box:
    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = f"{lab.prefix}{name}"
        self.dir = lab.dir / name
        self.dir.mkdir(mode=0o755)
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        lab._namespaces.append(self.ns)
        _ip("link", "set", "lo", "up", ns=self.ns)
        for path in ("/run/wireguard", "/run/dbus"):
            os.makedirs(path, exist_ok=True)
        # The holder owns the box's mount namespace; everything else joins it with nsenter.
        script = ("mount -t tmpfs -o mode=0755 tmpfs /run/wireguard && "
                  "mount -t tmpfs -o mode=0755 tmpfs /run/dbus && echo ready && exec sleep 2147483647")
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        lab._procs.append(self.holder)
        if self.holder.stdout is None or self.holder.stdout.readline().strip() != b"ready":
            raise LabError(f"box {name}: namespace holder failed")
        self.pid = self._holder_pid()
        self.nics = 0
        self.procs: dict[str, subprocess.Popen] = {}

    def _holder_pid(self) -> int:
        # ip netns exec execs unshare, which execs sh, which execs sleep: same pid throughout
        return self.holder.pid

    @property
    def bus_path(self) -> str:
        """The box's system bus socket as reachable from the root namespace."""
        return f"/proc/{self.pid}/root{BUS_SOCKET}"

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.bus_path}"

    def _enter(self, user: str | None = None) -> list[str]:
        cmd = ["nsenter", "-t", str(self.pid), "-n", "-m", "--"]
        if user is not None:
            cmd += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        return cmd

    def run(self, cmd: Sequence[str], user: str | None = None, check: bool = True, timeout: float = 30,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(self._enter(user) + list(cmd), capture_output=True, text=True, timeout=timeout,
                           env=env)
        if check and r.returncode != 0:
            raise LabError(f"[{self.name}] {' '.join(cmd)} -> {r.returncode}: {(r.stderr or r.stdout).strip()}")
        return r

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run(["sh", "-c", script], **kw)

    def popen(self, key: str, cmd: Sequence[str], user: str | None = None, env: dict[str, str] | None = None,
              log: bool = True) -> subprocess.Popen:
        out = open(self.dir / f"{key}.log", "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(self._enter(user) + list(cmd), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.procs[key] = proc
        self.lab._procs.append(proc)
        return proc

    def log(self, key: str) -> str:
        path = self.dir / f"{key}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def send_signal(self, key: str, sig: int) -> None:
        """A signal to a daemon that goes on running (SIGHUP: reload)."""
        os.kill(self.procs[key].pid, sig)

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(key)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(10)

    # ------------------------------------------------------------------ network

    def attach(self, segment: Segment, address: str, ifname: str | None = None) -> str:
        """A veth from this box to ``segment``'s bridge; ``address`` is CIDR."""
        ifname = ifname or f"eth{self.nics}"
        self.nics += 1
        segment.ports += 1
        peer = f"{self.name[:6]}-{segment.name[:4]}{segment.ports}"[:15]
        tmp = f"wgnmv{os.getpid() % 100000}{segment.ports}"[:15]
        _ip("link", "add", tmp, "netns", self.ns, "type", "veth", "peer", "name", peer, "netns", segment.ns)
        _ip("link", "set", tmp, "name", ifname, ns=self.ns)
        _ip("addr", "add", address, "dev", ifname, ns=self.ns)
        _ip("link", "set", ifname, "up", ns=self.ns)
        _ip("link", "set", peer, "master", "br0", ns=segment.ns)
        _ip("link", "set", peer, "up", ns=segment.ns)
        return ifname

    def move(self, segment: Segment, address: str, gateway: str | None = None, ifname: str = "eth0") -> None:
        """Roaming: unplug ``ifname`` and plug it into ``segment`` with a new address."""
        self.run(["ip", "link", "del", ifname])
        self.attach(segment, address, ifname)
        if gateway:
            self.default_route(gateway)

    def default_route(self, via: str) -> None:
        self.run(["ip", "route", "replace", "default", "via", via])

    def nft(self, script: str) -> None:
        r = subprocess.run(self._enter() + ["nft", "-f", "-"], input=script, capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            raise LabError(f"[{self.name}] nft: {r.stderr.strip()}")

    def block(self, other_ip: str, on: bool = True) -> None:
        """Drop everything between this box and ``other_ip`` (a dead link), or stop dropping."""
        if on:
            self.nft(f"table inet wgnmblock {{\n"
                     f"  chain i {{ type filter hook input priority 0; ip saddr {other_ip} drop; }}\n"
                     f"  chain o {{ type filter hook output priority 0; ip daddr {other_ip} drop; }}\n}}\n")
        else:
            self.run(["nft", "delete", "table", "inet", "wgnmblock"])

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def ping(self, address: str, count: int = 1, wait: float = 1.0) -> bool:
        r = self.run(["ping", "-n", "-q", "-c", str(count), "-W", str(wait), address], check=False,
                     timeout=count * wait + 10)
        return r.returncode == 0

    # ------------------------------------------------------------------ daemons

    def start_dbus(self, extra_policy: str | None = None) -> None:
        policy_dir = self.dir / "dbus-policy"
        policy_dir.mkdir(mode=0o755)
        shutil.copy(contract_file(BUS_POLICY), policy_dir / BUS_POLICY)
        if extra_policy:
            (policy_dir / "zz-test-extra.conf").write_text(extra_policy)
        conf = self.dir / "system-bus.conf"
        conf.write_text(_SYSTEM_BUS_CONF.format(socket=BUS_SOCKET, policy_dir=policy_dir))
        self.popen("dbus", ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"])
        _wait(lambda: os.path.exists(self.bus_path), 10, f"[{self.name}] system bus socket")

    def write_config(self, text: str, name: str = "net.yaml", mode: int = 0o640, group: str | None = "wg-netmanager"
                     ) -> Path:
        """Root-owned (the helper trusts nothing else), group-readable for the controller."""
        path = self.dir / name
        path.write_text(text)
        os.chmod(path, mode)
        if group is not None:
            try:
                shutil.chown(path, "root", group)
            except LookupError:
                os.chmod(path, mode | 0o004)
        return path

    def start_controller(self, config: Path, address: str, name: str | None = None, extra: Sequence[str] = (),
                         python: str = sys.executable, user: str = "wg-netmanager") -> subprocess.Popen:
        """The controller as the unprivileged user, like its systemd unit."""
        state = self.dir / "controller-state"
        state.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(state, user, user)
        cmd = [python, "-m", "wg_netmanager.controller", "-c", str(config), "-a", address, "-n", name or self.name,
               "--state-dir", str(state), "-v", *extra]
        proc = self.popen("controller", cmd, user=user)
        self.wait_for_name("org.wgnetmanager.Controller1", proc, log_key="controller")
        return proc

    def start_helper(self, config: Path, interfaces: Sequence[str] = ("wg0",), verbose: bool = True,
                     python: str = sys.executable) -> subprocess.Popen:
        cmd = [python, "-m", "wg_netmanager.helper", "-c", str(config), "--state-dir", str(self.dir / "state")]
        for name in interfaces:
            cmd += ["-i", name]
        if verbose:
            cmd.append("-v")
        proc = self.popen("helper", cmd)
        self.wait_for_name("org.wgnetmanager.Helper1", proc)
        return proc

    def wait_for_name(self, name: str, proc: subprocess.Popen, timeout: float = 20, log_key: str = "helper") -> None:
        def owned() -> bool:
            if proc.poll() is not None:
                raise LabError(f"[{self.name}] process exited ({proc.returncode}) before owning {name}:\n"
                               f"{self.log(log_key)[-2000:]}")
            r = self.run(["busctl", "--system", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                          "org.freedesktop.DBus", "NameHasOwner", "s", name], check=False, timeout=5)
            return r.stdout.strip() == "b true"
        _wait(owned, timeout, f"[{self.name}] bus name {name}")


def _wait(pred, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise LabError(f"timed out after {timeout}s waiting for {what}")


class Lab:
    _count = 0

    def __init__(self, tag: str = "") -> None:
        if os.geteuid() != 0:
            raise LabError("the network lab needs root (network namespaces)")
        Lab._count += 1
        self.prefix = f"{PREFIX}{tag or os.getpid() % 100000}{Lab._count}-"
        base = tempfile.mkdtemp(prefix="wgnm-lab-")
        os.chmod(base, 0o755)  # boxes run daemons as unprivileged users
        self.dir = Path(base)
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self.boxes: dict[str, Box] = {}
        self.segments: dict[str, Segment] = {}

    def segment(self, name: str) -> Segment:
        self.segments[name] = Segment(self, name)
        return self.segments[name]

    def box(self, name: str) -> Box:
        self.boxes[name] = Box(self, name)
        return self.boxes[name]

    def router(self, name: str, inside: Segment, inside_addr: str, outside: Segment, outside_addr: str,
               gateway: str | None = None, nat: bool = True, firewall: bool = True,
               fixed_ports: dict[tuple[str, int], int] | None = None, mapping: str = "masquerade") -> Box:
        """A router between two segments: with ``nat`` it masquerades the inside behind its
        outside address (a home router); with ``firewall`` a stateful filter lets nothing in
        that the inside did not ask for (with nat=False: a firewalled, routed network).
        ``fixed_ports`` {(inside ip, udp port): outside port} makes those mappings endpoint-
        independent (one outside port for every destination), as many home routers do; plain
        masquerade reassigns a port per destination when two inside hosts use the same one.
        ``mapping="symmetric"``: every new flow gets a random outside port (endpoint-dependent
        mapping, as carrier-grade and some enterprise NATs do)."""
        box = self.box(name)
        box.attach(inside, inside_addr, "lan0")
        box.attach(outside, outside_addr, "wan0")
        if gateway:
            box.default_route(gateway)
        box.sysctl("net.ipv4.ip_forward", "1")
        rules = ""
        if nat:
            outside_ip = outside_addr.split("/")[0]
            flags = " fully-random" if mapping == "symmetric" else ""
            fixed = "".join(f'    oifname "wan0" ip saddr {ip} udp sport {port} snat to {outside_ip}:{out}\n'
                            for (ip, port), out in (fixed_ports or {}).items())
            rules += f"""table ip nat {{
  chain postrouting {{ type nat hook postrouting priority srcnat;
{fixed}    oifname "wan0" masquerade{flags}
  }}
}}
"""
        if firewall:
            # like any home router, nothing unasked gets in - neither forwarded nor to the
            # router itself (a dropped packet leaves no conntrack entry behind; one delivered
            # to a closed port would, and it would then clash with the mapping hole punching
            # needs: Linux NAT picks another port, and the punch fails)
            rules += """table ip filter {
  chain forward { type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan0" accept
  }
  chain input { type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname { "lan0", "lo" } accept
  }
}
"""
        if rules:
            box.nft(rules)
        return box

    def close(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for ns in reversed(self._namespaces):
            _kill_netns_pids(ns)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._namespaces.clear()
        if os.environ.get("WGNM_KEEP_LAB_DIR"):
            print(f"lab files kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
