"""The device's WireGuard private key: generated and kept by the helper, never sent anywhere."""

from __future__ import annotations

import os
from pathlib import Path

from nacl.bindings import crypto_scalarmult_base


def clamp(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def public_key(private: bytes) -> bytes:
    return crypto_scalarmult_base(private)


def load_or_create(state_dir: Path, ifname: str) -> bytes:
    """Read ``<state_dir>/<ifname>.key`` (32 raw bytes, mode 0600) or create it atomically."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    path = state_dir / f"{ifname}.key"
    try:
        data = path.read_bytes()
        if len(data) == 32:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return clamp(data)
        raise ValueError(f"{path} is corrupt ({len(data)} bytes); move it away to generate a new key")
    except FileNotFoundError:
        pass
    key = clamp(os.urandom(32))
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key
