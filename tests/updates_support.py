"""Real agent update bundles for tests: built from this tree with a bumped version, the agent's wheel
and every locked wheel of the device, signed by one update key made for the test session.

``build_bundle(tmp, version)`` builds once per version and session (about 30 s the first time, pip's
cache helps after) and gives each caller its own copy in ``tmp``, so a test may change or corrupt it.
``update_key()`` is the session's key: pin ``.public_key`` (``.pinned()``), sign with ``.private``.
``bundle_target(path, version)`` is the desired state's target for a bundle as it is now.

Building reaches PyPI over TLS (pip checks the lock's index pages, even with its cache): a test
that builds must be ``@pytest.mark.real_clock`` (certificates are checked against the wall clock).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from resonera.common.agent_update import AgentUpdateTarget, file_digest
from resonera.provisioning.update_build import build_update
from resonera.provisioning.update_key import UpdateKeys

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = b"update key passphrase for tests"
_lock = threading.Lock()


@cache
def _session_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="resonera-update-bundles-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@dataclass(frozen=True)
class SessionUpdateKey:
    directory: Path
    passphrase: bytes
    private: Ed25519PrivateKey
    public_key: str
    key_id: str

    def pinned(self) -> list[Ed25519PublicKey]:
        return [self.private.public_key()]


@cache
def update_key() -> SessionUpdateKey:
    """The session's update key folder (made with ``UpdateKeys.create``, as the CLI makes it)."""
    directory = _session_dir() / "update-key"
    keys = UpdateKeys.create(directory, PASSPHRASE)
    signing = keys.signing
    return SessionUpdateKey(
        directory, PASSPHRASE, keys.unlock(PASSPHRASE), signing.public_key, signing.key_id
    )


_built: dict[tuple[str, str | None], Path] = {}


def build_bundle(tmp: Path, version: str, *, min_previous: str | None = None) -> Path:
    """A copy in ``tmp`` of the bundle of this tree at ``version`` (built on first use)."""
    with _lock:
        built = _built.get((version, min_previous))
        if built is None:
            out = _session_dir() / f"{version}-{min_previous or 'any'}"
            built = build_update(
                REPO,
                out,
                update_key().private,
                update_keys=[update_key().public_key],
                version=version,
                min_previous=min_previous,
            ).path
            _built[(version, min_previous)] = built
    tmp.mkdir(parents=True, exist_ok=True)
    copy = tmp / built.name
    shutil.copyfile(built, copy)
    return copy


def bundle_target(bundle: Path, version: str, rollout: str = "rollout-test") -> AgentUpdateTarget:
    """The desired state's target for ``bundle`` (its SHA-256 and size as they are now)."""
    size, sha256 = file_digest(bundle)
    return AgentUpdateTarget(version=version, sha256=sha256, size=size, rollout=rollout)
