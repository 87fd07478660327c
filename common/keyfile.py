"""Secret key files (the node's identity seed, the WireGuard private key): one rule for both
daemons. A key file is a regular file owned by the reading user, not a symbolic link, in a
directory of its own (0700, owned by that user, not a link either); a mode that lets others
read it is tightened (and said); writes are atomic and durable (a new file, fsync, rename,
fsync of the directory), never through a link someone planted."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

KEY_LEN = 32


class KeyFileError(Exception):
    """A key file or its directory that must not be used; the message says why and what to do."""


def secure_dir(path: Path) -> None:
    """Create the directory (0700) or check it: a real directory, ours, nobody else's to enter."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise KeyFileError(f"{path} exists and is not a directory") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"{path} is not a directory (a symbolic link?); keys are kept only in a real one")
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{path} belongs to UID {st.st_uid}, not to this daemon's UID {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
        log.warning("key directory was open to others; now 0700", extra={"path": str(path)})


def read_key(path: Path) -> bytes | None:
    """The key, or None if there is none yet. Raises KeyFileError for a link, a file that is
    not ours or not a regular file, or one of the wrong length."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if os.path.islink(path):
            raise KeyFileError(f"{path} is a symbolic link; a key file must be a regular file") from None
        raise KeyFileError(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise KeyFileError(f"{path} belongs to UID {st.st_uid}, not to this daemon's UID {os.geteuid()}")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
            log.warning("key file was readable by others; now 0600 (consider the key exposed)",
                        extra={"path": str(path)})
        data = os.read(fd, KEY_LEN + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_LEN:
        raise KeyFileError(f"{path} is corrupt ({len(data)} bytes, not {KEY_LEN}); move it away to make a new key")
    return data


def write_key(path: Path, key: bytes) -> None:
    """Atomically and durably: a fresh 0600 file beside it (never followed through a link),
    fsync, rename over, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
