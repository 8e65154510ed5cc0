"""Building an agent update bundle from a source tree (``resonera-provision update build``).

The agent's wheel is built from a temporary copy of the tree (never in the tree itself: setuptools'
``build/`` there could hold modules deleted since, and other work may be going on in it), with
pyproject's version replaced when another one is asked (tests, hotfixes); then every wheel of the
device's lock (``requirements/device.txt``, hashes required), so the bundle installs with no
network. The manifest is signed by the update key's signing key and carries the keys devices should
pin (``UpdateKeys.published``). pip's own cache makes a repeated build take seconds.

With ``mcu_firmware`` (``--mcu-firmware``) the bundle also carries the safety MCU's signed image
(``update sign-firmware``) as ``firmware/mcu-firmware.signed``, named in the manifest's
``mcu_firmware`` with the version its header says; an image the update key did not sign is refused
here rather than by every MCU of the fleet.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from packaging.utils import canonicalize_name, parse_wheel_filename

from resonera.common import serial_link as sl
from resonera.common.agent_update import (
    AGENT_DISTRIBUTION,
    FIRMWARE_DIR,
    BundleRejected,
    ManifestFile,
    McuFirmware,
    UpdateManifest,
    bundle_file_name,
    file_digest,
    parse_version,
    platform_tag,
    python_tag,
    sign_manifest,
    write_bundle,
)
from resonera.common.clock import Clock, utc_now
from resonera.common.errors import ResoneraError
from resonera.common.signing import ed25519_key_id

DEVICE_LOCK: Final = Path("requirements/device.txt")
#: What a copy of the tree leaves out: VCS, virtual environments, caches and build output.
_SKIP_TOP: Final = frozenset({".git", "build", "dist", "demo-output", "node_modules"})
_SKIP_ANY: Final = (".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")
_VERSION_LINE = re.compile(r'^(version\s*=\s*)"[^"\n]*"', re.MULTILINE)
#: pip's lines that say nothing about why it failed (find-links that do not exist here).
_NOISE: Final = ("is ignored: it is neither a file nor a directory",)
PIP_TAIL_LINES: Final = 15
#: The MCU's firmware's name in a bundle, whatever the admin's file was called.
FIRMWARE_NAME: Final = "mcu-firmware.signed"


class UpdateBuildError(ResoneraError):
    """The bundle could not be built; the message says why (pip's last lines when pip failed)."""


@dataclass(frozen=True)
class BuiltUpdate:
    path: Path
    version: str
    sha256: str
    size: int
    files: int
    key_id: str
    #: The safety MCU's firmware version the bundle carries (None: none).
    mcu_firmware: str | None = None


def source_version(source: Path) -> str:
    """The agent's version in ``source``'s pyproject.toml; ``UpdateBuildError`` when ``source``
    is not the agent's source tree."""
    pyproject = source / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except FileNotFoundError:
        raise UpdateBuildError(
            f"{source} has no pyproject.toml: --source must be the agent's source tree"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UpdateBuildError(f"{pyproject} is not TOML: {exc}") from None
    if canonicalize_name(str(project.get("name", ""))) != AGENT_DISTRIBUTION:
        raise UpdateBuildError(
            f"{pyproject} is of {project.get('name')!r}, not the agent ({AGENT_DISTRIBUTION})"
        )
    version = project.get("version")
    if not isinstance(version, str):
        raise UpdateBuildError(f"{pyproject} names no static [project] version")
    return version


def _ignore(root: Path) -> Callable[[str, list[str]], set[str]]:
    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == root
        return {
            n
            for n in names
            if n.startswith(_SKIP_ANY)
            or n.endswith((".egg-info", ".so"))
            or (top and n in _SKIP_TOP)
        }

    return ignore


def copy_tree(source: Path, dest: Path, version: str | None) -> None:
    """Copy the tree to build from; with ``version``, pyproject's version replaced by it."""
    shutil.copytree(source, dest, ignore=_ignore(source), symlinks=True)
    if version is None:
        return
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text()
    project_at = text.find("[project]")
    replaced, count = _VERSION_LINE.subn(rf'\g<1>"{version}"', text[project_at:], count=1)
    if project_at < 0 or count != 1:
        raise UpdateBuildError(f"{source}/pyproject.toml has no version line under [project]")
    pyproject.write_text(text[:project_at] + replaced)
    if source_version(dest) != version:
        raise UpdateBuildError(f"{source}/pyproject.toml's version could not be replaced")


def _pip(args: list[str], what: str, cwd: Path) -> None:
    command = [sys.executable, "-m", "pip", *args]
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        lines = [
            line
            for line in (done.stdout + done.stderr).splitlines()
            if line.strip() and not line.endswith(_NOISE)
        ]
        tail = "\n".join(lines[-PIP_TAIL_LINES:])
        raise UpdateBuildError(f"building {what} failed (pip exited {done.returncode}):\n{tail}")


def build_update(
    source: Path,
    out: Path,
    key: Ed25519PrivateKey,
    *,
    update_keys: list[str],
    version: str | None = None,
    min_previous: str | None = None,
    mcu_firmware: Path | None = None,
    clock: Clock = utc_now,
) -> BuiltUpdate:
    """Build ``resonera-agent-<version>.tar`` into the folder ``out`` (made if missing; an existing
    bundle of that version is not replaced), signed by ``key``, carrying ``update_keys`` (and the
    MCU's signed image ``mcu_firmware``, checked first)."""
    firmware = read_signed_firmware(mcu_firmware, key) if mcu_firmware is not None else None
    tree_version = source_version(source)
    lock = source / DEVICE_LOCK
    if not lock.is_file():
        raise UpdateBuildError(f"{source} has no {DEVICE_LOCK} (the device's locked wheels)")
    wanted = version or tree_version
    minimum = min_previous or "0"
    try:
        if parse_version(minimum, "--min-previous") > parse_version(wanted, "the version"):
            raise UpdateBuildError(f"--min-previous {minimum} is above the version {wanted}")
    except BundleRejected as exc:
        raise UpdateBuildError(str(exc)) from None
    dest = out / bundle_file_name(wanted)
    if dest.exists():
        raise UpdateBuildError(f"{dest} exists already; remove it or choose another --out")
    with tempfile.TemporaryDirectory(prefix="resonera-update-build-") as work_dir:
        work = Path(work_dir)
        tree, wheels = work / "src", work / "wheels"
        copy_tree(source, tree, version if version != tree_version else None)
        # No build isolation: the build tools are the locked ones of this environment (as the
        # Makefile installs), nothing unlocked is fetched.
        _pip(
            ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(tree)],
            "the agent's wheel",
            work,
        )
        agent = _agent_wheel(wheels, wanted)
        _pip(
            [
                "wheel",
                "-q",
                "--require-hashes",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(wheels),
                "-r",
                str(tree / DEVICE_LOCK),
            ],
            f"the wheels of {DEVICE_LOCK}",
            work,
        )
        others = sorted(w for w in wheels.glob("*.whl") if w != agent)
        ordered = [agent, *others]
        files = [ManifestFile.of(w) for w in ordered]
        firmware_file: Path | None = None
        if firmware is not None:
            firmware_file = work / FIRMWARE_NAME
            firmware_file.write_bytes(firmware[1])
            files.append(ManifestFile.of(firmware_file, FIRMWARE_DIR))
        manifest = UpdateManifest(
            version=wanted,
            min_previous_version=minimum,
            python=python_tag(),
            platform=platform_tag(),
            created_at=clock().replace(microsecond=0),
            files=tuple(files),
            update_keys=tuple(update_keys),
            mcu_firmware=(
                McuFirmware(FIRMWARE_DIR + FIRMWARE_NAME, firmware[0])
                if firmware is not None
                else None
            ),
        )
        try:
            UpdateManifest.from_json(manifest.to_json())  # what devices will check
            data = sign_manifest(key, manifest)
        except BundleRejected as exc:
            raise UpdateBuildError(f"the bundle would be refused: {exc}") from None
        out.mkdir(parents=True, exist_ok=True)
        write_bundle(dest, data, ordered, firmware_file)
    size, sha256 = file_digest(dest)
    return BuiltUpdate(
        dest,
        wanted,
        sha256,
        size,
        len(files),
        ed25519_key_id(key.public_key()),
        firmware[0] if firmware is not None else None,
    )


def read_signed_firmware(path: Path, key: Ed25519PrivateKey) -> tuple[str, bytes]:
    """The version and bytes of the signed MCU image at ``path`` (``update sign-firmware``'s
    file); ``UpdateBuildError`` unless it is one, signed by ``key`` (the bootloaders pin its public
    half: an image signed otherwise would be refused by every MCU)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UpdateBuildError(f"cannot read the MCU firmware {path}: {exc.strerror}") from None
    try:
        signature, image = sl.unpack_signed_image(data)
        version, _size = sl.unpack_image_header(image)
    except sl.LinkProtocolError as exc:
        raise UpdateBuildError(
            f"{path} is not a signed MCU firmware image (update sign-firmware): {exc}"
        ) from None
    message = sl.update_signed_message(len(image), hashlib.sha256(image).digest(), version)
    try:
        key.public_key().verify(signature, message)
    except InvalidSignature:
        raise UpdateBuildError(
            f"{path} is not signed by this update key ({ed25519_key_id(key.public_key())}): "
            "sign the image with update sign-firmware"
        ) from None
    try:
        McuFirmware.from_json({"path": FIRMWARE_DIR + FIRMWARE_NAME, "version": version})
    except BundleRejected as exc:
        raise UpdateBuildError(f"{path}: {exc}") from None
    return version, data


def _agent_wheel(wheels: Path, version: str) -> Path:
    built = list(wheels.glob("*.whl"))
    if len(built) != 1:
        raise UpdateBuildError(f"pip built {len(built)} wheels for the agent, expected one")
    _name, wheel_version, _build, _tags = parse_wheel_filename(built[0].name)
    if wheel_version != parse_version(version):
        raise UpdateBuildError(f"the agent's wheel {built[0].name} is not version {version}")
    return built[0]
