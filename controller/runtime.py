"""The controller daemon: a thin asyncio shell around the sans-I/O core.

It owns the admin UDP sockets, the core's timer, the Helper1 client (EnsureDevice, one
Apply in flight with bursts coalesced, GetState polling), DNS re-resolution of static
peers, local address discovery, the persisted identity and bindings, and Controller1.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wg_netmanager.common import keyfile
from wg_netmanager.common.config import (
    ConfigError,
    NetworkConfig,
    PeerConfig,
    merge_problems,
    raise_problems,
)
from wg_netmanager.common.logsetup import fields
from wg_netmanager.dbus import HELPER_BUS_NAME
from wg_netmanager.dbus.compat import BusType, DBusError, Message, MessageBus, MessageType

from .core import Core, CoreConfig, PeerObservation, StaticPeerConfig
from .core.node import STATE_SAVE_INTERVAL
from .helper_client import HelperClient, HelperError

log = logging.getLogger("wg_netmanager.controller")

DEFAULT_WG_PORT = 50000


@dataclass
class RunSettings:
    network: NetworkConfig
    interface: str
    address: str  # overlay IP
    name: str
    wg_port: int
    admin_port: int
    existing_interface: bool
    port_hopping: bool
    state_dir: Path
    link_policy: str = "auto"
    idle_timeout: float = 120.0


def reload_refusals(old: RunSettings, new: RunSettings) -> list[str]:
    """What a reload cannot change while running (each needs a restart)."""
    out = []
    if new.network.shared_key != old.network.shared_key:
        out.append(f"{new.network.path}: sharedKey changed")
    if new.network.subnet != old.network.subnet:
        out.append(f"{new.network.path}: subnet changed ({old.network.subnet} -> {new.network.subnet})")
    for what in ("address", "name", "interface", "admin_port", "existing_interface"):
        if getattr(new, what) != getattr(old, what):
            out.append(f"{what} changed ({getattr(old, what)} -> {getattr(new, what)})")

    def is_static(s: RunSettings) -> bool:
        return any(str(p.wg_ip) == s.address for p in s.network.peers)
    if is_static(new) != is_static(old):
        out.append("this node's role as a static peer changed")
    return out


def settings_from(network: NetworkConfig, peer: PeerConfig | None, *, interface: str | None, address: str | None,
                  name: str | None, existing: bool, wg_port: int | None, admin_port: int | None,
                  port_hopping: bool, state_dir: Path, link_policy: str = "auto",
                  idle_timeout: float = 120.0) -> RunSettings:
    """Merge net.yaml, peer.yaml and command-line options (the command line wins)."""
    raise_problems(merge_problems(network, peer, interface, address,
                                  box_underlay(interface or (peer.interface if peer else None) or "wg0")))
    peer = peer or PeerConfig("")
    ip = ipaddress.ip_address(address or str(peer.wg_ip))
    me = next((p for p in network.peers if p.wg_ip == ip), None)
    return RunSettings(
        network=network,
        interface=interface or peer.interface or "wg0",
        address=str(ip),
        name=name or peer.name or socket.gethostname().split(".")[0],
        wg_port=wg_port or peer.wg_port or (me.endpoint_port if me else DEFAULT_WG_PORT),
        admin_port=admin_port or peer.admin_port or (me.admin_port if me else 55555),
        existing_interface=existing or peer.existing_interface,
        port_hopping=port_hopping,
        state_dir=state_dir,
        link_policy=link_policy,
        idle_timeout=idle_timeout,
    )


# ------------------------------------------------------------------------------ local state


def load_identity(state_dir: Path) -> bytes:
    """The node's Ed25519 identity seed: created once, then reused (common.keyfile's rules)."""
    path = state_dir / "identity.key"
    try:
        keyfile.secure_dir(state_dir)
        seed = keyfile.read_key(path)
        if seed is None:
            seed = os.urandom(32)
            keyfile.write_key(path, seed)
    except keyfile.KeyFileError as e:
        raise ConfigError(path, None, str(e)) from None
    return seed


def load_persisted(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_persisted(state_dir: Path, data: dict) -> None:
    tmp = state_dir / "state.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, state_dir / "state.json")


#: netlink multicast groups: links, IPv4 and IPv6 addresses (RTMGRP_LINK, _IPV4_IFADDR, _IPV6_IFADDR)
_ADDRESS_GROUPS = 0x1 | 0x10 | 0x100
#: addresses are looked at this often without netlink, and at least this often with it
ADDRESS_SCAN = 1.0
ADDRESS_SCAN_WATCHED = 10.0
#: changes come in bursts (link down, address gone, address added, routes): look once they settled
ADDRESS_SETTLE = 0.05
#: the controller's DNS server for the mesh domain, on its own overlay address
DNS_PORT = 53535
#: `down`: how long the departure has to reach the mesh (and be flooded) before the data plane goes
DOWN_GRACE = 0.5


def address_monitor() -> socket.socket | None:
    """A netlink socket the kernel wakes when a link or an address changes (read-only: the
    multicast groups need no privilege), so that a roaming laptop's move is seen at once;
    None where netlink is not allowed (then addresses are polled every second)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
    except OSError:
        return None
    try:
        sock.bind((0, _ADDRESS_GROUPS))
    except OSError:
        sock.close()
        return None
    return sock


def box_addresses(exclude_ifname: str) -> list[tuple[str, str, int]]:
    """Underlay addresses of this box as (interface, address, prefix): all but loopback,
    link-local and the WireGuard device's. Uses only an AF_INET socket (ioctl) and
    /proc/net/if_inet6, so the controller needs no netlink socket. (Addresses inside the overlay
    subnet count: a 10.0.0.0/8 overlay may run over a 10.x LAN.)"""
    import array
    import fcntl
    import struct

    siocgifconf, siocgifnetmask, ifreq = 0x8912, 0x891B, 40
    found: list[tuple[str, str, int]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        buf = array.array("B", b"\0" * ifreq * 256)
        size, _ = struct.unpack("iL", fcntl.ioctl(s.fileno(), siocgifconf,
                                                   struct.pack("iL", len(buf), buf.buffer_info()[0])))
        raw = buf.tobytes()[:size]
        for off in range(0, size, ifreq):
            name = raw[off:off + 16].split(b"\0", 1)[0].decode()
            addr = socket.inet_ntoa(raw[off + 20:off + 24])
            try:
                mask = fcntl.ioctl(s.fileno(), siocgifnetmask, struct.pack("16s24x", name.encode()))
                prefix = bin(int.from_bytes(mask[20:24], "big")).count("1")
            except OSError:
                prefix = 32
            found.append((name, addr, prefix))
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                hexaddr, _idx, plen, _scope, _flags, name = line.split()
                found.append((name, str(ipaddress.ip_address(bytes.fromhex(hexaddr))), int(plen, 16)))
    except OSError:
        pass
    out = set()
    for name, addr, prefix in found:
        if name in ("lo", exclude_ifname):
            continue
        ip = ipaddress.ip_address(addr)
        if ip.is_loopback or ip.is_link_local:
            continue
        out.add((name, addr, prefix))
    return sorted(out)


class Wakeup:
    """An event to wait for with a timeout, costing one timer and one future per wait.
    ``asyncio.wait_for(event.wait(), t)`` wraps the wait in a task and, when the time is up,
    cancels it and raises: on an idle controller, whose loops wake about once a second, that was
    much of its CPU."""

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, timeout: float | None = None) -> bool:
        """True when set (now or within ``timeout`` seconds), False when the time is up."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        self._waiter = fut = loop.create_future()
        handle = None if timeout is None else loop.call_later(timeout, _time_up, fut)
        try:
            return await fut
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()


def _time_up(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(False)


def device_packets(ifname: str) -> tuple[int, int] | None:
    """The packets the device received and sent (its netdev counters, from /proc/net/dev of
    our own network namespace: no helper, no privilege), or None when it is not there."""
    prefix = ifname + ":"
    try:
        with open("/proc/net/dev") as f:
            for line in f:
                line = line.lstrip()
                if line.startswith(prefix):
                    fields = line[len(prefix):].split()
                    return int(fields[1]), int(fields[9])
    except (OSError, ValueError, IndexError):
        pass
    return None


def local_addresses(exclude_ifname: str) -> list[tuple[str, int]]:
    """The LAN addresses the core advertises (the original's LocalContact)."""
    return sorted({(addr, prefix) for _, addr, prefix in box_addresses(exclude_ifname)})


def box_underlay(exclude_ifname: str) -> dict:
    """This box's underlay addresses, for common.endpoints.collision."""
    return {ipaddress.ip_address(addr): f"this box's address on {name}"
            for name, addr, _ in box_addresses(exclude_ifname)}


# ------------------------------------------------------------------------------ the daemon


#: IP_PKTINFO (linux/in.h; Python's socket module lacks the IPv4 one)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


class _AdminSocket:
    """The admin UDP socket of one IP family. Each datagram is read with the interface it came
    in on (IP_PKTINFO / IPV6_RECVPKTINFO): through the WireGuard device or from the underlay.
    The overlay subnet may contain underlay addresses (a 10.0.0.0/8 overlay over a 10.x LAN),
    so a source address alone cannot tell."""

    def __init__(self, controller: Controller, sock: socket.socket) -> None:
        self.controller = controller
        self.sock = sock
        self.v6 = sock.family == socket.AF_INET6
        if self.v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setblocking(False)
        self.cmsg_space = socket.CMSG_SPACE(20 if self.v6 else 12)

    def start(self, loop) -> None:
        loop.add_reader(self.sock.fileno(), self.readable)

    def readable(self) -> None:
        for _ in range(64):  # (then back to the loop: other sockets and timers get their turn)
            try:
                data, ancdata, _flags, addr = self.sock.recvmsg(65535, self.cmsg_space)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # (an ICMP error queued for an earlier send)
                log.debug("admin socket error", extra={"error": str(e)})
                continue
            ifindex = 0
            for level, kind, payload in ancdata:
                if not self.v6 and level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(payload) >= 4:
                    ifindex = int.from_bytes(payload[:4], sys.byteorder)
                elif self.v6 and level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(payload) >= 20:
                    ifindex = int.from_bytes(payload[16:20], sys.byteorder)
            self.controller.on_datagram(data, (addr[0], addr[1]), ifindex)

    def sendto(self, data: bytes, addr) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError as e:  # (full buffer, unreachable: the protocol repeats what matters)
            log.debug("admin send failed", extra={"error": str(e), "to": addr[0]})

    def close(self) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        except RuntimeError:
            pass
        self.sock.close()


class _Names(asyncio.DatagramProtocol):
    """The DNS socket: each query answered from the core (controller.dns)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        c = self.controller
        if c.core is None or c.is_down:
            return
        from . import dns

        reply = dns.answer(data, c.s.network.domain, c.core.addresses_of)
        if reply is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS socket error", extra={"error": str(exc)})


class Controller:
    def __init__(self, settings: RunSettings, bus_address: str | None = None,
                 reload_settings: Callable[[], RunSettings] | None = None) -> None:
        self.s = settings
        self.reload_settings = reload_settings  # net.yaml and peer.yaml again (SIGHUP)
        self.bus_address = bus_address
        self.core: Core | None = None
        self.transports: dict[int, _AdminSocket] = {}
        self._wg_index = 0  # (see wg_index; forgotten whenever the device is ensured again)
        self.applied_version = -1
        self.apply_wanted = asyncio.Event()
        self.poll_now = Wakeup()
        #: set whenever mesh_generation moves (Controller1's MeshChanged signal waits for it)
        self.mesh_changed = Wakeup()
        self.stop = asyncio.Event()
        self.timer: asyncio.TimerHandle | None = None
        self.mesh_generation = 0
        self.listeners: list = []  # callables(event) for Controller1 / live view
        self.probe_waiters: dict[str, list[asyncio.Future]] = {}
        self.static_resolved: dict[str, str] = {}
        self.wg_public_key = ""
        self.backend = ""
        self.last_apply: dict = {}
        self.is_down = False  # `wg_netmanager down`: departed, data plane removed, the core not fed
        self.apply_stats = {"count": 0, "seconds": 0.0, "changes": 0}  # (metrics)
        self.metrics_address: tuple[str, int] | None = None  # --metrics: served on localhost
        self.dns_port = DNS_PORT  # names: <name>.<domain> answered on our overlay address (0: off)
        self.dns_transport: asyncio.DatagramTransport | None = None
        self.names = "off"  # how names resolve here: "resolved", or why not (status shows it)

    # ---------------------------------------------------------------- startup

    async def resolve_static_peers(self) -> tuple[StaticPeerConfig, ...]:
        loop = asyncio.get_running_loop()
        out = []
        for p in self.s.network.peers:
            host = p.endpoint_host
            try:
                ipaddress.ip_address(host)
                resolved = host
            except ValueError:
                try:
                    infos = await loop.getaddrinfo(host, p.endpoint_port, type=socket.SOCK_DGRAM)
                    resolved = infos[0][4][0]
                except OSError as e:
                    resolved = self.static_resolved.get(host, "")
                    log.warning("cannot resolve static peer", extra={"host": host, "error": str(e)})
                if resolved and self.static_resolved.get(host) not in (None, resolved):
                    log.info("static peer address changed", extra={"host": host, "address": resolved})
                if resolved:
                    self.static_resolved[host] = resolved
            if resolved:
                out.append(StaticPeerConfig(str(p.wg_ip), resolved, p.endpoint_port, p.admin_port))
        return tuple(out)

    async def ensure_device(self) -> None:
        prefix = self.s.network.subnet.prefixlen
        self.wg_public_key, self.backend = await self.helper.ensure_device(
            self.s.interface, self.s.wg_port, f"{self.s.address}/{prefix}", self.s.existing_interface)
        self._wg_index = 0  # (a new device may have a new index)
        log.info("device ready", extra={"ifname": self.s.interface, "backend": self.backend,
                                        "port": self.s.wg_port, "public_key": self.wg_public_key})
        self.follow_key(self.wg_public_key)
        await self.configure_names()

    async def configure_names(self) -> None:
        """Answer <name>.<domain> on our overlay address, and have the helper point
        systemd-resolved at it for the mesh domain (after every EnsureDevice: a new device is a
        new resolved link)."""
        if not self.dns_port:
            return
        if self.dns_transport is None:
            loop = asyncio.get_running_loop()
            family = socket.AF_INET6 if ":" in self.s.address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: the address may come and go with the device
            try:
                sock.bind((self.s.address, self.dns_port))
            except OSError as e:
                sock.close()
                self.names = f"no DNS server: {e.strerror}"
                log.warning("cannot answer names", extra={"port": self.dns_port, "error": e.strerror})
                return
            self.dns_transport, _ = await loop.create_datagram_endpoint(lambda: _Names(self), sock=sock)
        server = f"[{self.s.address}]:{self.dns_port}" if ":" in self.s.address else \
            f"{self.s.address}:{self.dns_port}"
        try:
            self.names = await self.helper.set_dns(self.s.interface, server, self.s.network.domain)
        except (HelperError, DBusError) as e:
            self.names = f"not through the system resolver: {getattr(e, 'message', None) or e}"
            log.warning("names resolve only in `wg_netmanager status`", extra={"reason": str(e)})

    def follow_key(self, key_b64: str) -> None:
        """The device's WireGuard key is what we announce: when it changed under us (the helper
        came back with another key, its key file lost; a device made anew), our record follows
        at once, as for a key rotation - else every peer keeps the old key and we are cut off."""
        if not key_b64 or self.core is None or base64.b64decode(key_b64) == self.core.wg_public_key:
            return
        log.warning("the device's WireGuard key changed: announcing the new one", extra={"public_key": key_b64})
        self.wg_public_key = key_b64
        self.core.set_wg_public_key(base64.b64decode(key_b64), time.time())
        self.pump()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        bus = MessageBus(bus_address=self.bus_address) if self.bus_address else MessageBus(bus_type=BusType.SYSTEM)
        self.bus = await bus.connect()
        self.helper = HelperClient(self.bus)
        await self.wait_for_helper()
        await self.ensure_device()
        statics = await self.make_core()
        await self.open_sockets(loop)
        from .dbus_service import export_controller1  # late: only the daemon needs it

        await export_controller1(self)
        if self.metrics_address is not None:
            from . import metrics

            self.metrics_server = await metrics.serve(self, *self.metrics_address)
        await self.watch_helper()
        log.info("controller running", extra={"node": self.s.name, "address": self.s.address,
                                              "identity": self.core.identity.public.hex()[:16],
                                              "admin_port": self.s.admin_port, "static_peers": len(statics)})
        self.pump()
        tasks = [asyncio.create_task(coro) for coro in
                 (self.apply_loop(), self.poll_loop(), self.housekeeping_loop(), self.address_loop(loop))]
        disconnected = asyncio.create_task(self.bus.wait_for_disconnect())
        stopped = asyncio.create_task(self.stop.wait())
        await asyncio.wait([disconnected, stopped], return_when=asyncio.FIRST_COMPLETED)
        if stopped.done() and not self.is_down and await self.stopping_for_good():
            await self.go_down("the unit is stopped")
        for task in tasks:
            task.cancel()
        self.persist(force=True)
        for transport in self.transports.values():
            transport.close()
        if self.dns_transport is not None:
            self.dns_transport.close()
        if disconnected.done():
            log.error("system bus connection lost")
            return 1
        log.info("stopped; the data plane stays as it is")
        self.bus.disconnect()
        return 0

    async def make_core(self) -> tuple[StaticPeerConfig, ...]:
        seed = load_identity(self.s.state_dir)
        persisted = load_persisted(self.s.state_dir)
        statics = await self.resolve_static_peers()
        net = self.s.network
        config = CoreConfig(shared_key=net.shared_key, subnet=str(net.subnet), overlay_ip=self.s.address,
                            name=self.s.name, wg_port=self.s.wg_port, admin_port=self.s.admin_port,
                            static_peers=statics, link_policy=self.s.link_policy,
                            idle_timeout=self.s.idle_timeout, allowed_identities=net.allowed,
                            revoked_identities=net.revoked_identities, revoked_wg_keys=net.revoked_wg_keys)
        lan = await asyncio.to_thread(local_addresses, self.s.interface)
        self.core = Core(config, seed, base64.b64decode(self.wg_public_key), time.time(),
                         os.urandom, persisted=persisted, lan_endpoints=lan)
        return statics

    def metric_families(self) -> list:
        from wg_netmanager.common import VERSION

        from . import metrics

        nodes = [] if self.is_down else self.core.member_status()
        counters = {} if self.core is None else self.core.counter_values()
        info = {"name": self.s.name, "overlay_ip": self.s.address, "version": VERSION,
                "state": "down" if self.is_down else "up"}
        return metrics.families(counters, nodes, info, self.apply_stats)

    # ---------------------------------------------------------------- reload

    async def reload(self) -> bool:
        """SIGHUP (systemctl reload): net.yaml and peer.yaml again, the difference applied live
        (static peers, the WireGuard port, revocations and strict mode) without touching what
        still holds; what cannot change live is refused with one error line and the running
        configuration stays."""
        if self.reload_settings is None:
            return False
        try:
            new = self.reload_settings()
        except ConfigError as e:
            log.error("reload refused; the running configuration stays", extra={"error": str(e)})
            return False
        refused = reload_refusals(self.s, new)
        if refused:
            log.error("reload refused: " + "; ".join(refused) + " - these need a restart "
                      "(systemctl restart wg-netmanager); the running configuration stays")
            return False
        old, self.s = self.s, dataclasses.replace(self.s, network=new.network, wg_port=new.wg_port)
        if not self.is_down:
            statics = await self.resolve_static_peers()
            now = time.time()
            self.core.update_static_peers(statics, now)
            if new.wg_port != old.wg_port:
                await self.ensure_device()
                self.core.set_wg_port(new.wg_port, now)
            net = new.network
            self.core.set_admission_rules(net.allowed, net.revoked_identities, net.revoked_wg_keys, now)
            self.pump()
        log.info("configuration reloaded", extra={"static_peers": len(new.network.peers), "wg_port": new.wg_port,
                                                  "revoked": len(new.network.revoked_identities),
                                                  "strict": new.network.allowed is not None})
        return True

    # ---------------------------------------------------------------- leave and return

    async def go_down(self, why: str) -> bool:
        """Leave the mesh: the core's signed departure goes out (every node drops us at once),
        DOWN_GRACE later the helper removes the device and our routes; until go_up the core is
        not fed. False if already down."""
        if self.is_down:
            return False
        log.info("leaving the mesh", extra={"why": why})
        self.core.leave(time.time())
        self.pump()
        await asyncio.sleep(DOWN_GRACE)  # (the departure on its way; hubs flood it)
        self.is_down = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.persist(force=True)
        try:
            removed = await self.helper.teardown(self.s.interface)
            log.info("left the mesh; data plane removed", extra=removed)
        except (HelperError, DBusError) as e:
            log.error("Teardown failed", extra={"error": str(e)})
        self.bump_mesh_generation()
        return True

    async def go_up(self) -> bool:
        """Come back: the device again, and a new core whose first record supersedes our
        departure. False if not down."""
        if not self.is_down:
            return False
        await self.ensure_device()
        await self.make_core()
        self.applied_version = -1
        self.is_down = False
        log.info("back in the mesh")
        self.bump_mesh_generation()
        self.pump()
        self.poll_now.set()
        return True

    async def stopping_for_good(self) -> bool:
        """Under systemd: is our unit being stopped (systemctl stop, disable --now, shutdown),
        rather than restarted? A stop leaves the mesh; a restart (or a kill) keeps the data
        plane as it is (fail-static). Outside systemd: never."""
        if "INVOCATION_ID" not in os.environ:
            return False
        try:
            unit = await self._systemd_call("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                                            "GetUnitByPID", "u", [os.getpid()])
            job = await self._systemd_call(unit[0], "org.freedesktop.DBus.Properties", "Get", "ss",
                                           ["org.freedesktop.systemd1.Unit", "Job"])
            job_id, job_path = job[0].value
            if not job_id:
                return False
            kind = await self._systemd_call(job_path, "org.freedesktop.DBus.Properties", "Get", "ss",
                                            ["org.freedesktop.systemd1.Job", "JobType"])
            return kind[0].value == "stop"
        except (DBusError, IndexError, TypeError, ValueError, AttributeError) as e:
            log.warning("cannot tell a stop from a restart; keeping the data plane", extra={"error": str(e)})
            return False

    async def _systemd_call(self, path: str, interface: str, member: str, signature: str, body: list) -> list:
        reply = await self.bus.call(Message(destination="org.freedesktop.systemd1", path=path, interface=interface,
                                            member=member, signature=signature, body=body))
        if reply.message_type == MessageType.ERROR:
            raise DBusError(reply.error_name or "error", str(reply.body))
        return reply.body

    async def wait_for_helper(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            reply = await self.bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                member="NameHasOwner", signature="s", body=[HELPER_BUS_NAME]))
            if reply.message_type == MessageType.METHOD_RETURN and reply.body[0]:
                return
            if time.monotonic() > deadline:
                raise ConfigError("Helper1", None, f"{HELPER_BUS_NAME} is not on the system bus "
                                  "(is wg-netmanager-helper running?)")
            await asyncio.sleep(0.2)

    async def open_sockets(self, loop) -> None:
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            v4.bind(("0.0.0.0", self.s.admin_port))
        except OSError:
            v4.close()
            raise
        self.transports[4] = _AdminSocket(self, v4)
        self.transports[4].start(loop)
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::", self.s.admin_port))
            self.transports[6] = _AdminSocket(self, sock)
            self.transports[6].start(loop)
        except OSError as e:
            log.info("no IPv6 admin socket", extra={"error": str(e)})

    async def watch_helper(self) -> None:
        """Helper restarts: ensure the device again and re-apply everything."""
        await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member="AddMatch", signature="s",
            body=[f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{HELPER_BUS_NAME}'"]))

        def on_message(msg):
            if msg.message_type == MessageType.SIGNAL and msg.member == "NameOwnerChanged" \
                    and msg.body and msg.body[0] == HELPER_BUS_NAME and msg.body[2]:
                asyncio.get_running_loop().create_task(self.helper_restarted())
            return None

        self.bus.add_message_handler(on_message)

    async def helper_restarted(self) -> None:
        if self.is_down:
            return
        log.info("helper restarted: ensuring the device and re-applying")
        try:
            await self.ensure_device()
        except (HelperError, DBusError) as e:
            log.error("EnsureDevice after helper restart failed", extra={"error": str(e)})
        self.applied_version = -1
        self.apply_wanted.set()

    # ---------------------------------------------------------------- the core's I/O

    def on_datagram(self, data: bytes, addr: tuple[str, int], ifindex: int = 0) -> None:
        if self.is_down:
            return
        host = addr[0]
        if host.startswith("::ffff:"):
            host = host[7:]
        tunnel = ifindex == self.wg_index() if ifindex else None
        self.core.datagram_received(data, (host.split("%")[0], addr[1]), time.time(), tunnel)
        self.pump()

    def wg_index(self) -> int:
        """The WireGuard device's interface index (looked up again when it is gone or new)."""
        index = self._wg_index
        if index:
            return index
        try:
            self._wg_index = socket.if_nametoindex(self.s.interface)
        except OSError:
            return -1
        return self._wg_index

    def pump(self) -> None:
        if self.is_down:
            return
        core = self.core
        for data, addr in core.take_datagrams():
            transport = self.transports.get(6 if ":" in addr[0] else 4)
            if transport is not None:
                transport.sendto(data, addr)
        changed = False
        for event in core.take_events():
            level = logging.WARNING if event.kind in ("claim_refused", "link_down") else logging.INFO
            log.log(level, event.kind, extra=fields(event.data))
            changed |= event.kind in ("link_up", "link_down", "path_changed", "node_reachable",
                                      "node_unreachable", "node_discovered", "node_left", "node_revoked",
                                      "node_forgotten")
            if event.kind == "probe_result":
                for fut in self.probe_waiters.pop(event.data["node"], []):
                    if not fut.done():
                        fut.set_result(event.data)
            for listener in self.listeners:
                listener(event)
        if changed:
            self.bump_mesh_generation()
        if core.dataplane_version != self.applied_version:
            self.apply_wanted.set()
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, core.next_deadline() - time.time())
        self.timer = loop.call_later(delay, self.on_timer)

    def bump_mesh_generation(self) -> None:
        self.mesh_generation += 1
        self.mesh_changed.set()

    def on_timer(self) -> None:
        self.timer = None
        if self.is_down:
            return
        self.core.handle_timer(time.time())
        self.pump()

    async def apply_loop(self) -> None:
        """One Apply in flight; whatever changed meanwhile goes in the next one."""
        while True:
            await self.apply_wanted.wait()
            self.apply_wanted.clear()
            core = self.core
            version = core.dataplane_version
            if version == self.applied_version or self.is_down:
                continue
            if not core.settled(time.time()):
                await asyncio.sleep(0.2)  # keep the data plane as it is until the mesh is re-learned
                self.apply_wanted.set()
                continue
            peers, routes = core.dataplane.helper_args()
            started = time.monotonic()
            try:
                summary = await self.helper.apply(self.s.interface, peers, routes)
            except (HelperError, DBusError) as e:
                log.error("Apply failed; retrying", extra={"error": str(e)})
                await asyncio.sleep(1.0)
                self.apply_wanted.set()
                continue
            self.applied_version = version
            self.last_apply = summary
            self.apply_stats["count"] += 1
            self.apply_stats["seconds"] += time.monotonic() - started
            self.apply_stats["changes"] += int(summary.get("changes", 0))
            if summary.get("changes"):
                log.info("applied", extra={"version": version, "ms": round((time.monotonic() - started) * 1000, 1),
                                           **{k: v for k, v in summary.items() if v}})
            core.dataplane_applied(version, time.time())
            self.pump()
            if core.observation_interval() < 1.0:
                self.poll_now.set()  # a handshake may follow this Apply at once: look soon

    async def poll_loop(self) -> None:
        counters = None
        while True:
            if self.is_down:
                await asyncio.sleep(1.0)
                continue
            seen = device_packets(self.s.interface)
            if not self.poll_now.is_set() and not self.core.look_needed(time.time(), seen is None or seen != counters):
                counters = seen
                await self._poll_wait()
                continue
            counters = seen
            try:
                key, port, peers = await self.helper.get_state(self.s.interface)
                self.follow_key(key)
                obs = {base64.b64decode(p.public_key): PeerObservation(p.endpoint, p.last_handshake, p.rx_bytes,
                                                                       p.tx_bytes) for p in peers}
                self.core.dataplane_observed(time.time(), obs)
                self.pump()
            except (HelperError, DBusError) as e:
                log.warning("GetState failed", extra={"error": str(e)})
                await asyncio.sleep(1.0)
            await self._poll_wait()

    async def _poll_wait(self) -> None:
        self.poll_now.clear()
        if await self.poll_now.wait(self.core.observation_interval()):
            await asyncio.sleep(0.02)

    async def housekeeping_loop(self) -> None:
        """Every STATE_SAVE_INTERVAL (5 s): persist, hop ports; every 12th: re-resolve static
        peers (dynamic DNS)."""
        tick = 0
        last_contact = time.monotonic()
        while True:
            await asyncio.sleep(STATE_SAVE_INTERVAL)
            if self.is_down:
                continue
            tick += 1
            if tick % 12 == 0:
                statics = await self.resolve_static_peers()
                self.core.update_static_peers(statics, time.time())
            self.persist()
            if self.core.reachable():
                last_contact = time.monotonic()
            elif self.s.port_hopping and time.monotonic() - last_contact > 15:
                await self.hop_port()
                last_contact = time.monotonic()
            self.pump()

    async def address_loop(self, loop) -> None:
        """Our underlay addresses (a roaming laptop's move shows there first): looked at when
        netlink says a link or an address changed, and every 10 s anyway (every second where
        netlink is not available)."""
        changed = asyncio.Event()
        monitor = address_monitor()

        def drain() -> None:
            try:
                while monitor.recv(65536):
                    pass
            except OSError:  # (BlockingIOError: drained; ENOBUFS: we missed some, look anyway)
                pass
            changed.set()
        if monitor is not None:
            loop.add_reader(monitor.fileno(), drain)
        try:
            while True:
                try:
                    await asyncio.wait_for(changed.wait(), ADDRESS_SCAN_WATCHED if monitor else ADDRESS_SCAN)
                    await asyncio.sleep(ADDRESS_SETTLE)
                except TimeoutError:
                    pass
                changed.clear()
                if self.is_down:
                    continue
                try:
                    lan = await asyncio.to_thread(local_addresses, self.s.interface)
                    self.core.set_lan_endpoints(lan, time.time())
                except OSError as e:
                    log.debug("address scan failed", extra={"error": str(e)})
                self.pump()
        finally:
            if monitor is not None:
                loop.remove_reader(monitor.fileno())
                monitor.close()

    async def hop_port(self) -> None:
        """-H: nothing reachable for a while; the WireGuard port may be blocked. Try another."""
        port = random.randint(49152, 65535)
        log.warning("no peer reachable: hopping to another WireGuard port", extra={"port": port})
        self.s.wg_port = port
        try:
            await self.ensure_device()
        except (HelperError, DBusError) as e:
            log.error("port hop failed", extra={"error": str(e)})
            return
        self.core.set_wg_port(port, time.time())

    def persist(self, force: bool = False) -> None:
        if self.core is not None and (force or self.core.state_dirty):
            try:
                save_persisted(self.s.state_dir, self.core.persistent_state())
            except OSError as e:
                if e.errno != errno.EROFS:
                    log.error("cannot save state", extra={"error": str(e)})

    # ---------------------------------------------------------------- for Controller1

    async def probe(self, node: str, timeout: float = 3.0) -> dict | None:
        member = self.core.find(node)
        if member is None:
            return None
        fut = asyncio.get_running_loop().create_future()
        self.probe_waiters.setdefault(member.info.name, []).append(fut)
        if self.core.probe(node, time.time()) is None:
            return {"rtt_ms": -1.0, "via": "unreachable"}
        self.pump()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return {"rtt_ms": -1.0, "via": "timeout"}
