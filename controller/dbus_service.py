"""org.wgnetmanager.Controller1: the controller's view of the mesh on the system bus."""

# No `from __future__ import annotations`: the D-Bus signatures are the annotations.

import asyncio
import base64
import functools
import grp
import json
import logging
import os
import pwd
import time

from wg_netmanager.common import VERSION, quote
from wg_netmanager.dbus import (
    CONTROLLER_BUS_NAME,
    CONTROLLER_INTERFACE,
    CONTROLLER_OBJECT_PATH,
    CONTROLLER_USER,
    ControllerErrors,
)
from wg_netmanager.dbus.auth import CallerAuth
from wg_netmanager.dbus.compat import (
    DBusError,
    PropertyAccess,
    ServiceInterface,
    Variant,
    dbus_property,
    method,
    signal,
)

log = logging.getLogger("wg_netmanager.controller")


def _member_of_group(uid: int, group: str) -> bool:
    try:
        gr = grp.getgrnam(group)
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return user.pw_gid == gr.gr_gid or gr.gr_gid in os.getgrouplist(user.pw_name, user.pw_gid)


def _guarded(fn):
    """Map every failure to a named error (never a library-generic one, never a traceback)."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return await fn(self, *args)
        except DBusError:
            raise
        except Exception as e:
            log.exception("internal error", extra={"method": fn.__name__})
            raise DBusError(ControllerErrors.INTERNAL, f"internal error ({type(e).__name__}); see the controller's "
                            "log") from None

    return wrapper


class Controller1(ServiceInterface):
    def __init__(self, controller) -> None:
        super().__init__(CONTROLLER_INTERFACE)
        self.c = controller
        self.auth = CallerAuth(controller.bus, ControllerErrors.NOT_AUTHORIZED)
        self._emitted = 0

    async def _readers(self) -> None:
        uid = await self.auth.caller_uid()
        if uid != 0 and uid != os.getuid() and not _member_of_group(uid, CONTROLLER_USER):
            raise DBusError(ControllerErrors.NOT_AUTHORIZED,
                            f"UID {uid} may not read the mesh status; root and members of group "
                            f"'{CONTROLLER_USER}' may")

    @method()
    @_guarded
    async def ListNodes(self) -> "aa{sv}":
        await self._readers()
        out = []
        if self.c.is_down:
            return out
        for n in self.c.core.member_status():
            out.append({
                "name": Variant("s", n["name"]), "overlay_ip": Variant("s", n["overlay_ip"]),
                "identity": Variant("s", n["identity"]), "identity_key": Variant("s", n["identity_key"]),
                "public_key": Variant("s", _b64(n["wg_public_key"])),
                "reachable": Variant("b", n["reachable"]), "via": Variant("as", n["via"]),
                "rtt_ms": Variant("d", float(n["rtt_ms"]) if n["rtt_ms"] is not None else -1.0),
                "link": Variant("s", n["link"] or ""), "endpoint": Variant("s", n["endpoint"]),
                "last_handshake": Variant("d", float(n["last_handshake"])),
                "rx_bytes": Variant("t", n["rx_bytes"]), "tx_bytes": Variant("t", n["tx_bytes"]),
                "static": Variant("b", n["static"]), "left": Variant("b", n["left"]),
            })
        return out

    @method()
    @_guarded
    async def ListRoutes(self) -> "a(sss)":
        await self._readers()
        return [list(route) for route in self.c.core.route_status()]

    @method()
    @_guarded
    async def Probe(self, node: "s") -> "ds":
        await self._readers()
        result = await self.c.probe(node)
        if result is None:
            raise DBusError(ControllerErrors.UNKNOWN_NODE, f"no node named {quote(node)}")
        if result["via"] == "timeout":
            raise DBusError(ControllerErrors.TIMEOUT, f"no answer from {quote(node)} within 3 s")
        return [float(result["rtt_ms"]), result["via"]]

    @method()
    @_guarded
    async def GetCounters(self) -> "a{st}":
        await self._readers()
        return self.c.core.counter_values()

    @method()
    @_guarded
    async def Connect(self, node: "s") -> "b":
        await self.auth.require({0}, "pin links (root only)")
        if self.c.core.find(node) is None:
            raise DBusError(ControllerErrors.UNKNOWN_NODE, f"no node named {quote(node)}")
        ok = self.c.core.connect(node, time.time())
        self.c.pump()
        return ok

    @method()
    @_guarded
    async def Explain(self, node: "s") -> "s":
        await self._readers()
        report = None if self.c.is_down else self.c.core.explain(node, time.time())
        if report is None:
            raise DBusError(ControllerErrors.UNKNOWN_NODE, f"no node named {quote(node)}")
        return json.dumps(report)

    @method()
    @_guarded
    async def GetMetrics(self) -> "s":
        await self._readers()
        try:
            from . import metrics

            return metrics.render(self.c.metric_families()).decode()
        except ImportError:
            raise DBusError(ControllerErrors.INTERNAL, "metrics need prometheus-client "
                            "(Debian: apt install python3-prometheus-client)") from None

    @method()
    @_guarded
    async def Down(self) -> "b":
        await self.auth.require({0}, "take this node out of the mesh (root only)")
        return await self.c.go_down("wg_netmanager down")

    @method()
    @_guarded
    async def Up(self) -> "b":
        await self.auth.require({0}, "bring this node back into the mesh (root only)")
        return await self.c.go_up()

    @signal()
    def MeshChanged(self) -> "u":
        return self.c.mesh_generation

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self.c.s.name

    @dbus_property(access=PropertyAccess.READ)
    def OverlayAddress(self) -> "s":
        return self.c.s.address

    @dbus_property(access=PropertyAccess.READ)
    def Identity(self) -> "s":
        return self.c.core.identity_hex

    @dbus_property(access=PropertyAccess.READ)
    def PublicKey(self) -> "s":
        return self.c.wg_public_key

    @dbus_property(access=PropertyAccess.READ)
    def Interface(self) -> "s":
        return self.c.s.interface

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return VERSION

    @dbus_property(access=PropertyAccess.READ)
    def Domain(self) -> "s":
        return self.c.s.network.domain

    @dbus_property(access=PropertyAccess.READ)
    def Names(self) -> "s":
        return self.c.names

    @dbus_property(access=PropertyAccess.READ)
    def PublicEndpoint(self) -> "s":
        return "" if self.c.is_down else self.c.core.self_status()["public_endpoint"]

    @dbus_property(access=PropertyAccess.READ)
    def ListenPort(self) -> "q":
        return self.c.core.self_status()["listen_port"]

    @dbus_property(access=PropertyAccess.READ)
    def Nat(self) -> "s":
        return "unknown" if self.c.is_down else self.c.core.self_status()["nat"]

    @dbus_property(access=PropertyAccess.READ)
    def Refused(self) -> "as":
        """The latest refused claims, one line each."""
        if self.c.is_down:
            return []
        return [f"{r['name']} ({r['overlay_ip']}, identity {r['identity']}): {r['reason'].replace('_', ' ')}"
                for r in self.c.core.self_status()["refused"]]

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":
        return "down" if self.c.is_down else "up"

    async def signal_loop(self) -> None:
        """MeshChanged when the mesh changed, at most about once a second (asleep otherwise)."""
        while True:
            await self.c.mesh_changed.wait()
            self.c.mesh_changed.clear()
            if self.c.mesh_generation != self._emitted:
                self._emitted = self.c.mesh_generation
                self.MeshChanged()
            await asyncio.sleep(1.0)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def export_controller1(controller) -> Controller1:
    iface = Controller1(controller)
    controller.bus.export(CONTROLLER_OBJECT_PATH, iface)
    reply = await controller.bus.request_name(CONTROLLER_BUS_NAME)
    if getattr(reply, "value", reply) != 1:
        raise DBusError(ControllerErrors.NOT_AUTHORIZED, f"could not own {CONTROLLER_BUS_NAME} ({reply})")
    asyncio.get_running_loop().create_task(iface.signal_loop())
    return iface
