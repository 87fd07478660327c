"""Key custody (common.keyfile): the rules both daemons keep their secret keys by."""

import os
import stat

import pytest

from wg_netmanager.common.keyfile import KeyFileError, read_key, secure_dir, write_key


def test_a_key_is_written_atomically_0600_and_read_back(tmp_path):
    d = tmp_path / "state"
    secure_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    write_key(d / "k.key", b"k" * 32)
    assert stat.S_IMODE((d / "k.key").stat().st_mode) == 0o600
    assert read_key(d / "k.key") == b"k" * 32
    assert read_key(d / "absent.key") is None
    assert sorted(p.name for p in d.iterdir()) == ["k.key"]  # no temporary file left


def test_a_planted_link_is_neither_read_nor_written_through(tmp_path):
    d = tmp_path / "state"
    secure_dir(d)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * 32)
    (d / "k.key").symlink_to(target)
    with pytest.raises(KeyFileError, match="symbolic link"):
        read_key(d / "k.key")
    (d / f".k.key.{os.getpid()}.tmp").symlink_to(tmp_path / "victim")
    write_key(d / "k.key", b"n" * 32)  # (the temporary name is unlinked first, then created exclusively)
    assert not (tmp_path / "victim").exists() and target.read_bytes() == b"x" * 32
    assert read_key(d / "k.key") == b"n" * 32


def test_a_linked_or_foreign_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "state").symlink_to(real)
    with pytest.raises(KeyFileError, match="not a directory"):
        secure_dir(tmp_path / "state")
    if os.geteuid() == 0:
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        os.chown(other, 65534, 65534)
        with pytest.raises(KeyFileError, match="belongs to UID 65534"):
            secure_dir(other)


def test_loose_modes_are_tightened_and_bad_files_refused(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    secure_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    k = d / "k.key"
    k.write_bytes(b"k" * 32)
    os.chmod(k, 0o644)
    assert read_key(k) == b"k" * 32 and stat.S_IMODE(k.stat().st_mode) == 0o600
    k.write_bytes(b"short")
    with pytest.raises(KeyFileError, match="corrupt"):
        read_key(k)
    os.unlink(k)
    os.mkfifo(k)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_key(k)
    if os.geteuid() == 0:
        os.unlink(k)
        k.write_bytes(b"k" * 32)
        os.chown(k, 65534, 65534)
        with pytest.raises(KeyFileError, match="belongs to UID 65534"):
            read_key(k)
