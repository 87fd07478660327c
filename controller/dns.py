"""Names: every node answers DNS for ``<name>.<domain>`` (e.g. ``alice.mesh.internal``) from its
core's accepted records - sans-I/O: :func:`answer` turns a query into a reply; the runtime owns
the socket, and the helper points systemd-resolved at it for the mesh domain only.

Rules: a name is a node's name when it is a DNS label (RFC 1123; other names are not served),
compared without case; its addresses are the overlay IPs bound to the identities that claim it
(A for an IPv4 overlay, AAAA for IPv6); names outside the domain are REFUSED, unknown ones
NXDOMAIN, other record types of a known name an empty NOERROR, a malformed query FORMERR (when
its header can be read) or nothing, other opcodes NOTIMP. The wire format is dnslib's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSError, DNSHeader, DNSRecord
from dnslib.buffer import Buffer

from wg_netmanager.common.config import is_dns_label

#: answers are short-lived: a renamed or moved node resolves anew within seconds
TTL = 5
#: a query larger than this is not one of ours
MAX_QUERY = 512


def answer(data: bytes, domain: str, lookup: Callable[[str], list[str]]) -> bytes | None:
    """The reply to one query (None: nothing to say - not even a header to answer)."""
    if len(data) > MAX_QUERY:
        return None
    try:
        query = DNSRecord.parse(data)
    except (DNSError, ValueError, IndexError, UnicodeDecodeError):
        return _formerr(data)
    if query.header.qr:  # a response, not a query
        return None
    reply = query.reply()
    reply.header.ra = 0
    if query.header.opcode != 0:
        reply.header.rcode = RCODE.NOTIMP
        return reply.pack()
    if len(query.questions) != 1:
        reply.header.rcode = RCODE.FORMERR
        return reply.pack()
    q = query.q
    name = str(q.qname).rstrip(".").lower()
    suffix = "." + domain
    if name != domain and not name.endswith(suffix):
        reply.header.aa = 0
        reply.header.rcode = RCODE.REFUSED
        return reply.pack()
    label = name[: -len(suffix)] if name != domain else ""
    addresses = lookup(label) if is_dns_label(label) else []
    if name != domain and not addresses:
        reply.header.rcode = RCODE.NXDOMAIN
        return reply.pack()
    for text in addresses:
        ip = ipaddress.ip_address(text)
        if ip.version == 4 and q.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(text), ttl=TTL))
        elif ip.version == 6 and q.qtype in (QTYPE.AAAA, QTYPE.ANY):
            reply.add_answer(RR(q.qname, QTYPE.AAAA, rdata=AAAA(text), ttl=TTL))
    return reply.pack()


def _formerr(data: bytes) -> bytes | None:
    if len(data) < 12:
        return None
    try:
        header = DNSHeader.parse(Buffer(data))
    except (DNSError, ValueError, IndexError):
        return None
    if header.qr:
        return None
    return DNSRecord(DNSHeader(id=header.id, qr=1, rcode=RCODE.FORMERR)).pack()
