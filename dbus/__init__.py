"""The D-Bus contract shared by the helper and the controller.

The interface XML files and the bus policy in this package are the contract; the
names below are the only place the Python code spells them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
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
    NO_RESOLVER = PREFIX + "NoResolver"
    INTERNAL = PREFIX + "Internal"


def contract_file(name: str) -> Path:
    """Path of a shipped contract file (interface XML or bus policy), beside this module (a
    plain directory, installed or not; importlib.resources would pull in tempfile, shutil, bz2
    and lzma - ~1 MB of each daemon - for the same path)."""
    return Path(__file__).resolve().parent / name


class ControllerErrors:
    PREFIX = CONTROLLER_INTERFACE + ".Error."
    NOT_AUTHORIZED = PREFIX + "NotAuthorized"
    UNKNOWN_NODE = PREFIX + "UnknownNode"
    TIMEOUT = PREFIX + "Timeout"
    INTERNAL = PREFIX + "Internal"


HELPER_XML = HELPER_INTERFACE + ".xml"
CONTROLLER_XML = CONTROLLER_INTERFACE + ".xml"
BUS_POLICY = "org.wgnetmanager.conf"


def contract_structure(xml_text: str, interface: str) -> dict:
    """What a client relies on in an introspection document: per method its arguments (name,
    type, direction), per property its type and access, per signal its argument types.
    Comparing these, not the text, ignores formatting and annotations."""
    iface = next(i for i in ET.fromstring(xml_text).iter("interface") if i.get("name") == interface)
    return {
        "methods": {m.get("name"): [(a.get("name"), a.get("type"), a.get("direction", "in")) for a in m.iter("arg")]
                    for m in iface.iter("method")},
        "properties": {p.get("name"): (p.get("type"), p.get("access")) for p in iface.iter("property")},
        "signals": {s.get("name"): [a.get("type") for a in s.iter("arg")] for s in iface.iter("signal")},
    }
