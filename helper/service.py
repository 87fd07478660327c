"""org.wgnetmanager.Helper1: the root helper on the system bus.

It trusts root-owned files, not its caller: the subnet comes from the root-owned
net.yaml and the managed interfaces from its own command line; every call is checked
against the caller's UID (in addition to the bus policy); every refusal is a named
D-Bus error. Nothing here tears the data plane down except an explicit Teardown.
"""

# No `from __future__ import annotations`: the D-Bus signatures are the annotations.

import argparse
import asyncio
import functools
import ipaddress
import logging
import os
import pwd
import signal
import socket
import sys
import time
from pathlib import Path

from wg_netmanager.common import VERSION, keyfile, logsetup, quote
from wg_netmanager.common.config import (
    EXIT_CONFIG,
    ConfigError,
    load_network_config,
    raise_problems,
    static_underlay,
    trust_problems,
)
from wg_netmanager.common.endpoints import collision, plain
from wg_netmanager.dbus import (
    CONTROLLER_USER,
    HELPER_BUS_NAME,
    HELPER_INTERFACE,
    HELPER_OBJECT_PATH,
    HelperErrors,
)
from wg_netmanager.dbus.auth import CallerAuth
from wg_netmanager.dbus.compat import (
    LIBRARY,
    BusType,
    DBusError,
    Message,
    MessageBus,
    MessageType,
    PropertyAccess,
    ServiceInterface,
    dbus_property,
    method,
)

from . import device, keys
from .model import (
    GUARD_REMEMBERED,
    InvalidArgs,
    PeerOp,
    check_ifname,
    check_underlay,
    encode_key,
    endpoint_addresses,
    guard_prefixes,
    parse_dns_server,
    parse_interface_address,
    parse_peers,
    parse_routes,
    peer_set_endpoints,
    plan_peers,
    plan_routes,
    summarize,
)
from .routes import RouteError, RouteScan, RouteTable
from .uapi import UapiError

log = logging.getLogger("wg_netmanager.helper")

class _Device:
    def __init__(self, ifname: str, index: int, backend) -> None:
        self.ifname = ifname
        self.index = index
        self.backend = backend
        self.own_ip = None


def _guarded(fn):
    """Authorize the caller, then map every failure to a named error (never a traceback)."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        started = time.monotonic()
        name = fn.__name__
        try:
            await self._authorize(name)
            return await fn(self, *args)
        except DBusError:
            raise
        except InvalidArgs as e:
            log.warning("refused", extra={"method": name, "reason": str(e)})
            raise DBusError(HelperErrors.INVALID_ARGS, str(e)) from None
        except device.NoDevice as e:
            raise DBusError(HelperErrors.NO_DEVICE, str(e)) from None
        except (device.DeviceError, UapiError, RouteError, keyfile.KeyFileError) as e:
            log.error("backend failure", extra={"method": name, "error": str(e)})
            raise DBusError(HelperErrors.BACKEND_FAILED, str(e)) from None
        except Exception as e:
            log.exception("internal error", extra={"method": name})
            raise DBusError(HelperErrors.INTERNAL, f"internal error ({type(e).__name__}); see the helper's log") \
                from None
        finally:
            log.debug("call done", extra={"method": name, "ms": round((time.monotonic() - started) * 1000, 2)})

    return wrapper


class Helper1(ServiceInterface):
    def __init__(self, bus, config_path: Path, interfaces: list[str], state_dir: Path, allowed_uids: set[int]):
        super().__init__(HELPER_INTERFACE)
        self.bus = bus
        self.config_path = config_path
        self.interfaces = interfaces
        self.state_dir = state_dir
        self.allowed_uids = allowed_uids
        config = load_trusted_config(config_path)
        self.subnet = config.subnet
        self.domain = config.domain
        self.revoked_wg_keys = config.revoked_wg_keys
        self.static_underlay = static_underlay(config.peers)
        #: per device, the endpoints its peers send to, and the overlay /32s routed so far (in
        #: order, the latest last): what the leak guard needs (model.guard_prefixes)
        self._guard_endpoints: dict[str, set] = {}
        self._routed: dict[str, None] = {}
        self.auth = CallerAuth(bus, HelperErrors.NOT_AUTHORIZED)
        self._locks = {name: asyncio.Lock() for name in interfaces}
        self._devices: dict[str, _Device] = {}
        self._routes = RouteTable()

    async def reload(self) -> None:
        """SIGHUP (systemctl reload): net.yaml again. Peers whose key is now revoked are removed
        from our devices at once (whatever the controller asks) and refused from then on; a
        changed subnet needs a restart (the leak guard and every route depend on it): refused,
        the old configuration stays."""
        try:
            config = load_trusted_config(self.config_path)
        except ConfigError as e:
            log.error("reload refused; the running configuration stays", extra={"error": str(e)})
            return
        if config.subnet != self.subnet:
            log.error("reload refused: the subnet cannot change while running (systemctl restart); the running "
                      "configuration stays", extra={"subnet": str(self.subnet), "new_subnet": str(config.subnet)})
            return
        self.revoked_wg_keys = config.revoked_wg_keys
        self.static_underlay = static_underlay(config.peers)
        log.info("configuration reloaded", extra={"revoked": len(self.revoked_wg_keys)})
        for name in self.interfaces:
            async with self._locks[name]:
                try:
                    dev = await self._device(name)
                    live = await dev.backend.get()
                except (device.DeviceError, UapiError, OSError) as e:
                    log.info("reload: no device to clean", extra={"ifname": name, "error": str(e)})
                    continue
                gone = [PeerOp(key, remove=True) for key in live.peers if key in self.revoked_wg_keys]
                if gone:
                    await dev.backend.apply(gone)
                    log.warning("revoked peers removed", extra={"ifname": name, "peers": len(gone)})

    # ------------------------------------------------------------ authorization

    async def _authorize(self, method_name: str) -> None:
        uid = await self.auth.caller_uid()
        if uid not in self.allowed_uids:
            log.warning("refused caller", extra={"method": method_name, "uid": uid})
            raise DBusError(HelperErrors.NOT_AUTHORIZED,
                            f"UID {uid} may not call {HELPER_INTERFACE}; only root and the "
                            f"'{CONTROLLER_USER}' user may")

    def _managed(self, ifname: str) -> str:
        check_ifname(ifname)
        if ifname not in self.interfaces:
            raise DBusError(HelperErrors.NOT_MANAGED,
                            f"interface {quote(ifname)} is not managed by this helper (managed: "
                            f"{', '.join(self.interfaces)})")
        return ifname

    async def _device(self, ifname: str) -> _Device:
        dev = self._devices.get(ifname)
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            self._devices.pop(ifname, None)
            raise device.NoDevice(f"interface {ifname} does not exist; call EnsureDevice first") from None
        if dev is None or dev.index != index:
            index, backend = await device.open_backend(ifname, create=False)
            dev = _Device(ifname, index, backend)
            dev.own_ip = device.own_address(index, self.subnet)
            self._devices[ifname] = dev
        return dev

    def _wg_indexes(self) -> frozenset[int]:
        found = set()
        for name in self.interfaces:
            try:
                found.add(socket.if_nametoindex(name))
            except OSError:
                pass
        return frozenset(found)

    def _fixed_underlay(self) -> dict:
        """Underlay addresses in use whatever a request says (common.endpoints.collision): the
        static peers' endPoints in net.yaml and this box's addresses outside its WireGuard devices."""
        fixed = dict(self.static_underlay)
        skip = self._wg_indexes()
        for index, iface in self._routes.all_addresses():
            if index not in skip and not iface.ip.is_loopback and not iface.ip.is_link_local:
                try:
                    name = socket.if_indextoname(index)
                except OSError:
                    name = f"#{index}"
                fixed.setdefault(plain(iface.ip), f"an address of this box (on {name})")
        return fixed

    def _remember(self, prefixes) -> None:
        for p in prefixes:
            self._routed.pop(p, None)
            self._routed[p] = None
        while len(self._routed) > GUARD_REMEMBERED:
            del self._routed[next(iter(self._routed))]

    def set_leak_guard(self, scan: RouteScan | None = None) -> None:
        """The leak guard (helper.routes.encode_guard, model.guard_prefixes): overlay traffic with
        no route of ours is refused here instead of leaving in clear text. Set at start, before any
        controller asks (a booting box's programs may send before the mesh is up), and again with
        every device and Apply (new pieces first; nothing sent when it is as it should be)."""
        scan = scan or self._routes.scan(0, self._wg_indexes())
        endpoints = set(self.static_underlay).union(*self._guard_endpoints.values())
        self._routes.set_guard(scan.guard, guard_prefixes(self.subnet, scan.underlay, endpoints, self._routed))

    async def start_leak_guard(self) -> None:
        """At start: the guard, from what a helper before us left (a restart): the endpoints of
        the peers already on our devices, the overlay addresses routed there and guarded."""
        for name in self.interfaces:
            try:
                dev = await self._device(name)
                live = await dev.backend.get()
            except (device.DeviceError, UapiError, OSError):
                continue
            self._guard_endpoints[name] = set(endpoint_addresses(p.endpoint for p in live.peers.values()))
            self._remember(self._routes.list(dev.index))
        scan = self._routes.scan(0, self._wg_indexes())
        self._remember(p for p in scan.guard if p.endswith(("/32", "/128")))
        self.set_leak_guard(scan)

    # ------------------------------------------------------------ methods

    @method()
    @_guarded
    async def EnsureDevice(self, ifname: "s", listen_port: "q", address: "s", adopt: "b") -> "ss":
        """Create (or with adopt=true, only take over) the device; returns (public key, backend)."""
        self._managed(ifname)
        iface = parse_interface_address(address, self.subnet)
        problem = collision(iface.ip, self._fixed_underlay())
        if problem is not None:
            raise InvalidArgs(f"address {problem}")
        async with self._locks[ifname]:
            index, backend = await device.open_backend(ifname, create=not adopt)
            live = await backend.get()
            private = None
            if not (adopt and live.private_key and any(live.private_key)):
                private = keys.load_or_create(self.state_dir, ifname)
                if live.private_key == private:
                    private = None
            port = listen_port if listen_port and listen_port != live.listen_port else None
            await backend.set_device(private_key=private, listen_port=port)
            changes = device.ensure_address(index, iface, self.subnet)
            for problem in device.enable_forwarding(ifname, index, iface.version):
                log.warning("cannot enable relaying on the interface", extra={"ifname": ifname, "error": problem})
            live = await backend.get()
            self._guard_endpoints[ifname] = set(endpoint_addresses(p.endpoint for p in live.peers.values()))
            self.set_leak_guard()
            dev = _Device(ifname, index, backend)
            dev.own_ip = str(iface.ip)
            self._devices[ifname] = dev
            pub = keys.public_key(live.private_key)
            log.info("device ready", extra={"ifname": ifname, "backend": backend.name, "port": live.listen_port,
                                            "address": str(iface), "key_set": private is not None,
                                            "changes": changes})
            return [encode_key(pub), backend.name]

    @method()
    @_guarded
    async def Apply(self, ifname: "s", peers: "a(ssasu)", routes: "a(ss)") -> "a{su}":
        """Make the device's peers and our routes exactly this; returns counts of what changed."""
        self._managed(ifname)
        async with self._locks[ifname]:
            dev = await self._device(ifname)
            live = await dev.backend.get()
            own_key = keys.public_key(live.private_key) if live.private_key else None
            own_ip = ipaddress.ip_address(dev.own_ip) if dev.own_ip else None
            desired_peers = parse_peers(peers, self.subnet, own_key, own_ip, self.revoked_wg_keys)
            desired_routes = parse_routes(routes, self.subnet, own_ip)
            endpoints = peer_set_endpoints(desired_peers, live.peers)
            check_underlay(desired_peers, desired_routes, endpoints, self._fixed_underlay())
            ops = plan_peers(live.peers, desired_peers)
            scan = self._routes.scan(dev.index, self._wg_indexes())
            add, replace, delete = plan_routes(scan.ours, desired_routes)
            # make before break: new peers/IPs, then new routes, then removals
            make = [op for op in ops if not op.remove and not op.replace_allowed_ips]
            brk = [op for op in ops if op.remove or op.replace_allowed_ips]
            await dev.backend.apply(make)
            if add or replace:
                self._routes.add_or_replace(dev.index, add + replace, dev.own_ip)
            self._guard_endpoints[ifname] = set(endpoints)
            self._remember(desired_routes)
            self.set_leak_guard(scan)
            if delete:
                self._routes.delete(dev.index, delete)
            await dev.backend.apply(brk)
            summary = summarize(ops, add, replace, delete)
            log.info("applied", extra={"ifname": ifname, **summary})
            return summary

    @method()
    @_guarded
    async def GetState(self, ifname: "s") -> "sqa(ssdttasu)":
        """(public key, listen port, peers: key, endpoint, last handshake, rx, tx, allowed IPs, keepalive)."""
        self._managed(ifname)
        dev = await self._device(ifname)
        live = await dev.backend.get()
        pub = encode_key(keys.public_key(live.private_key)) if live.private_key else ""
        peers = [[encode_key(p.public_key), p.endpoint or "", float(p.last_handshake), p.rx_bytes, p.tx_bytes,
                  sorted(p.allowed_ips), p.keepalive] for p in live.peers.values()]
        return [pub, live.listen_port, peers]

    @method()
    @_guarded
    async def SetDNS(self, ifname: "s", server: "s", domain: "s") -> "s":
        """systemd-resolved sends <domain>'s queries to the controller's server on the device."""
        self._managed(ifname)
        dev = await self._device(ifname)
        address, port = parse_dns_server(server, dev.own_ip)
        if domain != self.domain:
            raise InvalidArgs(f"domain {quote(domain)} is not net.yaml's ({self.domain!r})")
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        calls = [("SetLinkDNSEx", "ia(iayqs)", [dev.index, [[family, address.packed, port, ""]]]),
                 ("SetLinkDomains", "ia(sb)", [dev.index, [[domain, True]]]),
                 ("SetLinkDefaultRoute", "ib", [dev.index, False])]
        for member, signature, body in calls:
            reply = await self.bus.call(Message(
                destination="org.freedesktop.resolve1", path="/org/freedesktop/resolve1",
                interface="org.freedesktop.resolve1.Manager", member=member, signature=signature, body=body))
            if reply.message_type == MessageType.ERROR:
                text = reply.body[0] if reply.body else reply.error_name
                if (reply.error_name or "").endswith(("ServiceUnknown", "NameHasNoOwner")):
                    raise DBusError(HelperErrors.NO_RESOLVER, "systemd-resolved is not running: names resolve "
                                    "only in `wg_netmanager status`")
                raise DBusError(HelperErrors.BACKEND_FAILED, f"systemd-resolved refused {member}: {text}")
        log.info("names via systemd-resolved", extra={"ifname": ifname, "server": server, "domain": domain})
        return "resolved"

    @method()
    @_guarded
    async def Teardown(self, ifname: "s") -> "a{su}":
        """Remove our routes and the device. The private key is kept for the next EnsureDevice."""
        self._managed(ifname)
        async with self._locks[ifname]:
            try:
                index = socket.if_nametoindex(ifname)
            except OSError:
                return {"routes_removed": 0, "device_removed": 0}
            scan = self._routes.scan(index)
            ours = scan.ours
            self._routes.delete(index, list(ours))
            self._routes.remove_guard(sorted(scan.guard))
            self._guard_endpoints.pop(ifname, None)
            dev = self._devices.pop(ifname, None)
            if dev is not None:
                await dev.backend.close()
            device.delete_link(index)
            log.info("teardown", extra={"ifname": ifname, "routes_removed": len(ours)})
            return {"routes_removed": len(ours), "device_removed": 1}

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return VERSION

    @dbus_property(access=PropertyAccess.READ)
    def ManagedInterfaces(self) -> "as":
        return list(self.interfaces)


def load_trusted_config(path: Path):
    """net.yaml, which must be a root-owned file nobody else can write (common.config's rule)."""
    raise_problems(trust_problems(path))
    return load_network_config(path)


def _controller_uids(users: list[str]) -> set[int]:
    uids = {0}
    for user in users:
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            log.warning("allowed user does not exist; only root may call", extra={"user": user})
    return uids


async def serve(args: argparse.Namespace) -> int:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    helper = Helper1(bus, Path(args.config), args.interface, Path(args.state_dir), _controller_uids(args.allow_user))
    try:
        await helper.start_leak_guard()
    except (OSError, RouteError) as e:  # (the helper still serves; EnsureDevice tries again)
        log.error("cannot set the leak guard route", extra={"subnet": str(helper.subnet), "error": str(e)})
    bus.export(HELPER_OBJECT_PATH, helper)
    reply = await bus.request_name(HELPER_BUS_NAME)
    if getattr(reply, "value", reply) != 1:  # RequestNameReply.PRIMARY_OWNER
        log.error("could not own the bus name", extra={"busname": HELPER_BUS_NAME, "reply": str(reply)})
        return 1
    log.info("helper ready", extra={"busname": HELPER_BUS_NAME, "interfaces": ",".join(args.interface),
                                    "subnet": str(helper.subnet), "dbus": LIBRARY, "pid": os.getpid()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(helper.reload()))
    disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([disconnected, stopped], return_when=asyncio.FIRST_COMPLETED)
    if disconnected.done():
        log.error("system bus connection lost")
        return 1
    log.info("stopping; the data plane stays up")
    bus.disconnect()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """(Its options are documented in docs/wg-netmanager-helper.8: a fast test holds them together.)"""
    parser = argparse.ArgumentParser(prog="wg-netmanager-helper", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="/etc/wg-netmanager/net.yaml",
                        help="root-owned net.yaml: the subnet bounds every request")
    parser.add_argument("-i", "--interface", action="append", default=[],
                        help="interface this helper manages (repeatable; default wg0)")
    parser.add_argument("--state-dir", default=os.environ.get("STATE_DIRECTORY", "/var/lib/wg-netmanager"),
                        help="where private keys are kept (0700)")
    parser.add_argument("--allow-user", action="append", default=None,
                        help=f"system user allowed to call besides root (default {CONTROLLER_USER})")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-V", "--version", action="version", version=f"wg-netmanager-helper {VERSION}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.interface = args.interface or ["wg0"]
    args.allow_user = args.allow_user if args.allow_user is not None else [CONTROLLER_USER]
    logsetup.setup(args.verbose)
    try:
        for name in args.interface:
            check_ifname(name)
        if os.geteuid() != 0:
            raise SystemExit("wg-netmanager-helper: must run as root (it changes links and routes)")
        load_trusted_config(Path(args.config))
        return asyncio.run(serve(args))
    except (ConfigError, InvalidArgs) as e:  # not configured: systemd does not restart (see the unit)
        logsetup.fatal("wg-netmanager-helper", str(e))
        return EXIT_CONFIG
    except (OSError, DBusError) as e:
        logsetup.fatal("wg-netmanager-helper", str(e))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
