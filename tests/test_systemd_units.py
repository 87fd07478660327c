"""The shipped systemd units: `systemd-analyze verify` clean, exposure under the gates."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = {"wg-netmanager-helper.service": 2.0, "wg-netmanager.service": 1.5}
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


def rendered(tmp_path: Path, name: str) -> Path:
    """The unit as the installer writes it, pointing at this environment's binaries."""
    text = (ROOT / "systemd" / name).read_text().replace("/usr/bin/", f"{BIN}/")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_units_verify_clean(tmp_path):
    paths = [str(rendered(tmp_path, name)) for name in UNITS]
    r = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@pytest.mark.parametrize("name,limit", sorted(UNITS.items()))
def test_exposure_under_the_gate(tmp_path, name, limit):
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(rendered(tmp_path, name))],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= limit, f"{name}: exposure {m.group(1)} > {limit}"


def test_units_match_the_contract():
    helper = (ROOT / "systemd" / "wg-netmanager-helper.service").read_text()
    controller = (ROOT / "systemd" / "wg-netmanager.service").read_text()
    assert "BusName=org.wgnetmanager.Helper1" in helper and "Type=dbus" in helper
    assert "BusName=org.wgnetmanager.Controller1" in controller and "User=wg-netmanager" in controller
    # (AF_NETLINK: read-only, to be woken when an address changes)
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n" in controller
    assert "CapabilityBoundingSet=\n" in controller
    activation = (ROOT / "dbus" / "org.wgnetmanager.Helper1.service").read_text()
    assert "SystemdService=wg-netmanager-helper.service" in activation
    assert "u wg-netmanager " in (ROOT / "systemd" / "wg-netmanager.sysusers").read_text()
