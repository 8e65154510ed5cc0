"""Small hand-made agent bundles for the server's tests (docs/updates.md "The bundle"): a tar with a
manifest signed by an Ed25519 update key made in the test, and two tiny files named as wheels (the
agent's and a dependency's; their content is not a wheel's: the server never installs them). The real
builder (``tests/updates_support.py``, real wheels, ~30 s) is for the end-to-end tests; the server
checks the same things of both.

``make_bundle`` can also make the broken ones a server must refuse: signed by another key, a
manifest changed after signing, a member whose bytes are not the manifest's, one more or one less
member than listed, a link.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resonera.common.agent_update import BUNDLE_FORMAT, MANIFEST_NAME, PRODUCT
from resonera.common.signing import sign_document_ed25519

Broken = Literal["", "tampered", "corrupt", "extra", "missing", "link", "not-first"]


@dataclass(frozen=True)
class UpdateKey:
    private: Ed25519PrivateKey

    @classmethod
    def new(cls) -> UpdateKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_b64(self) -> str:
        """What ``update_public_keys`` holds: base64 of the raw public key."""
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()


def _files(version: str) -> dict[str, bytes]:
    return {
        f"wheels/resonera-{version}-py3-none-any.whl": f"agent {version}".encode() * 50,
        "wheels/tiny_dep-1.0-py3-none-any.whl": b"a dependency",
    }


def manifest_for(
    version: str, files: dict[str, bytes], min_previous_version: str
) -> dict[str, Any]:
    return {
        "format": BUNDLE_FORMAT,
        "product": PRODUCT,
        "version": version,
        "min_previous_version": min_previous_version,
        "python": "cp311",
        "platform": "linux_x86_64",
        "created_at": "2026-12-07T09:00:00Z",
        "files": [
            {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for path, data in files.items()
        ],
    }


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def bundle_bytes(
    key: UpdateKey,
    version: str,
    *,
    min_previous_version: str = "0.1.0",
    broken: Broken = "",
) -> bytes:
    """A bundle of ``version`` signed with ``key`` (or broken as ``broken`` says)."""
    files = _files(version)
    manifest = sign_document_ed25519(
        key.private, manifest_for(version, files, min_previous_version)
    )
    if broken == "tampered":
        manifest["min_previous_version"] = "0.0.1"  # after signing
    if broken == "corrupt":
        first = next(iter(files))
        files[first] = files[first][:-1] + b"X"
    if broken == "extra":
        files["wheels/smuggled-1.0-py3-none-any.whl"] = b"not listed"
    if broken == "missing":
        files.pop(next(iter(files)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        if broken != "not-first":
            _add(tar, MANIFEST_NAME, manifest_bytes)
        for path, data in files.items():
            _add(tar, path, data)
        if broken == "not-first":
            _add(tar, MANIFEST_NAME, manifest_bytes)
        if broken == "link":
            link = tarfile.TarInfo("wheels/link.whl")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
    return buffer.getvalue()


def write_bundle(folder: Path, key: UpdateKey, version: str, **kwargs: Any) -> Path:
    path = folder / f"resonera-agent-{version}.tar"
    path.write_bytes(bundle_bytes(key, version, **kwargs))
    return path
