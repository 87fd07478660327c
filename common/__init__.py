"""Code both daemons use (configuration loading, logging setup); owned by neither, so that the
root helper imports nothing from the controller."""

from importlib import metadata as _metadata

try:
    #: the installed package's version (one place; both daemons' Version property and the CLI)
    VERSION = _metadata.version("wg-netmanager")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout without install
    VERSION = "0+unknown"
