"""The minimal root helper: applies WireGuard peers and /32 routes on request."""


def main() -> int:
    """The `wg-netmanager-helper` command: see helper.service."""
    from wg_netmanager.common import lean_imports

    lean_imports()
    from .service import main as service_main

    return service_main()
