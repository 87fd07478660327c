"""Booting the installed product in systemd-nspawn containers (for the boot test).

The rootfs (Debian bookworm minbase + systemd, dbus, wireguard-go and the Debian packages the
product depends on) is built once with debootstrap and cached; the product goes in as README
tells a user: the Debian package built here by scripts/build-deb.sh, installed with dpkg (the
containers have no network; its dependencies are Debian's own, already in the rootfs).
Containers boot with --volatile=overlay, so several share one rootfs, each on a veth of a lab
segment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from wg_netmanager.lab.netlab import Box, LabError, net_yaml

#: a one-node mesh: the container is the static peer
NET_YAML = net_yaml("198.51.100.11:50000", "10.1.1.1")

CACHE = Path(os.environ.get("WGNM_ROOTFS_CACHE", "/var/cache/wg-netmanager-test"))
ROOTFS = CACHE / "rootfs-bookworm"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "wireguard-go", "wireguard-tools",
            "iproute2", "iputils-ping", "procps", "passwd", "ca-certificates", "systemd-resolved",
            # the .deb's dependencies, as bookworm packages them (python3-cffi-backend provides what
            # python3-nacl needs: debootstrap resolves no virtual packages)
            "python3-dbus-fast", "python3-nacl", "python3-yaml", "python3-click",
            "python3-dnslib", "python3-cffi-backend",
            # the kernel tier's guest runs the namespace lab and its tests on this rootfs too
            "kmod", "nftables", "python3-pytest", "psmisc", "util-linux"]
MIRROR = "http://deb.debian.org/debian"


def run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise LabError(f"{' '.join(map(str, cmd))} -> {r.returncode}: {(r.stderr or r.stdout)[-2000:]}")
    return r


def build_rootfs() -> Path:
    """Debian bookworm minbase with what the product needs (cached between runs)."""
    stamp = ROOTFS / ".wgnm-packages"
    if stamp.exists() and stamp.read_text() == " ".join(PACKAGES):
        return ROOTFS
    if ROOTFS.exists():
        shutil.rmtree(ROOTFS)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / "rootfs.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm", str(tmp), MIRROR],
        timeout=900)
    (tmp / "etc/machine-id").write_text("")  # each boot gets its own
    (tmp / ".wgnm-packages").write_text(" ".join(PACKAGES))
    tmp.rename(ROOTFS)
    return ROOTFS


def install_product(rootfs: Path, source: Path) -> Path:
    """Build the Debian package of the checkout ``source`` here (scripts/build-deb.sh) and
    install it with dpkg inside a copy of the rootfs (chroot)."""
    image = CACHE / "image"
    if image.exists():
        shutil.rmtree(image)
    run(["cp", "-a", "--reflink=auto", str(rootfs), str(image)])
    deb = Path(run(["bash", str(source / "scripts/build-deb.sh")], timeout=900).stdout.strip().splitlines()[-1])
    shutil.copy(deb, image / "root" / deb.name)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    run(["chroot", str(image), "dpkg", "-i", f"/root/{deb.name}"], env=env, timeout=600)
    return image


class Container:
    """A booted container in a lab box's network namespace."""

    def __init__(self, image: Path, box: Box) -> None:
        self.box = box
        self.name = box.name
        started = time.monotonic()
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(image), "--volatile=overlay", "--boot", "--register=no", "--keep-unit",
             "--console=passive", f"--network-namespace-path=/run/netns/{box.ns}", "--bind=/dev/net/tun",
             "--resolv-conf=off",  # (the container's own: systemd-resolved's stub)
             "--capability=CAP_NET_ADMIN", f"--machine={box.ns}", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        box.lab._procs.append(self.proc)
        self.pid = self._find_pid1()
        self.wait_booted()
        self.boot_s = time.monotonic() - started

    def _find_pid1(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"nspawn exited: {self.proc.stderr.read().decode()[-2000:]}")
            for child in Path("/proc").iterdir():
                if child.name.isdigit():
                    try:
                        stat = (child / "stat").read_text()
                    except OSError:
                        continue
                    fields = stat.rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.proc.pid and (child / "comm").read_text().strip() == "systemd":
                        return int(child.name)
            time.sleep(0.1)
        raise LabError("container PID 1 not found")

    def sh(self, script: str, check: bool = True, user: str | None = None, timeout: float = 60):
        cmd = ["nsenter", "-t", str(self.pid), "-a", "--"]
        if user:
            cmd += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        r = subprocess.run(cmd + ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=timeout,
                           env={"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        if check and r.returncode != 0:
            raise LabError(f"[{self.name}] {script} -> {r.returncode}: {(r.stderr or r.stdout)[-2000:]}")
        return r

    def wait_booted(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.sh("systemctl is-system-running", check=False)
            if r.stdout.strip() in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise LabError(f"[{self.name}] did not finish booting: {r.stdout} {r.stderr}")

    def wait_active(self, unit: str, timeout: float = 30) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.sh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active":
                return time.monotonic() - started
            time.sleep(0.1)
        log = self.sh(f"journalctl -u {unit} --no-pager -n 30", check=False).stdout
        raise LabError(f"[{self.name}] {unit} not active:\n{log}")

    def poweroff(self) -> None:
        self.sh("systemctl poweroff", check=False)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
