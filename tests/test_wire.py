"""The admin protocol's wire format: round trips, and nothing but ProtocolError from any input."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wg_netmanager.controller import crypto, wire
from wg_netmanager.controller.wire import Endpoint, Identity, LinkClaim, NodeInfo, ProtocolError

KEY = crypto.derive_admin_key(bytes(32))
ALICE = Identity(bytes([1]) * 32)


def sealed(mtype, body, identity=ALICE, ts=1000, seq=1, key=KEY):
    return wire.seal(key, bytes(24), identity, mtype, ts, seq, body)


def test_round_trip_every_message_type():
    info = NodeInfo(bytes(32), "10.1.1.1", 51820, 55555, "alice", wire.FLAG_STATIC,
                    (Endpoint(wire.EP_LAN, "192.168.1.10", 51820, 24), Endpoint(wire.EP_REFLEXIVE, "2001:db8::1", 4)),
                    (LinkClaim(b"B" * 8, 12), LinkClaim(b"C" * 8, 65535, 1)))
    assert wire.decode_node_info(wire.encode_node_info(info)) == info
    record = wire.make_record(ALICE, 7, wire.RECORD_NODE, wire.encode_node_info(info))
    bodies = {
        wire.PROBE: (wire.body_probe(9), 9),
        wire.PROBE_ACK: (wire.body_probe_ack(9, ("203.0.113.1", 1), None), (9, ("203.0.113.1", 1), None)),
        wire.SYNC: (wire.body_sync(3, b"h" * 16), (3, b"h" * 16)),
        wire.DIGEST: (wire.body_digest([(b"a" * 8, 5)]), wire.Digest(0, 0, ((b"a" * 8, 5),))),
        wire.REQUEST: (wire.body_request([b"a" * 8]), [b"a" * 8]),
        wire.CONNECT: (wire.body_connect(2, ("192.168.1.2", 51820), None), (2, ("192.168.1.2", 51820), None)),
        wire.CONNECT_ACK: (wire.body_connect_ack(2), 2),
        wire.RECORDS: (wire.body_records([record.raw]), [(ALICE.public, 7, 0, 3)]),
    }
    for mtype, (body, expected) in bodies.items():
        inner, parsed = wire.decode(KEY, sealed(mtype, body))
        assert (inner.type, inner.sender, inner.timestamp_ms, inner.seq) == (mtype, ALICE.public, 1000, 1)
        assert parsed == expected
    parsed = wire.parse_record(record.raw, 0, wire.RecordCache())
    assert (parsed.identity, parsed.version, parsed.payload) == (ALICE.public, 7, record.payload)


def test_wrong_key_unknown_version_and_forgeries_are_refused():
    data = sealed(wire.PROBE, wire.body_probe(1))
    with pytest.raises(ProtocolError, match="decrypt_failed"):
        wire.open_datagram(crypto.derive_admin_key(bytes([9]) * 32), data)
    with pytest.raises(ProtocolError, match="unknown_version"):
        wire.open_datagram(KEY, data[:3] + b"\x02" + data[4:])
    with pytest.raises(ProtocolError, match="bad_magic"):
        wire.open_datagram(KEY, b"XYZ" + data[3:])
    # a member re-signing someone else's datagram: the signature does not match the sender
    forged = wire.seal(KEY, bytes(24), Identity(bytes([2]) * 32), wire.PROBE, 1, 1, wire.body_probe(1))
    inner = wire.open_datagram(KEY, forged)
    assert inner.sender != ALICE.public


def test_pair_mac_authenticates_only_between_the_two_ends():
    bob, mallory = Identity(bytes([2]) * 32), Identity(bytes([3]) * 32)
    alice_pairs, bob_pairs = crypto.PairKeys(ALICE, KEY), crypto.PairKeys(bob, KEY)
    mallory_pairs = crypto.PairKeys(mallory, KEY)
    assert alice_pairs.key(bob.public) == bob_pairs.key(ALICE.public)  # both ends derive the same key
    assert alice_pairs.key(bob.public) != mallory_pairs.key(bob.public)
    pair = (bob.public, alice_pairs.key(bob.public))
    data = wire.seal(KEY, bytes(24), ALICE, wire.PROBE, 5, 6, wire.body_probe(7), pair)
    assert len(data) == len(sealed(wire.PROBE, wire.body_probe(7))) - wire.SIG_LEN + wire.MAC_LEN
    inner = wire.open_datagram(KEY, data, bob_pairs)
    assert (inner.type, inner.sender, inner.timestamp_ms, inner.seq, inner.body) == \
        (wire.PROBE, ALICE.public, 5, 6, wire.body_probe(7))
    # meant for bob: nobody else can check it (mallory's key with alice differs), and without pair keys neither
    with pytest.raises(ProtocolError, match="bad_mac"):
        wire.open_datagram(KEY, data, mallory_pairs)
    with pytest.raises(ProtocolError, match="mac_unverifiable"):
        wire.open_datagram(KEY, data)
    # a member holding the shared key cannot speak as alice: it has no key for the pair (alice, bob)
    forged = wire.seal(KEY, bytes(24), ALICE, wire.PROBE, 5, 7, wire.body_probe(7),
                       (bob.public, mallory_pairs.key(bob.public)))
    with pytest.raises(ProtocolError, match="bad_mac"):
        wire.open_datagram(KEY, forged, bob_pairs)
    # ...nor bounce bob's own datagram back to him as if alice sent it
    own = wire.seal(KEY, bytes(24), bob, wire.PROBE, 5, 8, b"", (ALICE.public, bob_pairs.key(ALICE.public)))
    with pytest.raises(ProtocolError, match="own_identity"):
        wire.open_datagram(KEY, own, bob_pairs)
    # an unusable identity (a low-order point) is a protocol error, not a crash
    with pytest.raises(ProtocolError, match="bad_identity"):
        bob_pairs.key(bytes(32))


def test_tampered_record_signature_is_refused():
    rec = wire.make_record(ALICE, 1, wire.RECORD_NODE, b"payload")
    bad = bytearray(rec.raw)
    bad[-70] ^= 1  # inside the payload
    with pytest.raises(ProtocolError, match="bad_record_signature"):
        wire.parse_record(bytes(bad), 0, wire.RecordCache())


def test_a_cached_signature_does_not_vouch_for_another_message():
    cache = wire.RecordCache()
    rec = wire.make_record(ALICE, 1, wire.RECORD_NODE, b"payload")
    assert wire.parse_record(rec.raw, 0, cache).payload == b"payload"
    forged = bytearray(rec.raw)
    forged[-65] ^= 1  # last payload byte, signature unchanged
    with pytest.raises(ProtocolError, match="bad_record_signature"):
        wire.parse_record(bytes(forged), 0, cache)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_protocol_error(data):
    try:
        wire.decode(KEY, data)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(wire.BODY_PARSERS)), st.binary(max_size=300))
def test_arbitrary_bodies_in_valid_envelopes_raise_only_protocol_error(mtype, body):
    try:
        wire.decode(KEY, sealed(mtype, body))
    except ProtocolError:
        pass


@pytest.mark.parametrize("decode", [wire.decode_node_info, wire.decode_link_page])
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_record_payloads_raise_only_protocol_error(decode, payload):
    try:
        decode(payload)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(0, 255))
def test_mutated_datagrams_raise_only_protocol_error(pos, value):
    data = bytearray(sealed(wire.RECORDS, wire.body_records([wire.make_record(ALICE, 1, 0, os.urandom(20)).raw])))
    data[pos % len(data)] = value
    try:
        wire.decode(KEY, bytes(data))
    except ProtocolError:
        pass


def test_lean_crypto_calls_equal_pynacl_wrappers():
    """wire calls libsodium's AEAD without pynacl's per-call wrappers: the same bytes out, the
    same refusals (tampered, short, wrong key), checked lengths."""
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt as encrypt

    assert crypto.LEAN
    key, nonce = os.urandom(32), os.urandom(24)
    for message in (b"", b"x", os.urandom(1500)):
        sealed_bytes = crypto.aead_seal(message, wire.HEADER, nonce, key)
        assert sealed_bytes == encrypt(message, wire.HEADER, nonce, key)
        assert crypto.aead_open(sealed_bytes, wire.HEADER, nonce, key) == message
        for bad in (sealed_bytes[:-1] + bytes([sealed_bytes[-1] ^ 1]), sealed_bytes[:15]):
            with pytest.raises(wire.CryptoError):
                crypto.aead_open(bad, wire.HEADER, nonce, key)
        with pytest.raises(wire.CryptoError):
            crypto.aead_open(sealed_bytes, wire.HEADER, nonce, os.urandom(32))
    with pytest.raises(ValueError):
        crypto.aead_seal(b"m", wire.HEADER, nonce[:23], key)
    with pytest.raises(ValueError):
        crypto.aead_open(bytes(40), wire.HEADER, nonce, key[:31])
