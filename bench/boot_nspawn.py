#!/usr/bin/env python3
"""Boot-to-active of the installed product (root): a systemd-nspawn container from the cached
rootfs with the Debian package installed (scripts/build-deb.sh, dpkg), booted on a lab LAN;
measures container start until `systemctl is-system-running` answers, and
`systemctl enable --now wg-netmanager` until both units are active (Type=dbus: active = the bus name is owned).
Final stdout line: {"boot_s": ..., "enable_to_active_s": ..., "image_build_s": ...}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from wg_netmanager.lab import bootlab
from wg_netmanager.lab.bootlab import NET_YAML
from wg_netmanager.lab.netlab import Lab


def main() -> int:
    t0 = time.monotonic()
    image = bootlab.install_product(bootlab.build_rootfs(), Path(__file__).resolve().parent.parent)
    image_s = time.monotonic() - t0
    with Lab("bootbench") as lab:
        box = lab.box("c1")
        box.attach(lab.segment("lan"), "198.51.100.11/24")
        c = bootlab.Container(image, box)
        c.sh(f"cat > /etc/wg-netmanager/net.yaml <<'EOF'\n{NET_YAML}EOF\n"
             "printf 'name: c1\\nwgIp: 10.1.1.1\\n' > /etc/wg-netmanager/peer.yaml\n"
             "chown root:wg-netmanager /etc/wg-netmanager/*.yaml; chmod 0640 /etc/wg-netmanager/*.yaml")
        t1 = time.monotonic()
        c.sh("systemctl enable --now wg-netmanager")
        c.wait_active("wg-netmanager-helper")
        c.wait_active("wg-netmanager")
        active_s = time.monotonic() - t1
        c.poweroff()
    print(json.dumps({"boot_s": round(c.boot_s, 2), "enable_to_active_s": round(active_s, 2),
                      "image_build_s": round(image_s, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
