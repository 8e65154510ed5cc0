"""Health data at rest: AES-256-GCM under a device data key kept apart from the database.

The key is 32 random bytes in a file of its own (``data_dir/keys/data.key`` by default, mode 0600, its
folder 0700), never in the database: a copied ``device.db`` alone reveals no session, event or outbox
payload. Each value is sealed with a fresh 96-bit nonce and bound to its row (the associated data is
``table:primary key``), so a sealed value moved to another row does not open.

A missing key is never silently replaced while sealed data exists: ``DataKeyMissing`` says how many
records cannot be read and what to do. A key that does not match the store (``key_id`` recorded in the
store) is ``DataKeyMismatch``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from resonera.common.errors import ResoneraError

log = logging.getLogger(__name__)

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
#: First byte of every sealed value: the format, so a later one can be told apart.
FORMAT_V1: Final = b"\x01"


class DataKeyError(ResoneraError):
    """The data key cannot be used: missing, unreadable, malformed or not this store's."""


class DataKeyMissing(DataKeyError):
    """Sealed records exist but the key that opens them is gone."""


class DataKeyMismatch(DataKeyError):
    """The key file opens, but it is not the key this store was sealed with."""


class SealedDataCorrupt(ResoneraError):
    """A sealed value does not open with the data key (altered, truncated or moved)."""


class DataKey:
    """An AES-256-GCM key; ``seal``/``open`` one value bound to ``context`` (table and row)."""

    def __init__(self, key: bytes, path: Path | None = None) -> None:
        if len(key) != KEY_BYTES:
            raise DataKeyError(f"the data key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self.path = path
        #: Identifies the key without revealing it; recorded in the store to catch a wrong key.
        self.key_id = hashlib.sha256(b"resonera-data-key:" + key).hexdigest()[:16]

    @classmethod
    def generate(cls, path: Path | None = None) -> DataKey:
        return cls(AESGCM.generate_key(bit_length=KEY_BYTES * 8), path)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return FORMAT_V1 + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != FORMAT_V1:
            raise SealedDataCorrupt(f"sealed value for {context} is malformed")
        nonce = sealed[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], context.encode())
        except InvalidTag:
            raise SealedDataCorrupt(
                f"sealed value for {context} does not open with the data key (altered or moved)"
            ) from None


def read_key_file(path: Path) -> DataKey:
    """The key at ``path``; ``DataKeyError`` when it is unreadable or malformed. A key readable by
    others than its owner is used but logged: fix it with ``chmod 600``."""
    try:
        raw = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except PermissionError:
        raise DataKeyError(f"the data key {path} cannot be read (permission denied)") from None
    except OSError as exc:
        raise DataKeyError(f"the data key {path} cannot be read: {exc.strerror}") from None
    if mode & 0o077:
        log.warning("the data key %s is readable by others (mode %o); chmod 600 it", path, mode)
    return DataKey(raw, path)


def write_key_file(key_bytes: bytes, path: Path) -> None:
    """Create ``path`` (0600, folder 0700) with ``key_bytes``; never overwrites an existing file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
    # the new directory entry must survive a power cut too, or the data sealed under it is lost
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_key_file(path: Path) -> DataKey:
    raw = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    write_key_file(raw, path)
    log.info("created a new device data key at %s", path)
    return DataKey(raw, path)


def missing_key_message(path: Path, sealed_records: int) -> str:
    return (
        f"the data key {path} is missing: the {sealed_records} stored record(s) cannot be read; "
        "restore the key file or re-provision the device"
    )
