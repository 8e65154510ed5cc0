"""The device's identity on disk: its key, certificate, chain and enrollment facts, installed whole.

Everything lives in ``data_dir/identity/``: ``current.json`` names the version folder in force,
``v-<certificate serial>/``, which holds::

    device.key        the device's P-256 key, made here (0600); it never leaves the device
    device.crt        its certificate (CN = device id), from the server's issuing CA
    chain.pem         the issuing CA's certificate and the fleet root: what the broker is checked against
    enrollment.json   the server's pinned signing key, the broker address, where to renew

``DeviceSettings`` takes the key, the certificate, the chain, the pinned key and the broker address
from there for every setting left unset, so ``resonera-device run`` needs nothing more; that is why
this module stands apart from enrollment and renewal (``enroll.py``, ``renewal.py``), which take the
settings: the settings read an identity, and only enrollment and renewal write one. Every write of
the identity folder is here (``Identity.install``, ``Identity.renewal_key``), synced before the one
rename that puts it in force. (``resonera.common.identity`` has the key and CSR primitives.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from resonera.common.errors import ResoneraError
from resonera.common.identity import (
    IdentityError,
    generate_key,
    load_private_key,
    write_private_key,
)

log = logging.getLogger(__name__)

IDENTITY_DIR: Final = "identity"
#: In the identity folder: names the version folder in force.
POINTER: Final = "current.json"
VERSION_NAME: Final = re.compile(r"v-[0-9a-f]{1,40}")
#: Removed once a new version is in force: the files of the layout before version folders, and
#: the pending key of the renewal just installed.
STALE_FILES: Final = frozenset(
    {"device.key", "device.crt", "chain.pem", "enrollment.json", "renewal.key"}
)


class EnrollError(ResoneraError):
    """Enrollment, bundle installation or renewal failed; nothing on the device was changed."""


@dataclass(frozen=True)
class Identity:
    """Where an enrolled device keeps its identity, and what ``enrollment.json`` says.

    The four files live in a version folder ``folder/v-<certificate serial>/`` that
    ``folder/current.json`` names; installing writes a new version folder completely, then
    replaces ``current.json`` in one ``os.replace``: a crash at any point leaves either the old
    or the new identity in force, never a key of one with the certificate of the other. (Files
    directly in ``folder`` are the layout before versions; they stay readable.)"""

    folder: Path

    @classmethod
    def of(cls, data_dir: Path) -> Identity:
        return cls(data_dir / IDENTITY_DIR)

    @property
    def pointer_path(self) -> Path:
        return self.folder / POINTER

    @property
    def current(self) -> Path:
        """The version folder in force (``folder`` itself without a pointer)."""
        try:
            name = json.loads(self.pointer_path.read_text())["version"]
        except FileNotFoundError:
            return self.folder
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EnrollError(f"{self.pointer_path} cannot be read: {exc}") from None
        if not isinstance(name, str) or not VERSION_NAME.fullmatch(name):
            raise EnrollError(f"{self.pointer_path} names no identity version: {name!r}")
        return self.folder / name

    def pinned(self) -> Identity:
        """This identity's version in force now, as an identity of its own: its paths stay those
        of one key and certificate even if a renewal switches versions meanwhile."""
        current = self.current
        return self if current == self.folder else Identity(current)

    @property
    def pending_key_path(self) -> Path:
        """A renewal's new key until its certificate is installed."""
        return self.folder / "renewal.key"

    @property
    def key_path(self) -> Path:
        return self.current / "device.key"

    @property
    def cert_path(self) -> Path:
        return self.current / "device.crt"

    @property
    def chain_path(self) -> Path:
        return self.current / "chain.pem"

    @property
    def info_path(self) -> Path:
        return self.current / "enrollment.json"

    def exists(self) -> bool:
        return self.info_path.exists()

    def info(self) -> dict[str, Any]:
        try:
            data = json.loads(self.info_path.read_text())
        except (OSError, ValueError) as exc:
            raise EnrollError(f"{self.info_path} cannot be read: {exc}") from None
        if not isinstance(data, dict):
            raise EnrollError(f"{self.info_path} is not a JSON object")
        return data

    def certificate(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise EnrollError(f"{self.cert_path} cannot be read: {exc}") from None

    def install(
        self,
        key: ec.EllipticCurvePrivateKey,
        cert_pem: bytes,
        chain_pem: bytes,
        info: dict[str, Any],
    ) -> None:
        """Write a new version folder in full (each file synced), then switch ``current.json`` to
        it atomically; the versions no longer in force are removed last (a crash before that
        leaves only litter, cleared by the next install)."""
        version = self.folder / f"v-{x509.load_pem_x509_certificate(cert_pem).serial_number:x}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.folder.chmod(0o700)
            if version.exists() and version != self.current:
                shutil.rmtree(version)  # litter of an install that crashed before its switch
            version.mkdir(mode=0o700, exist_ok=True)
            _write(version / "chain.pem", chain_pem)
            _write(version / "device.crt", cert_pem)
            write_private_key(key, version / "device.key")
            _fsync(version / "device.key")
            info_json = json.dumps(info, indent=2, sort_keys=True).encode()
            _write(version / "enrollment.json", info_json)
            _fsync(version)
            _write(self.pointer_path, json.dumps({"version": version.name}).encode())
        except OSError as exc:
            raise EnrollError(f"cannot write the identity into {version}: {exc}") from None
        # From here the new identity is in force: what fails now only leaves litter behind.
        with contextlib.suppress(OSError):
            _fsync(self.folder)
        self._remove_all_but(version)

    def _remove_all_but(self, version: Path) -> None:
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry in (version, self.pointer_path):
                continue
            if entry.is_dir() and VERSION_NAME.fullmatch(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name in STALE_FILES or entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    entry.unlink()

    def renewal_key(self, current: ec.EllipticCurvePrivateKey) -> ec.EllipticCurvePrivateKey:
        """The new key of a renewal from the ``current`` one, kept on disk (``pending_key_path``)
        until installed: if the answer is lost (a crash after the server signed), the retry asks
        with the same key and the server sends the same certificate again instead of refusing a
        superseded one."""
        path = self.pending_key_path
        if path.exists():
            try:
                pending = load_private_key(path)
            except IdentityError as exc:
                log.warning("discarding the unreadable pending renewal key: %s", exc)
            else:
                # the same as the current key: its install finished, but not the cleanup after it
                if pending.public_key() != current.public_key():
                    return pending
        key = generate_key()
        try:
            write_private_key(key, path)
            _fsync(path)
        except OSError as exc:
            raise EnrollError(f"cannot write {path}: {exc}") from None
        return key


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, synced to disk before the rename."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
