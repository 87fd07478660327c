"""The kernel tier: Debian's stock cloud kernel in a QEMU guest (lab/vmlab.py), where the
helper makes kernel WireGuard devices. Inside the guest: the whole Helper1 tier on real parts
(EnsureDevice/Apply/GetState/Teardown, re-apply = 0 changes, make-before-break, kill -9 of the
helper, the bad-input sweep, the two-box kernel test that skips elsewhere) and meshes on kernel
WireGuard, mixed with wireguard-go (tests/test_kernel_guest.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wg_netmanager.lab import vmlab

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parent.parent


def test_the_helper_and_meshes_on_kernel_wireguard_in_the_guest():
    reason = vmlab.available()
    if reason is not None:
        pytest.skip(reason)
    rc, out, wall = vmlab.run_guest(ROOT, ["-v", "-rs", "tests/test_helper_netns.py", "tests/test_kernel_guest.py"],
                                    timeout=1200)
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    assert rc == 0, out[-6000:]
    assert "guest: kernel" in out and "wireguard 1." in out, out[:2000]
    assert summary and "failed" not in summary[-1] and "error" not in summary[-1], summary
    assert "skipped" not in summary[-1], out[-3000:]  # the kernel-only tests ran
    print(f"kernel tier: {summary[-1].strip()} ({wall:.0f} s wall)")
