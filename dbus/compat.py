"""The one module that imports a D-Bus library.

dbus-fast (maintained fork) is preferred; dbus-next, which the user named and which
shares the API, is the fallback. Everything else imports the names from here.
"""

from __future__ import annotations

try:  # pragma: no cover - which branch runs depends on the venv
    from dbus_fast import BusType, DBusError, Message, MessageType, Variant
    from dbus_fast.aio import MessageBus
    from dbus_fast.constants import PropertyAccess
    from dbus_fast.introspection import Node
    from dbus_fast.service import ServiceInterface, dbus_property, method, signal

    LIBRARY = "dbus-fast"
except ImportError:  # pragma: no cover
    from dbus_next import BusType, DBusError, Message, MessageType, Variant
    from dbus_next.aio import MessageBus
    from dbus_next.constants import PropertyAccess
    from dbus_next.introspection import Node
    from dbus_next.service import ServiceInterface, dbus_property, method, signal

    LIBRARY = "dbus-next"

__all__ = [
    "LIBRARY",
    "BusType",
    "DBusError",
    "Message",
    "MessageBus",
    "MessageType",
    "Node",
    "PropertyAccess",
    "ServiceInterface",
    "Variant",
    "dbus_property",
    "method",
    "signal",
]
