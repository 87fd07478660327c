"""The admin protocol's wire format. Pure; every decoder raises only ProtocolError.

Datagram = ``MAGIC(3) VERSION(1) nonce(24) AEAD(inner)``, sealed with XChaCha20-Poly1305
under a key derived from net.yaml's sharedKey (only members can read or inject), with
the 4-byte header as associated data.

inner = ``type(1) sender-identity(32) timestamp-ms(8) seq(4) body auth``: every datagram
is authenticated as its sender's, so a member holding the shared key still cannot speak for
anybody else, and (timestamp, seq) lets receivers drop replays. ``auth`` is either

* ``sig(64)``: an Ed25519 signature by the sender's identity (anyone can check it), or
* ``mac(16)``, flagged by the type's high bit (``AUTH_MAC``): a keyed BLAKE2b over the
  receiver's identity and the inner message, under a key only the two ends can compute -
  X25519 between their identities (converted from Ed25519), like WireGuard's static-static
  Diffie-Hellman. A node uses it towards nodes it links to directly: a probe or record
  batch then costs about a microsecond to authenticate instead of ~85 (sign + verify).

Records (a node's claims) are signed separately so anyone can relay them unchanged:
``identity(32) version(8) kind(1) length(2) payload sig(64)``.
A node record (kind 0) holds a node's claims; a node with many links lists them in link
pages (kind 1: ``index(2) count(2) links(2) link*``; see core/pages.py).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from nacl.exceptions import CryptoError

from .crypto import (
    ID8_LEN,
    MAC_LEN,
    NONCE_LEN,
    SIG_LEN,
    TAG_LEN,
    Identity,
    PairKeys,
    ProtocolError,
    aead_open,
    aead_seal,
    pair_mac,
    verify,
)

MAGIC = b"WGN"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
AUTH_MAC = 0x80  # in the type byte: authenticated by the pair's MAC instead of a signature
ID_LEN = 32
MAX_DATAGRAM = 60000
_INNER_HEAD = struct.Struct(">B32sQI")  # type, sender, timestamp ms, seq
INNER_HEAD_LEN = _INNER_HEAD.size
_RECORD_HEAD = struct.Struct(">32sQBH")  # identity, version, kind, payload length
_U32 = struct.Struct(">I")

# message types
PROBE, PROBE_ACK, RECORDS, SYNC, DIGEST, REQUEST, CONNECT, CONNECT_ACK = range(1, 9)
TYPE_NAMES = {PROBE: "probe", PROBE_ACK: "probe_ack", RECORDS: "records", SYNC: "sync", DIGEST: "digest",
              REQUEST: "request", CONNECT: "connect", CONNECT_ACK: "connect_ack"}

RECORD_NODE = 0
#: a page of a node's links: a node with more links than fit one datagram (a hub of a large
#: mesh) lists them in pages of their own (see Pages), each signed and versioned on its own, so
#: no record grows with the mesh and a changed link re-sends one page, not every link
RECORD_LINKS = 1

# endpoint kinds in a node record
EP_STATIC, EP_LAN, EP_REFLEXIVE = 1, 2, 3
# record flags
FLAG_STATIC = 1
FLAG_LEFT = 2  # the node left the mesh (`wg_netmanager down`): drop it now, forget it soon
FLAG_PAGED = 4  # the node's links are in its RECORD_LINKS pages, not in this record
# link flags
LINK_ACTIVE = 1


class RecordCache:
    """Records whose signature was already checked, by the whole record's bytes (identity,
    version, payload AND signature: a known signature attached to a changed message is a miss,
    and is verified - and refused; the Record keeps the raw bytes anyway). A node receives the
    same record version from many relays: it is verified and decoded once. (The simulator
    shares one cache between all its cores: a pure-function memo, it changes no behaviour.)"""

    def __init__(self, size: int = 65536) -> None:
        self.size = size
        self._seen: dict[bytes, Record] = {}  # raw record -> Record (oldest first: evicted first)

    def parse(self, data: bytes, pos: int, total: int | None = None) -> Record:
        """The record at ``pos`` (``total`` bytes long, if the caller read its header)."""
        if total is None:
            total = read_record_header(data, pos)[3]
        raw = data[pos:pos + total]
        record = self._seen.get(raw)
        if record is not None:
            return record
        identity, version, kind, length = _RECORD_HEAD.unpack_from(raw, 0)
        body_end = total - SIG_LEN
        if not verify(identity, raw[:body_end], raw[body_end:]):
            raise ProtocolError("bad_record_signature")
        record = Record(identity, version, kind, raw[_RECORD_HEAD.size:body_end], raw[body_end:], raw)
        self._seen[raw] = record
        if len(self._seen) > self.size:
            del self._seen[next(iter(self._seen))]
        return record

    @staticmethod
    def decoded(record: Record, decode):
        """``decode(record.payload)`` of a record this cache returned, computed once."""
        memo = record.memo
        if not memo:
            memo.append(decode(record.payload))
        return memo[0]


# ---------------------------------------------------------------- small codecs


class Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError("trailing_bytes")


@functools.lru_cache(maxsize=4096)
def _pack_ip(host: str) -> bytes:
    ip = ipaddress.ip_address(host)
    return bytes([ip.version]) + ip.packed


@functools.lru_cache(maxsize=4096)
def _ip_text(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def pack_addr(addr: tuple[str, int] | None) -> bytes:
    """(ip, port) -> family(1) ip(4|16) port(2); None -> family 0."""
    if addr is None:
        return b"\0"
    return _pack_ip(addr[0]) + struct.pack(">H", addr[1])


def read_addr(r: Reader) -> tuple[str, int] | None:
    family = r.u8()
    if family == 0:
        return None
    if family not in (4, 6):
        raise ProtocolError("bad_address_family")
    return _ip_text(r.take(4 if family == 4 else 16)), r.u16()


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Endpoint:
    kind: int  # EP_*
    address: str
    port: int
    prefixlen: int = 0  # for LAN endpoints: the LAN's prefix, to tell whether a peer shares it


@dataclass(frozen=True)
class LinkClaim:
    peer: bytes  # id8 of the other end
    rtt_ms: int
    flags: int = 0


@dataclass(frozen=True)
class NodeInfo:
    wg_public_key: bytes
    overlay_ip: str
    wg_port: int
    admin_port: int
    name: str
    flags: int = 0
    endpoints: tuple[Endpoint, ...] = ()
    links: tuple[LinkClaim, ...] = ()

    @property
    def is_static(self) -> bool:
        return bool(self.flags & FLAG_STATIC)

    @property
    def is_left(self) -> bool:
        return bool(self.flags & FLAG_LEFT)

    @property
    def is_paged(self) -> bool:
        return bool(self.flags & FLAG_PAGED)

    @functools.cached_property
    def lan_addresses(self) -> tuple[str, ...]:
        return tuple(ep.address for ep in self.endpoints if ep.kind == EP_LAN)

    @functools.cached_property
    def reflexive_addresses(self) -> tuple[str, ...]:
        return tuple(ep.address for ep in self.endpoints if ep.kind == EP_REFLEXIVE)

    @functools.cached_property
    def link_map(self) -> dict[bytes, int]:
        """peer -> claimed RTT (ms). Read-only: shared by whoever holds this NodeInfo."""
        return {link.peer: link.rtt_ms for link in self.links}


@dataclass(frozen=True)
class Record:
    identity: bytes
    version: int
    kind: int
    payload: bytes
    signature: bytes
    raw: bytes = field(repr=False, compare=False, default=b"")
    #: the decoded payload, once (see RecordCache.decoded)
    memo: list = field(repr=False, compare=False, default_factory=list)

    @functools.cached_property
    def id8(self) -> bytes:
        """(One bytes object per record: every node keys its tables on it.)"""
        return self.identity[:ID8_LEN]


def encode_node_info(info: NodeInfo) -> bytes:
    name = info.name.encode()[:63]
    ip = ipaddress.ip_address(info.overlay_ip)
    out = [info.wg_public_key, bytes([ip.version]), ip.packed,
           struct.pack(">HHBB", info.wg_port, info.admin_port, info.flags, len(name)), name,
           bytes([len(info.endpoints)])]
    for ep in info.endpoints:
        out.append(bytes([ep.kind]) + pack_addr((ep.address, ep.port)) + bytes([ep.prefixlen]))
    out.append(struct.pack(">H", len(info.links)))
    for link in info.links:
        out.append(link.peer + struct.pack(">HB", link.rtt_ms, link.flags))
    return b"".join(out)


def decode_node_info(payload: bytes) -> NodeInfo:
    r = Reader(payload)
    wg_key = r.take(32)
    family = r.u8()
    if family not in (4, 6):
        raise ProtocolError("bad_address_family")
    overlay = str(ipaddress.ip_address(r.take(4 if family == 4 else 16)))
    wg_port, admin_port, flags, name_len = struct.unpack(">HHBB", r.take(6))
    try:
        name = r.take(name_len).decode()
    except UnicodeDecodeError:
        raise ProtocolError("bad_name") from None
    if not name.isprintable():
        raise ProtocolError("bad_name")
    endpoints = []
    for _ in range(r.u8()):
        kind = r.u8()
        addr = read_addr(r)
        if addr is None or kind not in (EP_STATIC, EP_LAN, EP_REFLEXIVE):
            raise ProtocolError("bad_endpoint")
        endpoints.append(Endpoint(kind, addr[0], addr[1], r.u8()))
    links = []
    for _ in range(r.u16()):
        peer = r.take(ID8_LEN)
        rtt, lflags = struct.unpack(">HB", r.take(3))
        links.append(LinkClaim(peer, rtt, lflags))
    r.done()
    return NodeInfo(wg_key, overlay, wg_port, admin_port, name, flags, tuple(endpoints), tuple(links))


@dataclass(frozen=True)
class LinkPage:
    """Page ``index`` of ``count`` of a node's links: the links to the peers whose id8, read as
    a 32-bit number, falls in the index-th of ``count`` equal ranges (see page_of)."""

    index: int
    count: int
    links: tuple[LinkClaim, ...]

    @functools.cached_property
    def link_map(self) -> dict[bytes, int]:
        return {link.peer: link.rtt_ms for link in self.links}


_PAGE_HEAD = struct.Struct(">HHH")  # index, count, links
#: bounds of what one member may make every node hold in link pages (< 3 MB, where the u16
#: fields alone would allow 32,768 pages of ~5,000 links): 1,024 pages of 256 links lists
#: ~200,000 links at the sizes a page count reaches (pages.page_count), beyond what a mesh of
#: full membership reaches (ARCHITECTURE.md, Scaling)
MAX_PAGES = 1024
MAX_PAGE_LINKS = 256


def page_of(peer: bytes, count: int) -> int:
    """The page (of ``count``) that lists a link to ``peer``."""
    return int.from_bytes(peer[:4], "big") * count >> 32


def page_shift(count: int) -> int:
    """page_of as a shift, for a power-of-two ``count`` (every count a page may have):
    ``int.from_bytes(peer[:4], "big") >> page_shift(count) == page_of(peer, count)``; for a
    lookup in a hot loop (core.pages.PagedLinks)."""
    return 33 - count.bit_length()


def page_key(identity: bytes, index: int) -> bytes:
    """The 8-byte key page ``index`` of ``identity``'s links goes by in digests and requests
    (as a node's record goes by its id8)."""
    return hashlib.blake2b(identity + index.to_bytes(2, "big"), digest_size=ID8_LEN, person=b"wgnm-page").digest()


def encode_link_page(page: LinkPage) -> bytes:
    return _PAGE_HEAD.pack(page.index, page.count, len(page.links)) + b"".join(
        link.peer + struct.pack(">HB", link.rtt_ms, link.flags) for link in page.links)


def decode_link_page(payload: bytes) -> LinkPage:
    r = Reader(payload)
    index, count, n = _PAGE_HEAD.unpack(r.take(_PAGE_HEAD.size))
    if count == 0 or count & (count - 1) or index >= count or count > MAX_PAGES or n > MAX_PAGE_LINKS:
        raise ProtocolError("bad_page")
    links = []
    for _ in range(n):
        peer = r.take(ID8_LEN)
        if page_of(peer, count) != index:
            raise ProtocolError("bad_page")
        rtt, lflags = struct.unpack(">HB", r.take(3))
        links.append(LinkClaim(peer, rtt, lflags))
    r.done()
    return LinkPage(index, count, tuple(links))


def page_index_at(data: bytes, pos: int) -> int:
    """The page index of the RECORD_LINKS record at ``pos`` (its header read): a cheap peek."""
    at = pos + _RECORD_HEAD.size
    if at + 2 > len(data):
        raise ProtocolError("truncated")
    return int.from_bytes(data[at:at + 2], "big")


def make_record(identity: Identity, version: int, kind: int, payload: bytes) -> Record:
    head = _RECORD_HEAD.pack(identity.public, version, kind, len(payload))
    body = head + payload
    sig = identity.sign(body)
    return Record(identity.public, version, kind, payload, sig, body + sig)


def read_record_header(data: bytes, pos: int) -> tuple[bytes, int, int, int]:
    """(identity, version, kind, total length) of the record at ``pos``: a cheap peek."""
    if pos + _RECORD_HEAD.size > len(data):
        raise ProtocolError("truncated")
    identity, version, kind, length = _RECORD_HEAD.unpack_from(data, pos)
    total = _RECORD_HEAD.size + length + SIG_LEN
    if pos + total > len(data):
        raise ProtocolError("truncated")
    return identity, version, kind, total


def parse_record(data: bytes, pos: int, cache: RecordCache, total: int | None = None) -> Record:
    """The record at ``pos``, its signature verified (or remembered as verified)."""
    return cache.parse(data, pos, total)


# ---------------------------------------------------------------- datagrams


class Inner(NamedTuple):
    """An opened datagram (a tuple: one per datagram received)."""

    type: int
    sender: bytes
    timestamp_ms: int
    seq: int
    body: bytes
    mac: bool = False  # authenticated by the pair's MAC: the sender links to us (else signed)


def seal(key: bytes, nonce: bytes, identity: Identity, mtype: int, timestamp_ms: int, seq: int,
         body: bytes, pair: tuple[bytes, bytes] | None = None) -> bytes:
    """``pair`` = (receiver identity, PairKeys key): authenticate with the MAC, else sign."""
    if pair is None:
        inner = _INNER_HEAD.pack(mtype, identity.public, timestamp_ms, seq) + body
        inner += identity.sign(inner)
    else:
        inner = _INNER_HEAD.pack(mtype | AUTH_MAC, identity.public, timestamp_ms, seq) + body
        inner += pair_mac(pair[1], pair[0], inner)
    return HEADER + nonce + aead_seal(inner, HEADER, nonce, key)


def open_datagram(key: bytes, data: bytes, pairs: PairKeys | None = None) -> Inner:
    """Decrypt and authenticate (a MAC needs our ``pairs``); raise ProtocolError for anything else."""
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError("oversized")
    if len(data) < 4 + NONCE_LEN + TAG_LEN + _INNER_HEAD.size + MAC_LEN:
        raise ProtocolError("short" if data[:3] == MAGIC else "bad_magic")
    if data[:3] != MAGIC:
        raise ProtocolError("bad_magic")
    if data[3] != VERSION:
        raise ProtocolError("unknown_version", str(data[3]))
    nonce = data[4:4 + NONCE_LEN]
    try:
        inner = aead_open(data[4 + NONCE_LEN:], HEADER, nonce, key)
    except (CryptoError, ValueError, TypeError):
        raise ProtocolError("decrypt_failed") from None
    if len(inner) < _INNER_HEAD.size + MAC_LEN:
        raise ProtocolError("short")
    mtype, sender, ts, seq = _INNER_HEAD.unpack_from(inner, 0)
    if mtype & ~AUTH_MAC not in TYPE_NAMES:
        raise ProtocolError("unknown_type", str(mtype))
    if mtype & AUTH_MAC:
        if pairs is None:
            raise ProtocolError("mac_unverifiable")
        signed, mac = inner[:-MAC_LEN], inner[-MAC_LEN:]
        if sender == pairs.identity.public:
            raise ProtocolError("own_identity")  # (a reflected datagram: never our own pair)
        if not hmac.compare_digest(mac, pair_mac(pairs.key(sender), pairs.identity.public, signed)):
            raise ProtocolError("bad_mac")
        mtype &= ~AUTH_MAC
    else:
        if len(inner) < _INNER_HEAD.size + SIG_LEN:
            raise ProtocolError("short")
        signed, sig = inner[:-SIG_LEN], inner[-SIG_LEN:]
        if not verify(sender, signed, sig):
            raise ProtocolError("bad_signature")
    return Inner(mtype, sender, ts, seq, signed[_INNER_HEAD.size:], bool(inner[0] & AUTH_MAC))


# ---------------------------------------------------------------- message bodies


def body_probe(probe_id: int) -> bytes:
    return struct.pack(">I", probe_id)


def parse_probe(body: bytes) -> int:
    if len(body) != 4:
        raise ProtocolError("truncated" if len(body) < 4 else "trailing_bytes")
    return _U32.unpack(body)[0]


def body_probe_ack(probe_id: int, seen_admin: tuple[str, int] | None, seen_wg: tuple[str, int] | None) -> bytes:
    return struct.pack(">I", probe_id) + _pack_addr_pair(seen_admin, seen_wg)


# (probe answers carry the same two addresses second after second: packed and parsed once)
@functools.lru_cache(maxsize=4096)
def _pack_addr_pair(first: tuple[str, int] | None, second: tuple[str, int] | None) -> bytes:
    return pack_addr(first) + pack_addr(second)


@functools.lru_cache(maxsize=4096)
def _parse_addr_pair(data: bytes) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    r = Reader(data)
    first = read_addr(r)
    second = read_addr(r)
    r.done()
    return first, second


def parse_probe_ack(body: bytes) -> tuple[int, tuple[str, int] | None, tuple[str, int] | None]:
    if len(body) < 4:
        raise ProtocolError("truncated")
    return (_U32.unpack_from(body)[0], *_parse_addr_pair(body[4:]))


RECORDS_FLOOD = 1  # "hand this on": to a static neighbour, or from a hub (see Gossip._hand_on)


def body_records(raws: list[bytes], flags: int = 0) -> bytes:
    return struct.pack(">BH", flags, len(raws)) + b"".join(raws)


def iter_records(body: bytes, with_length: bool = False):
    """Yield (identity, version, kind, offset[, length]) for each record; full parsing is the
    caller's choice."""
    r = Reader(body)
    r.u8()  # flags
    count = r.u16()
    pos = 3
    for _ in range(count):
        identity, version, kind, total = read_record_header(body, pos)
        yield (identity, version, kind, pos, total) if with_length else (identity, version, kind, pos)
        pos += total
    if pos != len(body):
        raise ProtocolError("trailing_bytes")


def body_sync(count: int, digest_hash: bytes) -> bytes:
    return struct.pack(">I", count) + digest_hash


def parse_sync(body: bytes) -> tuple[int, bytes]:
    r = Reader(body)
    count = r.u32()
    h = r.take(16)
    r.done()
    return count, h


#: a DIGEST covers the ids that start with its prefix: ``depth`` nibbles (0: every id), the
#: rest of ``prefix`` zero. It lists that range's entries, or - for a range too large to list -
#: a hash per sixteenth of it (anti-entropy as hashes of ranges: no DIGEST grows with the mesh)
DIGEST_ENTRIES, DIGEST_BUCKETS = 0, 1
DIGEST_FANOUT = 16
DIGEST_HASH_LEN = 16
_DIGEST_HEAD = struct.Struct(">BQB")


@dataclass(frozen=True, slots=True)
class Digest:
    depth: int  # nibbles of the prefix that count
    prefix: int  # the range's ids start with these bits (as a big-endian u64)
    entries: tuple[tuple[bytes, int], ...] | None  # (id8, version) of every id in the range, or
    buckets: tuple[bytes, ...] | None = None  # ... the hash of each sixteenth of it


def body_digest(entries: list[tuple[bytes, int]], depth: int = 0, prefix: int = 0) -> bytes:
    return (_DIGEST_HEAD.pack(depth, prefix, DIGEST_ENTRIES) + struct.pack(">H", len(entries))
            + b"".join(id8 + struct.pack(">Q", v) for id8, v in entries))


def body_digest_buckets(buckets: list[bytes], depth: int, prefix: int) -> bytes:
    return _DIGEST_HEAD.pack(depth, prefix, DIGEST_BUCKETS) + b"".join(buckets)


def parse_digest(body: bytes) -> Digest:
    r = Reader(body)
    depth, prefix, mode = _DIGEST_HEAD.unpack(r.take(_DIGEST_HEAD.size))
    if depth > 2 * ID8_LEN or (depth < 2 * ID8_LEN and prefix & ((1 << (64 - 4 * depth)) - 1)):
        raise ProtocolError("bad_digest_range")
    if mode == DIGEST_BUCKETS:
        if depth >= 2 * ID8_LEN:
            raise ProtocolError("bad_digest_range")
        raw = r.take(DIGEST_FANOUT * DIGEST_HASH_LEN)
        r.done()
        step = DIGEST_HASH_LEN
        return Digest(depth, prefix, None, tuple(raw[i:i + step] for i in range(0, len(raw), step)))
    if mode != DIGEST_ENTRIES:
        raise ProtocolError("bad_digest_mode")
    count = r.u16()
    raw = r.take(count * 16)
    r.done()
    return Digest(depth, prefix, tuple((raw[i:i + 8], struct.unpack_from(">Q", raw, i + 8)[0])
                                       for i in range(0, len(raw), 16)))


def body_request(id8s: list[bytes]) -> bytes:
    return struct.pack(">H", len(id8s)) + b"".join(id8s)


def parse_request(body: bytes) -> list[bytes]:
    r = Reader(body)
    count = r.u16()
    raw = r.take(count * 8)
    r.done()
    return [raw[i:i + 8] for i in range(0, len(raw), 8)]


def body_connect(attempt: int, you_use: tuple[str, int] | None, i_use: tuple[str, int] | None) -> bytes:
    return struct.pack(">I", attempt) + pack_addr(you_use) + pack_addr(i_use)


def parse_connect(body: bytes) -> tuple[int, tuple[str, int] | None, tuple[str, int] | None]:
    r = Reader(body)
    attempt = r.u32()
    you_use = read_addr(r)
    i_use = read_addr(r)
    r.done()
    return attempt, you_use, i_use


def body_connect_ack(attempt: int) -> bytes:
    return struct.pack(">I", attempt)


def parse_connect_ack(body: bytes) -> int:
    r = Reader(body)
    attempt = r.u32()
    r.done()
    return attempt


BODY_PARSERS = {PROBE: parse_probe, PROBE_ACK: parse_probe_ack, SYNC: parse_sync, DIGEST: parse_digest,
                REQUEST: parse_request, CONNECT: parse_connect, CONNECT_ACK: parse_connect_ack,
                RECORDS: lambda body: list(iter_records(body))}


def decode(key: bytes, data: bytes, pairs: PairKeys | None = None):
    """Full decode of a datagram (used by fuzzing and tools): (Inner, parsed body)."""
    inner = open_datagram(key, data, pairs)
    try:
        return inner, BODY_PARSERS[inner.type](inner.body)
    except ProtocolError:
        raise
    except (ValueError, struct.error, IndexError) as e:  # pragma: no cover - defensive
        raise ProtocolError("malformed", type(e).__name__) from None
