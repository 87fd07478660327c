import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    missing = [tool for tool in ("ip", "wireguard-go", "dbus-daemon", "nsenter", "setpriv", "ping")
               if shutil.which(tool) is None]
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (network namespaces); run the README's test command"
    elif missing:
        reason = f"missing tools: {', '.join(missing)}"
    if reason:
        for item in items:
            if "netns" in item.keywords or "boot" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
