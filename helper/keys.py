"""The device's WireGuard private key: generated and kept by the helper, never sent anywhere."""

from __future__ import annotations

import os
from pathlib import Path

from nacl.bindings import crypto_scalarmult_base

from wg_netmanager.common import keyfile


def clamp(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def public_key(private: bytes) -> bytes:
    return crypto_scalarmult_base(private)


def load_or_create(state_dir: Path, ifname: str) -> bytes:
    """Read ``<state_dir>/<ifname>.key`` (32 raw bytes) or create it (common.keyfile's rules:
    no links, ours only, 0600, atomic and durable)."""
    keyfile.secure_dir(state_dir)
    path = state_dir / f"{ifname}.key"
    data = keyfile.read_key(path)
    if data is not None:
        return clamp(data)
    key = clamp(os.urandom(32))
    keyfile.write_key(path, key)
    return key
