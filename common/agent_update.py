"""Signed updates of the device agent, as device, server and provisioning all read them
(``docs/updates.md``).

An update bundle is one uncompressed POSIX tar, ``resonera-agent-<version>.tar``: ``manifest.json``
first, then every file the manifest lists (``wheels/<name>.whl``: the agent's wheel and the locked
dependencies for the device), and nothing else. The manifest is a document signed with an *update
key* (Ed25519, made and kept by ``resonera-provision update-key``; not the fleet CA and not the
server's desired-state key), whose public half the device pins at provisioning
(``DeviceSettings.update_public_keys``).

The desired state names the bundle a device should run (``AgentUpdateTarget``: version, the tar's
SHA-256 and size, the rollout); the device reports each step of an update as an ``UpdateReport``
(up kind ``update``, kept in the outbox until the broker has it).

Pure logic: bytes and paths in, checked values or ``BundleRejected`` out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from packaging.version import InvalidVersion, Version

from resonera.common.errors import ProtocolError

BUNDLE_FORMAT: Final = 1
PRODUCT: Final = "resonera-agent"
MANIFEST_NAME: Final = "manifest.json"
#: Largest bundle a device takes (the locked wheels for the device are about 60 MB).
MAX_BUNDLE_BYTES: Final = 512 * 1024 * 1024
MAX_MANIFEST_BYTES: Final = 256 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: The steps of an update as the device reports them, in order; ``failed`` (nothing switched:
#: refused or not installable) and ``rolled_back`` (switched, the new agent failed its health check
#: and the previous slot runs again) end one with its reason.
UpdateState = Literal[
    "downloading", "verifying", "installing", "switching", "installed", "failed", "rolled_back"
]
UPDATE_STATES: Final[tuple[str, ...]] = get_args(UpdateState)
ENDED_STATES: Final = frozenset({"installed", "failed", "rolled_back"})


class BundleRejected(ProtocolError):
    """The bundle is not installed; the message says why (and is reported to the server)."""


def parse_version(text: object, what: str = "version") -> Version:
    """A PEP 440 version, or ``BundleRejected`` naming ``what``."""
    if not isinstance(text, str):
        raise BundleRejected(f"{what} is missing or not text")
    try:
        return Version(text)
    except InvalidVersion:
        raise BundleRejected(f"{what} {text!r} is not a PEP 440 version") from None


def is_sha256(text: object) -> bool:
    return isinstance(text, str) and _SHA256.match(text) is not None


@dataclass(frozen=True)
class AgentUpdateTarget:
    """What the signed desired state asks: run ``version``, from the bundle of this SHA-256 and size,
    fetched from ``GET {server_url}/device/updates/{sha256}``."""

    version: str
    sha256: str
    size: int
    rollout: str

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "rollout": self.rollout,
        }

    @classmethod
    def from_desired(cls, content: dict[str, Any]) -> AgentUpdateTarget | None:
        """The desired document's ``agent_update`` (None: no update asked), or ``BundleRejected``."""
        value = content.get("agent_update")
        if value is None:
            return None
        if not isinstance(value, dict):
            raise BundleRejected("agent_update is not an object")
        parse_version(value.get("version"), "agent_update.version")
        sha256, size, rollout = value.get("sha256"), value.get("size"), value.get("rollout")
        if not is_sha256(sha256):
            raise BundleRejected("agent_update.sha256 is not 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_BUNDLE_BYTES:
            raise BundleRejected(f"agent_update.size must be 1..{MAX_BUNDLE_BYTES} bytes")
        if not isinstance(rollout, str) or not rollout:
            raise BundleRejected("agent_update.rollout is missing")
        return cls(str(value["version"]), str(sha256), size, rollout)


@dataclass(frozen=True)
class UpdateReport:
    """One step of an update, as the device sends it (up kind ``update``)."""

    state: UpdateState
    from_version: str
    to_version: str
    rollout: str
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "rollout": self.rollout,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> UpdateReport:
        state = body.get("state")
        if state not in UPDATE_STATES:
            raise ProtocolError(f"update state {state!r} is not one of {', '.join(UPDATE_STATES)}")
        texts = {name: body.get(name) for name in ("from_version", "to_version", "rollout")}
        for name, text in texts.items():
            if not isinstance(text, str) or not text or len(text) > 64:
                raise ProtocolError(f"update {name} must be text of 1..64 characters")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            raise ProtocolError("update reason must be text of at most 500 characters")
        return cls(state, texts["from_version"], texts["to_version"], texts["rollout"], reason)  # type: ignore[arg-type]
