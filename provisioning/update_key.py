"""The update key: the Ed25519 key that signs agent update bundles (``common/agent_update.py``), kept
like the fleet CA's key, in a folder of its own, encrypted with a passphrase.

Layout of an update key folder::

    keys.json           every key: id, public half (base64 raw Ed25519), role, created_at
    update-<id>.key     each private key, PKCS#8 PEM encrypted with the passphrase (0600)

Roles: ``signing`` (signs the bundles built now; exactly one), ``next`` (made by ``rotate``: carried
in the bundles' ``update_keys`` beside the signing key, so devices pin it before it signs anything),
``retired`` (the signing key before ``promote``; kept, no longer published).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resonera.common.agent_update import update_key_to_b64
from resonera.common.clock import Clock, utc_now
from resonera.common.errors import ConfigError
from resonera.common.files import write_atomic
from resonera.common.signing import ed25519_key_id
from resonera.server.fleet_ca import MIN_PASSPHRASE

KEYS_FILE: Final = "keys.json"
Role = Literal["signing", "next", "retired"]


class UpdateKeyError(ConfigError):
    """The update key folder is missing, locked by another passphrase, or in no state for the ask."""


@dataclass(frozen=True)
class UpdateKeyInfo:
    key_id: str
    public_key: str
    role: Role
    created_at: str

    @property
    def file_name(self) -> str:
        return f"update-{self.key_id}.key"

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "public_key": self.public_key,
            "role": self.role,
            "created_at": self.created_at,
        }


def _write_synced(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``path`` whole, mode 0600; ``exclusive``: never over a file already there."""
    if exclusive and path.exists():
        raise UpdateKeyError(f"{path} exists already; refusing to overwrite it")
    write_atomic(path, data)


class UpdateKeys:
    """An update key folder (``UpdateKeys.create`` makes one)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        path = directory / KEYS_FILE
        try:
            doc = json.loads(path.read_text())
            self.keys = tuple(
                UpdateKeyInfo(k["key_id"], k["public_key"], k["role"], k["created_at"])
                for k in doc["keys"]
            )
        except FileNotFoundError:
            raise UpdateKeyError(
                f"no update key in {directory} (make one with: resonera-provision update-key "
                "create)"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise UpdateKeyError(f"{path} is not an update key list") from None
        if any(k.role not in ("signing", "next", "retired") for k in self.keys):
            raise UpdateKeyError(f"{path} names a key role other than signing, next, retired")
        if [k.role for k in self.keys].count("signing") != 1:
            raise UpdateKeyError(f"{path} must name exactly one signing key")

    @classmethod
    def create(cls, directory: Path, passphrase: bytes, *, clock: Clock = utc_now) -> UpdateKeys:
        if (directory / KEYS_FILE).exists():
            raise UpdateKeyError(f"{directory} holds an update key already; refusing to replace it")
        _check_passphrase(passphrase)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = _new_key(directory, passphrase, "signing", clock)
        _write_keys(directory, (info,))
        return cls(directory)

    @property
    def signing(self) -> UpdateKeyInfo:
        return next(k for k in self.keys if k.role == "signing")

    @property
    def next_key(self) -> UpdateKeyInfo | None:
        return next((k for k in self.keys if k.role == "next"), None)

    def published(self) -> list[str]:
        """The public keys devices should pin now (base64 raw): the signing key, and the next one
        during a rotation. Bundles carry them as ``update_keys``; factory bundles as
        ``update_public_keys``."""
        return [k.public_key for k in self.keys if k.role in ("signing", "next")]

    def unlock(self, passphrase: bytes, info: UpdateKeyInfo | None = None) -> Ed25519PrivateKey:
        """The private key of ``info`` (default: the signing key)."""
        info = info or self.signing
        path = self.directory / info.file_name
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), passphrase or None)
        except FileNotFoundError:
            raise UpdateKeyError(f"update key {info.key_id}'s file {path} is missing") from None
        except (TypeError, ValueError):
            raise UpdateKeyError(
                f"cannot unlock update key {info.key_id} ({path}): wrong passphrase?"
            ) from None
        if not isinstance(key, Ed25519PrivateKey) or ed25519_key_id(key.public_key()) != (
            info.key_id
        ):
            raise UpdateKeyError(f"{path} is not the Ed25519 key {info.key_id} of {KEYS_FILE}")
        return key

    def rotate(self, passphrase: bytes, *, clock: Clock = utc_now) -> UpdateKeyInfo:
        """Make the next key; the signing key goes on signing until ``promote``."""
        if self.next_key is not None:
            raise UpdateKeyError(
                f"a rotation is under way already (next key {self.next_key.key_id}): promote it "
                "first (resonera-provision update-key promote)"
            )
        self.unlock(passphrase)  # the same passphrase for both: check it before making anything
        info = _new_key(self.directory, passphrase, "next", clock)
        self.keys = (*self.keys, info)
        _write_keys(self.directory, self.keys)
        return info

    def promote(self, passphrase: bytes) -> UpdateKeyInfo:
        """The next key signs from now on; the old signing key is retired (kept, not published)."""
        upcoming = self.next_key
        if upcoming is None:
            raise UpdateKeyError("no rotation is under way: rotate first (update-key rotate)")
        self.unlock(passphrase, upcoming)
        roles: dict[str, Role] = {"signing": "retired", "next": "signing"}
        self.keys = tuple(
            UpdateKeyInfo(k.key_id, k.public_key, roles.get(k.role, k.role), k.created_at)
            for k in self.keys
        )
        _write_keys(self.directory, self.keys)
        return self.signing


def _check_passphrase(passphrase: bytes) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise UpdateKeyError(f"the passphrase must have at least {MIN_PASSPHRASE} characters")


def _new_key(directory: Path, passphrase: bytes, role: Role, clock: Clock) -> UpdateKeyInfo:
    key = Ed25519PrivateKey.generate()
    created: datetime = clock()
    info = UpdateKeyInfo(
        ed25519_key_id(key.public_key()),
        update_key_to_b64(key.public_key()),
        role,
        created.isoformat(timespec="seconds"),
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    _write_synced(directory / info.file_name, pem, exclusive=True)
    return info


def _write_keys(directory: Path, keys: tuple[UpdateKeyInfo, ...]) -> None:
    doc = {"format": 1, "keys": [k.to_json() for k in keys]}
    _write_synced(directory / KEYS_FILE, json.dumps(doc, indent=2).encode() + b"\n")
