"""The D-Bus contract shared by the helper and the controller.

The interface XML files and the bus policy in this package are the contract; the
names below are the only place the Python code spells them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

HELPER_BUS_NAME = "org.wgnetmanager.Helper1"
HELPER_OBJECT_PATH = "/org/wgnetmanager/Helper1"
HELPER_INTERFACE = "org.wgnetmanager.Helper1"

CONTROLLER_BUS_NAME = "org.wgnetmanager.Controller1"
CONTROLLER_OBJECT_PATH = "/org/wgnetmanager/Controller1"
CONTROLLER_INTERFACE = "org.wgnetmanager.Controller1"

#: The system user the controller runs as; the helper accepts calls from it and root.
#: Members of the group of the same name may read the controller's status.
CONTROLLER_USER = "wg-netmanager"


class HelperErrors:
    """Named errors returned by Helper1. Every refusal uses one of these."""

    PREFIX = HELPER_INTERFACE + ".Error."
    INVALID_ARGS = PREFIX + "InvalidArgs"
    NOT_AUTHORIZED = PREFIX + "NotAuthorized"
    NOT_MANAGED = PREFIX + "NotManaged"
    NO_DEVICE = PREFIX + "NoDevice"
    BACKEND_FAILED = PREFIX + "BackendFailed"
    INTERNAL = PREFIX + "Internal"


def contract_file(name: str) -> Path:
    """Path of a shipped contract file (interface XML or bus policy)."""
    return Path(str(resources.files(__package__).joinpath(name)))


class ControllerErrors:
    PREFIX = CONTROLLER_INTERFACE + ".Error."
    NOT_AUTHORIZED = PREFIX + "NotAuthorized"
    UNKNOWN_NODE = PREFIX + "UnknownNode"
    TIMEOUT = PREFIX + "Timeout"


HELPER_XML = HELPER_INTERFACE + ".xml"
CONTROLLER_XML = CONTROLLER_INTERFACE + ".xml"
BUS_POLICY = "org.wgnetmanager.conf"
