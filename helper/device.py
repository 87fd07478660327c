"""Creating, adopting and removing the WireGuard link, its address and the backend.

Kernel WireGuard (link kind ``wireguard``) is used where it exists; otherwise a
userspace implementation found on PATH (wireguard-go, then boringtun) is started. It
daemonizes, so it outlives the helper: killing the helper never takes the data
plane down.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import shutil
import subprocess

from .kernel import KernelBackend
from .rtnl import IFA_F_NOPREFIXROUTE, IFF_UP, Rtnl, RtnlError
from .uapi import SOCKET_DIR, UapiBackend, socket_path

log = logging.getLogger("wg_netmanager.helper")

USERSPACE_IMPLEMENTATIONS = ("wireguard-go", "boringtun-cli", "boringtun")


class DeviceError(Exception):
    pass


class NoDevice(DeviceError):
    pass


def link_info(ifname: str) -> tuple[int, str | None] | None:
    """(ifindex, link kind) or None when there is no such link."""
    with Rtnl() as rtnl:
        link = rtnl.link(ifname)
    return None if link is None else (link[0], link[2])


async def _spawn_userspace(ifname: str) -> str:
    for name in USERSPACE_IMPLEMENTATIONS:
        path = shutil.which(name)
        if path:
            break
    else:
        raise DeviceError("no kernel WireGuard and no userspace implementation (wireguard-go, boringtun) on PATH")
    SOCKET_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    argv = [path, ifname]
    if "boringtun" in name:
        argv = [path, "--disable-drop-privileges", ifname]
    # Without LOG_LEVEL the daemonized child gets /dev/null for stdio, so our pipe
    # closes when the launcher exits (with it, the daemon would hold the pipe open).
    env = {k: v for k, v in os.environ.items() if k not in ("WG_PROCESS_FOREGROUND", "LOG_LEVEL")}
    # Daemonizes: the parent returns once the device exists; the daemon is not our child.
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, start_new_session=True)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    if proc.returncode != 0:
        # wireguard-go prints a framed banner about kernel support; keep the actual error lines
        lines = [ln.strip() for ln in err.decode(errors="replace").splitlines()
                 if ln.strip() and not ln.lstrip().startswith(("┌", "│", "└"))]
        raise DeviceError(f"{name} {ifname} failed (exit {proc.returncode}): {' / '.join(lines)[-300:]}")
    for _ in range(200):
        if UapiBackend.available(ifname):
            return name
        await asyncio.sleep(0.01)
    raise DeviceError(f"{name} started but {socket_path(ifname)} did not appear")


async def open_backend(ifname: str, create: bool) -> tuple[int, KernelBackend | UapiBackend]:
    """Find (or create) the device and return (ifindex, backend)."""
    info = link_info(ifname)
    if info is None:
        if not create:
            raise NoDevice(f"interface {ifname} does not exist")
        try:
            with Rtnl() as rtnl:
                rtnl.add_link(ifname, "wireguard")
            log.info("created kernel wireguard device", extra={"ifname": ifname})
        except RtnlError as e:
            # no kernel module (EOPNOTSUPP), or not allowed to load it (EPERM, e.g. in a container)
            if e.code not in (errno.EOPNOTSUPP, errno.ENODEV, errno.EINVAL, errno.EPERM):
                raise DeviceError(f"cannot create {ifname}: {e}") from None
            impl = await _spawn_userspace(ifname)
            log.info("started userspace wireguard", extra={"ifname": ifname, "impl": impl})
        info = link_info(ifname)
        if info is None:
            raise DeviceError(f"{ifname} vanished right after creation")
    index, kind = info
    if kind == "wireguard":
        return index, KernelBackend(ifname)
    if UapiBackend.available(ifname):
        return index, UapiBackend(ifname)
    raise DeviceError(f"interface {ifname} exists but is not a WireGuard device (kind {kind or 'unknown'})")


def ensure_address(index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                   subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    """Exactly one overlay address from the subnet, noprefixroute; link up. Returns changes made."""
    changes = 0
    with Rtnl() as rtnl:
        present = False
        for have in rtnl.addresses(index):
            if have.version != iface.version or have.ip not in subnet:
                continue
            if have == iface:
                present = True
            else:  # a stale overlay address (the node was renumbered)
                rtnl.delete_address(index, have)
                changes += 1
        if not present:
            rtnl.add_address(index, iface, IFA_F_NOPREFIXROUTE)
            changes += 1
        link = rtnl.link(index=index)
        if link is not None and not link[1] & IFF_UP:
            rtnl.set_up(index)
            changes += 1
    return changes


def enable_forwarding(ifname: str, index: int, version: int) -> list[str]:
    """Relay traffic between peers: forwarding on the WireGuard interface only (not the whole
    box), and no ICMP redirects accepted (a relay must not make us bypass it); send_redirects=0
    too, though the kernel ORs it with net.ipv4.conf.all's: what keeps a relay from sending them
    is the shape of our routes (see routes.encode_route). IPv4 is set over
    netlink (works with ProtectKernelTunables and in containers); IPv6 through /proc. Returns
    what could not be set."""
    from .routes import (
        IPV4_DEVCONF_ACCEPT_REDIRECTS,
        IPV4_DEVCONF_FORWARDING,
        IPV4_DEVCONF_SEND_REDIRECTS,
        RouteError,
        RouteTable,
    )

    if version == 4:
        table = RouteTable()
        try:
            # (a forwarding interface accepts redirects only if both it and "all" do: 0 here wins)
            table.set_ipv4_devconf(index, {IPV4_DEVCONF_FORWARDING: 1, IPV4_DEVCONF_SEND_REDIRECTS: 0,
                                           IPV4_DEVCONF_ACCEPT_REDIRECTS: 0})
            return []
        except RouteError as e:
            return [f"net.ipv4.conf.{ifname}.forwarding: {e}"]
        finally:
            table.close()
    path = f"/proc/sys/net/ipv6/conf/{ifname}/forwarding"
    try:
        with open(path, "w") as f:
            f.write("1")
        return []
    except OSError as e:
        return [f"{path}: {e.strerror}"]


def own_address(index: int, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
    with Rtnl() as rtnl:
        for have in rtnl.addresses(index):
            if have.version == subnet.version and have.ip in subnet:
                return str(have.ip)
    return None


def delete_link(index: int) -> None:
    with Rtnl() as rtnl:
        rtnl.delete_link(index)
