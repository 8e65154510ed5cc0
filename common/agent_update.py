"""Signed updates of the device agent, as device, server and provisioning all read them
(``docs/updates.md``).

An update bundle is one uncompressed POSIX tar, ``resonera-agent-<version>.tar``: ``manifest.json``
first, then every file the manifest lists (``wheels/<name>.whl``: the agent's wheel and the locked
dependencies for the device; optionally ``firmware/<name>``, the safety MCU's signed firmware image,
which the manifest's ``mcu_firmware`` names), and nothing else. The manifest is a document
signed with an *update key* (Ed25519, made and kept by ``resonera-provision update-key``; not the
fleet CA and not the server's desired-state key), whose public half the device pins at
provisioning (``DeviceSettings.update_public_keys``).

The desired state names the bundle a device should run (``AgentUpdateTarget``: version, the tar's
SHA-256 and size, the rollout); the device reports each step of an update as an ``UpdateReport``
(up kind ``update``, kept in the outbox until the broker has it), the agent's or the MCU's
firmware's (``component``).

Pure logic: bytes and paths in, checked values or ``BundleRejected`` out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Any, Final, Literal, get_args

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from packaging import tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version
from pydantic import AfterValidator

from resonera.common.errors import ProtocolError
from resonera.common.files import fsync_dir
from resonera.common.signing import (
    SignatureError,
    ed25519_key_id,
    sign_document_ed25519,
    verify_document_ed25519,
)

BUNDLE_FORMAT: Final = 1
PRODUCT: Final = "resonera-agent"
MANIFEST_NAME: Final = "manifest.json"
#: Largest bundle a device takes (the locked wheels for the device are about 60 MB).
MAX_BUNDLE_BYTES: Final = 512 * 1024 * 1024
MAX_MANIFEST_BYTES: Final = 256 * 1024
#: The distribution whose wheel a bundle must hold, at the manifest's version.
AGENT_DISTRIBUTION: Final = "resonera"
WHEELS_DIR: Final = "wheels/"
#: Where a bundle carries the safety MCU's signed firmware image (at most one, ``mcu_firmware``).
FIRMWARE_DIR: Final = "firmware/"
#: Longest MCU firmware version (the serial link's text fields: ``serial_link.MAX_TEXT``).
FIRMWARE_VERSION_MAX: Final = 32
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_WHEEL_PATH = re.compile(r"^wheels/[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\.whl$")
_FIRMWARE_PATH = re.compile(r"^firmware/[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
_TAG = re.compile(r"^[a-z0-9_]{1,64}$")
_CHUNK: Final = 1024 * 1024

#: The steps of an update as the device reports them, in order; ``failed`` (nothing switched:
#: refused or not installable) and ``rolled_back`` (switched, the new agent failed its health check
#: and the previous slot runs again) end one with its reason.
UpdateState = Literal[
    "downloading", "verifying", "installing", "switching", "installed", "failed", "rolled_back"
]
UPDATE_STATES: Final[tuple[str, ...]] = get_args(UpdateState)
ENDED_STATES: Final = frozenset({"installed", "failed", "rolled_back"})
#: What an update report is about: the device's agent, or its safety MCU's firmware (whose
#: ``from_version``/``to_version`` are firmware versions, not the agent's).
UpdateComponent = Literal["agent", "mcu"]
COMPONENTS: Final[tuple[str, ...]] = get_args(UpdateComponent)


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
    return isinstance(text, str) and _SHA256.fullmatch(text) is not None


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
    component: UpdateComponent = "agent"

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "rollout": self.rollout,
            "reason": self.reason,
            "component": self.component,
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
        # absent: an agent from before the MCU's firmware travelled in bundles
        component = body.get("component", "agent")
        if component not in COMPONENTS:
            raise ProtocolError(
                f"update component {component!r} is not one of {', '.join(COMPONENTS)}"
            )
        return cls(
            state,
            str(texts["from_version"]),
            str(texts["to_version"]),
            str(texts["rollout"]),
            reason,
            component,
        )


def bundle_file_name(version: str) -> str:
    return f"resonera-agent-{version}.tar"


def python_tag() -> str:
    """The running interpreter's Python tag, as a bundle's manifest names it (``cp311``)."""
    return f"{tags.interpreter_name()}{tags.interpreter_version()}"


def platform_tag() -> str:
    """The running machine's own platform tag (``linux_x86_64``): the one a wheel built here carries,
    not the ``manylinux`` tags a downloaded wheel may carry too."""
    generic = [t for t in tags.platform_tags() if not t.startswith(("manylinux", "musllinux"))]
    return generic[0] if generic else next(iter(tags.platform_tags()))


def update_key_from_b64(text: str) -> Ed25519PublicKey:
    """A pinned update key from its base64 raw form, or ``BundleRejected``."""
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise BundleRejected(
            f"update key {text[:60]!r} is not base64 of a raw Ed25519 public key"
        ) from None


def checked_update_keys(keys: list[str]) -> list[str]:
    """``keys`` when each is an update key's base64 raw form; ``ValueError`` naming one that is
    not (what a settings field of them checks: ``UpdatePublicKeys``)."""
    for key in keys:
        try:
            update_key_from_b64(key)
        except BundleRejected as exc:
            raise ValueError(str(exc)) from None
    return keys


#: A settings field of pinned update keys (device) or accepted ones (server), each checked.
UpdatePublicKeys = Annotated[list[str], AfterValidator(checked_update_keys)]


def update_key_to_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class ManifestFile:
    """One file of a bundle: ``wheels/<wheel file name>`` (or ``firmware/<name>``), its SHA-256
    and size."""

    path: str
    sha256: str
    size: int

    @property
    def name(self) -> str:
        """The file's name without its folder (what ``extract_wheels`` writes)."""
        return self.path.rpartition("/")[2]

    @property
    def is_wheel(self) -> bool:
        return self.path.startswith(WHEELS_DIR)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def of(cls, file: Path, folder: str = WHEELS_DIR) -> ManifestFile:
        """The entry for a file on disk (a wheel; the firmware with ``FIRMWARE_DIR``)."""
        size, sha256 = file_digest(file)
        return cls(folder + file.name, sha256, size)


@dataclass(frozen=True)
class McuFirmware:
    """The manifest's ``mcu_firmware``: the bundle's member holding the safety MCU's signed image
    (``firmware/<name>``, also listed in ``files``) and the version its header says."""

    path: str
    version: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "version": self.version}

    @classmethod
    def from_json(cls, value: object) -> McuFirmware:
        if not isinstance(value, dict) or set(value) != {"path", "version"}:
            raise BundleRejected("mcu_firmware must have exactly path and version")
        path, version = value["path"], value["version"]
        if not isinstance(path, str) or not _FIRMWARE_PATH.fullmatch(path):
            raise BundleRejected(f"mcu_firmware path {str(path)[:80]!r} is not firmware/<name>")
        if (
            not isinstance(version, str)
            or not version
            or len(version.encode()) > FIRMWARE_VERSION_MAX
        ):
            raise BundleRejected(
                f"mcu_firmware version must be text of 1..{FIRMWARE_VERSION_MAX} bytes"
            )
        return cls(path, version)


@dataclass(frozen=True, kw_only=True)
class UpdateManifest:
    """What ``manifest.json`` says (without its signature), checked as a device reads it."""

    version: str
    min_previous_version: str
    python: str
    platform: str
    created_at: datetime
    files: tuple[ManifestFile, ...]
    #: The keys a device pins once this bundle runs healthy (empty: it keeps the ones it has).
    update_keys: tuple[str, ...] = ()
    #: The safety MCU's firmware the bundle carries (None: none; the field is then absent).
    mcu_firmware: McuFirmware | None = None
    format: int = BUNDLE_FORMAT
    product: str = PRODUCT

    def to_json(self) -> dict[str, Any]:
        firmware = (
            {} if self.mcu_firmware is None else {"mcu_firmware": self.mcu_firmware.to_json()}
        )
        return {
            "format": self.format,
            "product": self.product,
            "version": self.version,
            "min_previous_version": self.min_previous_version,
            "python": self.python,
            "platform": self.platform,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "files": [f.to_json() for f in self.files],
            "update_keys": list(self.update_keys),
            **firmware,
        }

    @property
    def size(self) -> int:
        """The files' bytes together."""
        return sum(f.size for f in self.files)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> UpdateManifest:
        """The manifest in ``doc`` (without ``sig``), or ``BundleRejected`` naming what is wrong."""
        unknown = sorted(set(doc) - _MANIFEST_FIELDS)
        if unknown:
            raise BundleRejected(f"manifest has unknown fields: {', '.join(unknown)}")
        if type(doc.get("format")) is not int or doc.get("format") != BUNDLE_FORMAT:
            raise BundleRejected(
                f"bundle format {doc.get('format')!r} is not the one this agent reads "
                f"({BUNDLE_FORMAT})"
            )
        if doc.get("product") != PRODUCT:
            raise BundleRejected(f"the bundle is for {doc.get('product')!r}, not {PRODUCT!r}")
        version = parse_version(doc.get("version"), "manifest version")
        min_previous = parse_version(doc.get("min_previous_version"), "min_previous_version")
        if min_previous > version:
            raise BundleRejected(
                f"min_previous_version {min_previous} is above the bundle's version {version}"
            )
        python, platform = doc.get("python"), doc.get("platform")
        for name, tag in (("python", python), ("platform", platform)):
            if not isinstance(tag, str) or not _TAG.fullmatch(tag):
                raise BundleRejected(f"manifest {name} tag {tag!r} is not a tag like cp311")
        created = doc.get("created_at")
        try:
            created_at = datetime.fromisoformat(str(created))
        except ValueError:
            created_at = None
        if not isinstance(created, str) or created_at is None or created_at.tzinfo is None:
            raise BundleRejected(f"created_at {created!r} is not an ISO 8601 time with its zone")
        firmware = (
            McuFirmware.from_json(doc["mcu_firmware"])
            if doc.get("mcu_firmware") is not None
            else None
        )
        files = _files_from_json(
            doc.get("files"), version, firmware.path if firmware is not None else None
        )
        keys = doc.get("update_keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise BundleRejected("update_keys must be a list of base64 Ed25519 keys")
        for key in keys:
            update_key_from_b64(key)
        return cls(
            format=BUNDLE_FORMAT,
            product=PRODUCT,
            version=str(doc["version"]),
            min_previous_version=str(doc["min_previous_version"]),
            python=str(python),
            platform=str(platform),
            created_at=created_at,
            files=files,
            update_keys=tuple(keys),
            mcu_firmware=firmware,
        )


_MANIFEST_FIELDS: Final = frozenset(
    {
        "format",
        "product",
        "version",
        "min_previous_version",
        "python",
        "platform",
        "created_at",
        "files",
        "update_keys",
        "mcu_firmware",
    }
)


def _files_from_json(
    value: object, version: Version, firmware_path: str | None
) -> tuple[ManifestFile, ...]:
    """The listed files: wheels, and the one firmware member ``mcu_firmware`` names (if any)."""
    if not isinstance(value, list) or not value:
        raise BundleRejected("the manifest lists no files")
    files: list[ManifestFile] = []
    seen: set[str] = set()
    agent_wheels = 0
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"path", "sha256", "size"}:
            raise BundleRejected("each file of the manifest must have exactly path, sha256, size")
        path, sha256, size = entry["path"], entry["sha256"], entry["size"]
        firmware = firmware_path is not None and path == firmware_path
        if not firmware and isinstance(path, str) and path.startswith(FIRMWARE_DIR):
            raise BundleRejected(
                f"file {path[:80]!r} is not the firmware the manifest's mcu_firmware names"
            )
        if not firmware and (not isinstance(path, str) or not _WHEEL_PATH.fullmatch(path)):
            raise BundleRejected(
                f"file {str(path)[:80]!r} is not wheels/<name>.whl (or the mcu_firmware named)"
            )
        if path in seen:
            raise BundleRejected(f"file {path!r} is listed twice")
        seen.add(path)
        if not is_sha256(sha256):
            raise BundleRejected(f"file {path!r}: sha256 is not 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BUNDLE_BYTES:
            raise BundleRejected(f"file {path!r}: size must be 0..{MAX_BUNDLE_BYTES} bytes")
        if firmware:
            files.append(ManifestFile(path, str(sha256), size))
            continue
        try:
            name, wheel_version, _build, _tags = parse_wheel_filename(path.removeprefix(WHEELS_DIR))
        except (InvalidWheelFilename, InvalidVersion) as exc:
            raise BundleRejected(f"file {path!r} is not a wheel's name: {exc}") from None
        if name == canonicalize_name(AGENT_DISTRIBUTION):
            if wheel_version != version:
                raise BundleRejected(
                    f"the agent's wheel {path!r} is not of the bundle's version {version}"
                )
            agent_wheels += 1
        files.append(ManifestFile(path, str(sha256), size))
    if agent_wheels != 1:
        raise BundleRejected(
            f"the bundle must hold exactly one wheel of {AGENT_DISTRIBUTION} (it holds "
            f"{agent_wheels})"
        )
    if firmware_path is not None and firmware_path not in seen:
        raise BundleRejected(f"mcu_firmware {firmware_path!r} is not among the manifest's files")
    if sum(f.size for f in files) > MAX_BUNDLE_BYTES:
        raise BundleRejected(f"the files together exceed {MAX_BUNDLE_BYTES} bytes")
    return tuple(files)


def sign_manifest(key: Ed25519PrivateKey, manifest: UpdateManifest) -> bytes:
    """``manifest.json``'s bytes: the manifest and its ``sig`` by the update key ``key``."""
    signed = sign_document_ed25519(key, manifest.to_json())
    data = json.dumps(signed, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleRejected(f"the manifest would exceed {MAX_MANIFEST_BYTES} bytes")
    return data


def _reject_constant(name: str) -> Any:
    raise BundleRejected(f"manifest.json holds {name}, which is not JSON")


def manifest_key_id(data: bytes) -> str | None:
    """The id of the update key that signed ``manifest.json`` (None: unsigned or unreadable), to
    say which key an unaccepted bundle needs."""
    try:
        sig = json.loads(data).get("sig")
    except (ValueError, AttributeError):
        return None
    key_id = sig.get("key_id") if isinstance(sig, dict) else None
    return key_id if isinstance(key_id, str) else None


def verify_manifest(data: bytes, pinned: Sequence[Ed25519PublicKey]) -> UpdateManifest:
    """The manifest in ``data`` (``manifest.json``'s bytes) if any key of ``pinned`` signed it;
    otherwise ``BundleRejected`` saying why."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleRejected(f"manifest.json has {len(data)} bytes, at most {MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(data.decode(), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleRejected(f"manifest.json is not UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BundleRejected("manifest.json is not a JSON object")
    sig = doc.get("sig")
    if not isinstance(sig, dict):
        raise BundleRejected("manifest.json carries no signature")
    if sig.get("alg") != "ed25519":
        raise BundleRejected(f"manifest signature algorithm {sig.get('alg')!r} is not ed25519")
    if not pinned:
        raise BundleRejected("no update key is pinned on this device: it takes no update")
    key_id = sig.get("key_id")
    by_id = {ed25519_key_id(key): key for key in pinned}
    key = by_id.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        raise BundleRejected(
            f"manifest.json is signed by update key {key_id!r}, which is not pinned here "
            f"(pinned: {', '.join(sorted(by_id))})"
        )
    try:
        unsigned = verify_document_ed25519(doc, key)
    except SignatureError:
        raise BundleRejected(
            f"manifest.json's signature does not verify with update key {key_id} "
            "(changed after it was signed)"
        ) from None
    return UpdateManifest.from_json(unsigned)


def may_update(running: str, manifest: UpdateManifest) -> None:
    """Raise ``BundleRejected`` unless an agent at version ``running`` may move to ``manifest``'s:
    newer than it, and it at least the manifest's ``min_previous_version``."""
    current = parse_version(running, "the running version")
    version = parse_version(manifest.version, "manifest version")
    if version <= current:
        raise BundleRejected(f"version {version} is not newer than the running {current}")
    minimum = parse_version(manifest.min_previous_version, "min_previous_version")
    if current < minimum:
        raise BundleRejected(
            f"version {version} needs {minimum} or later to update from; this runs {current}"
        )


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed its checks: its tar, its manifest, the tar's SHA-256 and size."""

    path: Path
    manifest: UpdateManifest
    sha256: str
    size: int
    #: The update key that signed it.
    key_id: str

    @property
    def version(self) -> str:
        return self.manifest.version


def check_bundle(
    path: Path,
    *,
    target: AgentUpdateTarget,
    pinned: Sequence[Ed25519PublicKey],
    running_version: str,
) -> VerifiedBundle:
    """The device's check of a downloaded bundle, every rule of ``docs/updates.md`` ("The
    bundle"), before anything is installed; ``BundleRejected`` with the first rule it breaks."""
    with path.open("rb") as fh:
        size, sha256 = _hash_stream(fh, limit=target.size)
        if size > target.size:
            raise BundleRejected(f"the bundle is longer than the target's {target.size} bytes")
        if size < target.size:
            raise BundleRejected(f"the bundle has {size} bytes, the target {target.size}")
        if sha256 != target.sha256:
            raise BundleRejected("the bundle's SHA-256 is not the target's (corrupt download?)")

        def device_rules(manifest: UpdateManifest) -> None:
            if manifest.python != python_tag():
                raise BundleRejected(
                    f"the bundle is for Python {manifest.python}, this device runs {python_tag()}"
                )
            if manifest.platform != platform_tag():
                raise BundleRejected(
                    f"the bundle is for platform {manifest.platform}, this device is "
                    f"{platform_tag()}"
                )
            if Version(manifest.version) != parse_version(target.version, "target version"):
                raise BundleRejected(
                    f"the bundle is version {manifest.version}, the target {target.version}"
                )
            may_update(running_version, manifest)

        fh.seek(0)
        manifest, key_id = _check_tar(fh, pinned, device_rules)
    return VerifiedBundle(path, manifest, sha256, size, key_id)


def read_bundle(path: Path, pinned: Sequence[Ed25519PublicKey]) -> VerifiedBundle:
    """A bundle checked as far as it can be away from a device (the server, at upload): at most
    ``MAX_BUNDLE_BYTES``, manifest signed by a key of ``pinned``, members exactly the manifest's;
    neither versions nor Python tags (those are each device's)."""
    with path.open("rb") as fh:
        size, sha256 = _hash_stream(fh, limit=MAX_BUNDLE_BYTES)
        if size > MAX_BUNDLE_BYTES:
            raise BundleRejected(f"the bundle exceeds {MAX_BUNDLE_BYTES} bytes")
        fh.seek(0)
        manifest, key_id = _check_tar(fh, pinned, lambda _manifest: None)
    return VerifiedBundle(path, manifest, sha256, size, key_id)


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _hash_stream(fh: IO[bytes], *, limit: int) -> tuple[int, str]:
    """Size and SHA-256 of ``fh`` from here, reading at most ``limit`` + 1 bytes (a longer file
    shows as ``limit`` + 1)."""
    digest = hashlib.sha256()
    size = 0
    while size <= limit and (chunk := fh.read(min(_CHUNK, limit + 1 - size))):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _open_tar(fh: IO[bytes]) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=fh, mode="r:")
    except tarfile.TarError as exc:
        raise BundleRejected(f"the bundle is not an uncompressed tar: {exc}") from None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as exc:
            raise BundleRejected(f"the bundle's tar is damaged: {exc}") from None
        if member is None:
            return
        yield member


def _check_member_kind(member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/"):
        raise BundleRejected(f"member {name!r} is an absolute path")
    if ".." in name.split("/"):
        raise BundleRejected(f"member {name!r} points outside the bundle")
    if member.issym() or member.islnk():
        raise BundleRejected(f"member {name!r} is a link, not a regular file")
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise BundleRejected(f"member {name!r} is not a regular file")


def _read_manifest_member(
    tar: tarfile.TarFile, members: Iterator[tarfile.TarInfo]
) -> tuple[tarfile.TarInfo, bytes]:
    first = next(members, None)
    if first is None:
        raise BundleRejected("the bundle is empty")
    if first.name != MANIFEST_NAME:
        raise BundleRejected(f"the bundle's first member is {first.name!r}, not {MANIFEST_NAME}")
    _check_member_kind(first)
    if first.size > MAX_MANIFEST_BYTES:
        raise BundleRejected(f"manifest.json has {first.size} bytes, at most {MAX_MANIFEST_BYTES}")
    reader = tar.extractfile(first)
    assert reader is not None  # a regular file has content
    try:
        return first, reader.read()
    except tarfile.TarError as exc:
        raise BundleRejected(f"manifest.json is cut short: {exc}") from None


def _check_tar(
    fh: IO[bytes],
    pinned: Sequence[Ed25519PublicKey],
    rules: Callable[[UpdateManifest], None],
) -> tuple[UpdateManifest, str]:
    """The manifest (signature, then ``rules``) and every member against it."""
    with _open_tar(fh) as tar:
        members = _members(tar)
        _first, data = _read_manifest_member(tar, members)
        manifest = verify_manifest(data, pinned)
        rules(manifest)
        expected = {f.path: f for f in manifest.files}
        for member in members:
            entry = _expected_member(member, expected)
            reader = tar.extractfile(member)
            assert reader is not None
            _copy_checked(reader, entry, None)
        if expected:
            raise BundleRejected(
                f"the bundle lacks {len(expected)} listed file(s), e.g. {min(expected)!r}"
            )
    return manifest, str(manifest_key_id(data))


def _expected_member(member: tarfile.TarInfo, expected: dict[str, ManifestFile]) -> ManifestFile:
    """The manifest's entry for ``member`` (taken out of ``expected``), or ``BundleRejected``."""
    _check_member_kind(member)
    entry = expected.pop(member.name, None)
    if entry is None:
        raise BundleRejected(
            f"member {member.name!r} is not listed in the manifest (or is there twice)"
        )
    if member.size != entry.size:
        raise BundleRejected(
            f"{entry.path} has {member.size} bytes, the manifest says {entry.size}"
        )
    return entry


def _copy_checked(reader: IO[bytes], entry: ManifestFile, out: IO[bytes] | None) -> None:
    """Read ``entry``'s content from ``reader`` (into ``out`` if given), checking its SHA-256."""
    digest = hashlib.sha256()
    size = 0
    try:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
    except tarfile.TarError as exc:
        raise BundleRejected(f"{entry.path} is cut short: {exc}") from None
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise BundleRejected(f"{entry.path} is not the file the manifest lists (SHA-256 differs)")


@contextmanager
def _checked_members(
    verified: VerifiedBundle,
) -> Iterator[Iterator[tuple[ManifestFile, IO[bytes]]]]:
    """The bundle's members after the manifest, each with its verified manifest entry and a reader
    of its content (read it through ``_copy_checked``); ``BundleRejected`` when the tar no longer
    matches the manifest it was checked against (it may have changed since ``check_bundle``)."""
    with verified.path.open("rb") as fh, _open_tar(fh) as tar:
        members = _members(tar)
        _read_manifest_member(tar, members)
        expected = {f.path: f for f in verified.manifest.files}

        def entries() -> Iterator[tuple[ManifestFile, IO[bytes]]]:
            for member in members:
                try:
                    entry = _expected_member(member, expected)
                except BundleRejected as exc:
                    raise BundleRejected(f"the bundle changed after its check: {exc}") from None
                reader = tar.extractfile(member)
                assert reader is not None
                yield entry, reader
            if expected:
                raise BundleRejected(
                    f"the bundle changed after its check: it lacks {min(expected)!r}"
                )

        yield entries()


def _write_synced(path: Path, reader: IO[bytes], entry: ManifestFile) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        _copy_checked(reader, entry, out)
        out.flush()
        os.fsync(out.fileno())


def extract_wheels(verified: VerifiedBundle, dest_dir: Path) -> list[Path]:
    """Write the bundle's wheels into the new folder ``dest_dir`` (which must not exist), checking
    each against the verified manifest again as it is written (the tar may have changed since
    ``check_bundle``); return their paths, in the manifest's order. The MCU's firmware is checked
    too but not written (``extract_firmware``).

    The wheels are written into ``.<dest_dir name>.part`` beside it, synced and renamed: either
    ``dest_dir`` holds every wheel or it does not exist (a ``.part`` left by a kill is replaced)."""
    if dest_dir.exists():
        raise FileExistsError(f"{dest_dir} exists already: the wheels go into a new folder")
    part = dest_dir.with_name(f".{dest_dir.name}.part")
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    try:
        with _checked_members(verified) as entries:
            for entry, reader in entries:
                if entry.is_wheel:
                    _write_synced(part / entry.name, reader, entry)
                else:
                    _copy_checked(reader, entry, None)
        fsync_dir(part)
        part.rename(dest_dir)
        fsync_dir(dest_dir.parent)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return [dest_dir / f.name for f in verified.manifest.files if f.is_wheel]


def extract_firmware(verified: VerifiedBundle, dest: Path) -> Path | None:
    """Write the safety MCU's signed firmware the bundle carries (``mcu_firmware``) to the file
    ``dest``, checked against the verified manifest again as it is written; None (and nothing
    written) when the bundle carries none. Written beside ``dest``, synced and renamed over it."""
    firmware = verified.manifest.mcu_firmware
    if firmware is None:
        return None
    part = dest.with_name(f".{dest.name}.part")
    part.unlink(missing_ok=True)
    try:
        with _checked_members(verified) as entries:
            for entry, reader in entries:
                if entry.path == firmware.path:
                    _write_synced(part, reader, entry)
                else:
                    _copy_checked(reader, entry, None)
        part.replace(dest)
        fsync_dir(dest.parent)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def write_bundle(
    dest: Path, manifest_json: bytes, wheels: Sequence[Path], firmware: Path | None = None
) -> None:
    """Write the bundle tar ``dest``: ``manifest_json`` (from ``sign_manifest``) first, then each
    wheel as ``wheels/<name>``, in order, then ``firmware`` (the MCU's signed image) as
    ``firmware/<name>``; written beside ``dest`` and renamed, synced. The members' times are the
    manifest's ``created_at``, owners and modes fixed, so the same inputs give the same bytes."""
    try:
        created = json.loads(manifest_json)["created_at"]
        mtime = int(datetime.fromisoformat(created).timestamp())
    except (ValueError, KeyError, TypeError):
        raise BundleRejected("manifest_json is not a manifest with created_at") from None
    members = [(WHEELS_DIR + wheel.name, wheel) for wheel in wheels]
    if firmware is not None:
        members.append((FIRMWARE_DIR + firmware.name, firmware))
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with tmp.open("wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(
                    _member_info(MANIFEST_NAME, len(manifest_json), mtime),
                    io.BytesIO(manifest_json),
                )
                for name, path in members:
                    with path.open("rb") as fh:
                        tar.addfile(_member_info(name, path.stat().st_size, mtime), fh)
            raw.flush()
            os.fsync(raw.fileno())
        tmp.replace(dest)
        fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _member_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
