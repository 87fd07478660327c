"""The unprivileged controller: discovery, gossip and path selection."""


def main() -> None:
    """The `wg_netmanager` command (the daemon and the CLI): see controller.cli."""
    from wg_netmanager.common import lean_imports

    lean_imports()
    from .cli import main as cli_main

    cli_main()
