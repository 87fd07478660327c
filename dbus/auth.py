"""Knowing who calls: the caller's UID for a method being dispatched, for both daemons.

dbus-next/dbus-fast do not hand the message to a method handler. A message handler runs,
synchronously, right before the library dispatches a method call; it records the sender
in a context variable, and the (async) method's task inherits the context at creation.
The UID comes from the bus (GetConnectionUnixUser) and is cached per unique name, which
a bus never reuses.
"""

from __future__ import annotations

import contextvars
from collections import OrderedDict

from .compat import DBusError, Message, MessageBus, MessageType

_SENDER: contextvars.ContextVar[str | None] = contextvars.ContextVar("wgnm_dbus_sender", default=None)


class CallerAuth:
    def __init__(self, bus: MessageBus, not_authorized_error: str) -> None:
        self.bus = bus
        self.error = not_authorized_error
        self._uids: OrderedDict[str, int] = OrderedDict()
        bus.add_message_handler(self._remember_sender)

    @staticmethod
    def _remember_sender(msg: Message):
        _SENDER.set(msg.sender if msg.message_type == MessageType.METHOD_CALL else None)
        return None  # never handles anything itself

    async def caller_uid(self) -> int:
        sender = _SENDER.get()
        if sender is None:
            raise DBusError(self.error, "caller could not be identified")
        uid = self._uids.get(sender)
        if uid is None:
            reply = await self.bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="GetConnectionUnixUser", signature="s", body=[sender]))
            if reply.message_type != MessageType.METHOD_RETURN:
                raise DBusError(self.error, "caller's UID could not be determined")
            uid = int(reply.body[0])
            self._uids[sender] = uid
            if len(self._uids) > 256:
                self._uids.popitem(last=False)
        return uid

    async def require(self, allowed: set[int], what: str) -> int:
        uid = await self.caller_uid()
        if uid not in allowed:
            raise DBusError(self.error, f"UID {uid} may not {what}")
        return uid
