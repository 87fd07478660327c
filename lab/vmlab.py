"""A QEMU guest with Debian's stock cloud kernel, for the kernel WireGuard tier.

The machines have no WireGuard module, but qemu-system-x86 (TCG: no KVM here) boots Debian's
linux-image-cloud-amd64, which ships wireguard.ko. Built once and cached (in the boot tier's
cache directory): the kernel package, extracted (not installed); a root file system - a copy
of the boot tier's debootstrap bookworm rootfs with the kernel's modules, the project's Debian
package installed with dpkg (as users install it), the lab and the tests - as an ext4 image
(mkfs.ext4 -d: no mounting); and a busybox initramfs that loads virtio and mounts it. The guest
boots straight into /wgnm-init (no systemd: TCG is slow), which sets up /proc, /sys, /run and
the modules the lab needs, runs the given pytest selection as root - the same namespace lab
as the netns tier, where the helper now finds link kind 'wireguard' - prints its output on
the serial console with a final marker line, and powers off. The disk is used with
snapshot=on: every run starts from the same image.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from wg_netmanager.lab import bootlab
from wg_netmanager.lab.netlab import LabError

VM = bootlab.CACHE / "vm"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
#: the modules the initramfs loads to reach the root disk
BOOT_MODULES = ["virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
                "virtio_blk"]
#: loaded by /wgnm-init: what the namespace lab and both WireGuard backends need
LAB_MODULES = ["wireguard", "tun", "veth", "bridge", "nf_tables", "nft_chain_nat", "nft_masq", "nft_nat",
               "nf_nat", "nft_ct", "nft_counter", "nft_fib_inet", "nf_conntrack", "virtio_net"]
MARK = "WGNM-GUEST-EXIT"


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return bootlab.run([str(c) for c in cmd], **kw)


def kernel() -> tuple[Path, str]:
    """Debian's cloud kernel package, downloaded and extracted once: (extract dir, version)."""
    stamp = VM / "kernel.version"
    root = VM / "kernel"
    if stamp.exists() and (root / "boot").exists():
        return root, stamp.read_text().strip()
    VM.mkdir(parents=True, exist_ok=True)
    deps = run(["apt-cache", "depends", KERNEL_PACKAGE]).stdout
    image = re.search(r"Depends: (linux-image-\S+-cloud-amd64)", deps).group(1)
    dl = VM / "download"
    shutil.rmtree(dl, ignore_errors=True)
    dl.mkdir()
    os.chmod(dl, 0o777)  # (apt's download user writes here)
    run(["apt-get", "download", image], cwd=dl, timeout=600)
    shutil.rmtree(root, ignore_errors=True)
    run(["dpkg-deb", "-x", next(dl.glob("*.deb")), root])
    version = image[len("linux-image-"):]
    run(["depmod", "-b", root, version])
    shutil.rmtree(dl)
    stamp.write_text(version)
    return root, version


def _deps(kroot: Path, version: str, names: list[str]) -> list[Path]:
    """The module files for ``names`` and their dependencies, in load order."""
    moddir = kroot / "lib/modules" / version
    dep = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        dep[Path(path).name.split(".ko")[0].replace("-", "_")] = (path, needs.split())
    order: list[str] = []

    def visit(path: str) -> None:
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        for need in dep[name][1]:
            visit(need)
        if path not in order:
            order.append(path)
    for name in names:
        visit(dep[name][0])
    return [moddir / p for p in order]


def initramfs(kroot: Path, version: str) -> Path:
    out = VM / f"initrd-{version}.cpio.gz"
    if out.exists():
        return out
    work = VM / "initrd.tmp"
    shutil.rmtree(work, ignore_errors=True)
    (work / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", work / "bin/busybox")
    mods = work / "modules"
    mods.mkdir()
    names = []
    for i, path in enumerate(_deps(kroot, version, BOOT_MODULES)):
        name = f"{i:02d}-{path.name}"
        shutil.copy(path, mods / name)
        names.append(name)
    (work / "init").write_text("""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
for m in /modules/*.ko; do /bin/busybox insmod "$m" || echo "initramfs: cannot load $m"; done
for n in $(/bin/busybox seq 50); do [ -b /dev/vda ] && break; /bin/busybox sleep 0.1; done
/bin/busybox mount -t ext4 /dev/vda /newroot || { echo "initramfs: no root disk"; /bin/busybox poweroff -f; }
/bin/busybox umount /proc
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /wgnm-init
""")
    os.chmod(work / "init", 0o755)
    files = run(["find", ".", "-print0"], cwd=work).stdout
    cpio = subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet"], input=files.encode(), cwd=work,
                          capture_output=True, check=True).stdout
    tmp = out.with_suffix(".tmp")
    subprocess.run(["gzip", "-1"], input=cpio, stdout=open(tmp, "wb"), check=True)
    tmp.rename(out)
    shutil.rmtree(work)
    return out


_GUEST_INIT = """#!/bin/sh
# The guest's PID 1: a minimal system for the namespace lab, then the tests, then power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
mount -t proc proc /proc; mount -t sysfs sys /sys
mount -t tmpfs -o mode=0755 run /run; mkdir -p /run/netns /run/lock /dev/pts /dev/shm /dev/net
mount -t tmpfs tmp /tmp; mount -t devpts devpts /dev/pts; mount -t tmpfs shm /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -o remount,rw / 2>/dev/null
hostname wgnm-guest; ip link set lo up
for m in {modules}; do modprobe "$m" 2>/dev/null || echo "guest: no module $m"; done
[ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
mkdir -p /run/dbus
cd /wgnm
echo "guest: kernel $(uname -r), wireguard $(cat /sys/module/wireguard/version 2>/dev/null)"
# the command comes base64-encoded on the kernel command line (wgnm=...)
cmd=$(tr ' ' '\\n' </proc/cmdline | sed -n 's/^wgnm=//p' | base64 -d)
eval "$cmd"
echo "{mark} $?"
sync
poweroff -f
"""


def _tree_digest(source: Path) -> str:
    """A hash of what goes into the image: the product, its package, the lab and the tests."""
    h = hashlib.sha256()
    for part in ("controller", "helper", "common", "dbus", "systemd", "debian", "lab", "tests", "bench", "scripts",
                 "pyproject.toml"):
        for path in sorted((source / part).rglob("*")) if (source / part).is_dir() else [source / part]:
            if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
                h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def image(source: Path) -> tuple[Path, Path, Path]:
    """(kernel, initramfs, root disk image) for the checkout ``source``; the disk is rebuilt
    when the product or the tests changed (its stamp is a hash of them)."""
    kroot, version = kernel()
    initrd = initramfs(kroot, version)
    rootfs = bootlab.build_rootfs()
    digest = _tree_digest(source)
    disk = VM / "root.img"
    stamp = VM / "root.stamp"
    key = f"{version} {digest} {' '.join(bootlab.PACKAGES)}"
    if disk.exists() and stamp.exists() and stamp.read_text() == key:
        return kroot / "boot" / f"vmlinuz-{version}", initrd, disk
    tree = VM / "rootfs"
    shutil.rmtree(tree, ignore_errors=True)
    run(["cp", "-a", "--reflink=auto", rootfs, tree])
    run(["cp", "-a", kroot / "lib/modules", tree / "lib/"])
    # the product as users install it (the Debian package), the lab and the tests for the run
    deb = Path(run(["bash", source / "scripts/build-deb.sh"], timeout=900).stdout.strip().splitlines()[-1])
    shutil.copy(deb, tree / "root" / deb.name)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    run(["chroot", tree, "dpkg", "-i", f"/root/{deb.name}"], env=env, timeout=600)
    site = tree / "usr/lib/python3/dist-packages/wg_netmanager/lab"
    shutil.copytree(source / "lab", site, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build",
                                                                        "pyproject.toml"))
    (tree / "wgnm").mkdir()
    (tree / "wgnm-init").write_text(_GUEST_INIT.format(modules=" ".join(LAB_MODULES), mark=MARK))
    os.chmod(tree / "wgnm-init", 0o755)
    shutil.copytree(source / "tests", tree / "wgnm/tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(source / "bench", tree / "wgnm/bench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(source / "pyproject.toml", tree / "wgnm/pyproject.toml")
    for user in ("wgnm-other", "wgnm-member"):
        run(["chroot", tree, "useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", user], env=env)
    run(["chroot", tree, "usermod", "-a", "-G", "wg-netmanager", "wgnm-member"], env=env)
    disk_tmp = VM / "root.img.tmp"
    disk_tmp.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-L", "wgnmroot", "-d", tree, disk_tmp, "3G"], timeout=600)
    disk_tmp.rename(disk)
    shutil.rmtree(tree)
    stamp.write_text(key)
    return kroot / "boot" / f"vmlinuz-{version}", initrd, disk


def run_guest(source: Path, pytest_args: list[str], timeout: float = 600, memory_mb: int = 2048
              ) -> tuple[int, str, float]:
    """Boot the guest, run ``pytest pytest_args`` (paths relative to the checkout) inside it:
    (pytest's exit status, the console output, wall seconds of the boot and run)."""
    return run_in_guest(source, ["python3", "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=",
                                 *pytest_args], timeout, memory_mb)


#: the guest kernel's own watchdog found a CPU stuck (TCG: seen once in CI, both vCPUs in
#: ksoftirqd for 900 s): it panics, and the guest powers off at once rather than at the timeout
LOCKUP = re.compile(r"soft lockup|hard LOCKUP|Kernel panic")


def run_in_guest(source: Path, argv: list[str], timeout: float = 600, memory_mb: int = 2048
                 ) -> tuple[int, str, float]:
    """Boot the guest and run ``argv`` in /wgnm (the checkout's tests/ and bench/): (its exit
    status, the console output, wall seconds). A guest whose kernel locked up is booted once
    more (the run starts over from the same disk image) and the first run's report is kept at
    the head of the output; a second lockup is an error."""
    vmlinuz, initrd, disk = image(source)
    encoded = base64.b64encode(shlex.join(argv).encode()).decode()
    # loglevel=5: the console shows the kernel's warnings, so a lockup comes with its backtrace
    cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
           "-smp", str(min(4, os.cpu_count() or 2)), "-m", str(memory_mb), "-nographic", "-no-reboot",
           "-kernel", vmlinuz, "-initrd", initrd,
           "-append", f"console=ttyS0 panic=-1 softlockup_panic=1 quiet loglevel=5 rw wgnm={encoded}",
           "-drive", f"file={disk},if=virtio,format=raw,snapshot=on"]
    started = time.monotonic()
    earlier = ""
    for attempt in (1, 2):
        left = timeout - (time.monotonic() - started)
        try:
            r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=max(left, 60),
                               stdin=subprocess.DEVNULL, errors="replace")
            out = r.stdout + r.stderr
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            raise LabError(f"the guest did not finish within {timeout} s:\n{earlier}{_ends(out)}") from None
        found = re.findall(rf"{MARK} (\d+)", out)
        if found:
            return int(found[-1]), earlier + out, time.monotonic() - started
        if attempt == 1 and LOCKUP.search(out):
            earlier = f"vmlab: the guest's kernel locked up; booted again. Its console:\n{_ends(out)}\n\n"
            print(earlier, flush=True)
            continue
        raise LabError(f"the guest did not report (no {MARK} line):\n{earlier}{_ends(out)}")
    raise AssertionError("unreachable")


def _ends(out: str, each: int = 3000) -> str:
    """The head (where the tests got to) and the tail (how it ended) of a console log."""
    return out if len(out) <= 2 * each else f"{out[:each]}\n[...]\n{out[-each:]}"


def available() -> str | None:
    """None if the tier can run here, else why not (the tier skips only for these reasons)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("qemu-system-x86_64", "mkfs.ext4", "depmod", "cpio", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/dev.sh setup installs it)"
    if not glob.glob("/bin/busybox"):
        return "busybox-static is not installed"
    return None
