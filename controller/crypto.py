"""The admin protocol's cryptography: identities (Ed25519), pair keys (X25519 + BLAKE2b), the
datagram AEAD (XChaCha20-Poly1305 through libsodium) and record signatures. Pure."""

from __future__ import annotations

import hashlib

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_generichash_blake2b_salt_personal,
    crypto_scalarmult,
    crypto_sign,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
    crypto_sign_open,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import BadSignatureError, CryptoError

try:  # libsodium's C functions, called without pynacl's per-call checks (see _aead_seal_lean)
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
    _alloc = _ffi.new_allocator(should_clear_after_alloc=False)  # (C writes every byte we read back)
    LEAN = all(hasattr(_lib, f) for f in ("crypto_aead_xchacha20poly1305_ietf_encrypt",
                                           "crypto_aead_xchacha20poly1305_ietf_decrypt"))
except ImportError:  # pragma: no cover - a pynacl without its private module: the public wrappers
    LEAN = False

NONCE_LEN = 24
TAG_LEN = 16
SIG_LEN = 64
MAC_LEN = 16
ID8_LEN = 8


class ProtocolError(Exception):
    """Anything malformed, forged, or unreadable. ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def derive_admin_key(shared_key: bytes) -> bytes:
    return crypto_generichash_blake2b_salt_personal(b"admin-channel", digest_size=32, key=shared_key,
                                                    person=b"wgnm.admin.v1")


class Identity:
    """An Ed25519 identity from a 32-byte seed (the runtime persists the seed)."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("identity seed must be 32 bytes")
        self.public, self._secret = crypto_sign_seed_keypair(seed)
        self.id8 = self.public[:ID8_LEN]

    def sign(self, message: bytes) -> bytes:
        return crypto_sign(message, self._secret)[:SIG_LEN]

    def dh(self, peer_public: bytes) -> bytes:
        """X25519 between this identity and another (both converted from Ed25519)."""
        return crypto_scalarmult(crypto_sign_ed25519_sk_to_curve25519(self._secret),
                                 crypto_sign_ed25519_pk_to_curve25519(peer_public))


class PairKeys:
    """The MAC keys between one identity and the others it talks to (see the module doc):
    ``BLAKE2b(X25519(a, B), key=admin key, salt-free, person="wgnm.pair.v1")`` over both public
    keys in order, so A and B derive the same key and nobody else can. Derived once per pair (a
    DH costs ~100 us), kept for ``size`` pairs (the oldest derived goes first: a mesh of
    more than ``size`` nodes derives some again). ``memo`` may be shared by cores that trust each
    other (the simulator): the key is a pure function of the two identities and the mesh."""

    def __init__(self, identity: Identity, admin_key: bytes, size: int = 4096, memo: dict | None = None) -> None:
        self.identity = identity
        self.admin_key = admin_key
        self.size = size
        self._keys: dict[bytes, bytes] = {}  # (in the order derived)
        self._memo = memo

    def key(self, peer_public: bytes) -> bytes:
        key = self._keys.get(peer_public)
        if key is not None:
            return key
        mine = self.identity.public
        pair = mine + peer_public if mine < peer_public else peer_public + mine
        key = self._memo.get(pair) if self._memo is not None else None
        if key is None:
            try:
                shared = self.identity.dh(peer_public)
            except Exception:  # nacl raises RuntimeError/ValueError for unusable (low-order) keys
                raise ProtocolError("bad_identity") from None
            key = crypto_generichash_blake2b_salt_personal(shared + pair, digest_size=32, key=self.admin_key,
                                                           person=b"wgnm.pair.v1")
            if self._memo is not None:
                self._memo[pair] = key
        self._keys[peer_public] = key
        if len(self._keys) > self.size:
            del self._keys[next(iter(self._keys))]
        return key


def _aead_seal_lean(message: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    """crypto_aead_xchacha20poly1305_ietf_encrypt. pynacl's wrapper checks every argument's
    type and length at each call (~4 us here, twice the C call); the callers in this module
    pass bytes; their lengths are checked here (C reads exactly 32 and 24 bytes)."""
    if len(key) != 32 or len(nonce) != NONCE_LEN:
        raise ValueError("bad key or nonce length")
    size = len(message) + TAG_LEN
    out = _alloc("unsigned char[]", size)
    _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(out, _ffi.NULL, message, len(message), aad, len(aad),
                                                   _ffi.NULL, nonce, key)
    return _ffi.buffer(out, size)[:]


def _aead_open_lean(ciphertext: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    size = len(ciphertext) - TAG_LEN
    if len(key) != 32 or len(nonce) != NONCE_LEN:
        raise ValueError("bad key or nonce length")
    if size < 0:
        raise CryptoError("short ciphertext")
    out = _alloc("unsigned char[]", size or 1)
    if _lib.crypto_aead_xchacha20poly1305_ietf_decrypt(out, _ffi.NULL, _ffi.NULL, ciphertext, len(ciphertext),
                                                       aad, len(aad), nonce, key) != 0:
        raise CryptoError("decryption failed")
    return _ffi.buffer(out, size)[:]


if LEAN:
    aead_seal, aead_open = _aead_seal_lean, _aead_open_lean
else:  # pragma: no cover
    aead_seal = crypto_aead_xchacha20poly1305_ietf_encrypt
    aead_open = crypto_aead_xchacha20poly1305_ietf_decrypt


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        crypto_sign_open(signature + message, public)
        return True
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        return False


def pair_mac(key: bytes, receiver: bytes, inner: bytes) -> bytes:
    return hashlib.blake2b(receiver + inner, key=key, digest_size=MAC_LEN).digest()
