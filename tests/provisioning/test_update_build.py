"""``resonera-provision update-key`` and ``update build``, as an admin runs them: a real bundle built
from this tree with a bumped version, verified with the key ``update-key show`` prints, installed
with no network into a fresh virtual environment; the update key's rotation; what each mistake
says.

Building reaches PyPI over TLS (pip checks the locked wheels' index pages), whose certificates are
checked against the wall clock: those tests run on the real clock only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from packaging.version import Version
from support import bare_env

from resonera.common import serial_link as sl
from resonera.common.agent_update import (
    MANIFEST_NAME,
    AgentUpdateTarget,
    BundleRejected,
    check_bundle,
    extract_wheels,
    file_digest,
    read_bundle,
    update_key_from_b64,
    verify_manifest,
)
from resonera.common.bundle import verify_bundle
from resonera.device.mcu_update import SignedImage
from resonera.hardware.sim import Ed25519Check, build_image
from resonera.provisioning.update_build import source_version

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "update key passphrase 42"
TREE_VERSION = source_version(REPO)
_tree = Version(TREE_VERSION)
BUMPED = f"{_tree.major}.{_tree.minor + 1}.0"


def provision(
    folder: Path, *args: object, passphrase: str = PASSPHRASE
) -> subprocess.CompletedProcess[str]:
    secret = folder / "passphrase"
    secret.write_text(passphrase + "\n")
    return subprocess.run(
        [str(BIN / "resonera-provision"), "--passphrase-file", str(secret), *map(str, args)],
        capture_output=True,
        text=True,
        # pip (in update build) keeps its cache under HOME
        env=bare_env(HOME=os.environ.get("HOME", "/root")),
        check=False,
        timeout=600,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


@dataclass(frozen=True)
class Shown:
    """``update-key show``'s lines: role -> (key id, public key)."""

    keys: dict[str, tuple[str, str]]
    pinned: list[str]


def show(folder: Path, key_dir: Path) -> Shown:
    keys: dict[str, tuple[str, str]] = {}
    pinned: list[str] = []
    for line in ok(provision(folder, "update-key", "show", "--update-key", key_dir)).splitlines():
        if line.startswith("devices pin: "):
            pinned = line.removeprefix("devices pin: ").split()
        elif not line.startswith("safety MCU's"):
            role, key_id, public, *_made = line.split()
            keys[role] = (key_id, public)
    return Shown(keys, pinned)


@dataclass(frozen=True)
class Built:
    folder: Path
    key_dir: Path
    before: Shown  # the keys as they were when the bundle was built (rotating)
    bundle: Path
    output: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """One real build: an update key made, a rotation under way, then ``update build`` of this tree
    as the next minor version."""
    folder = tmp_path_factory.mktemp("update-build")
    key_dir = folder / "update-key"
    ok(provision(folder, "update-key", "create", "--update-key", key_dir))
    ok(provision(folder, "update-key", "rotate", "--update-key", key_dir))
    before = show(folder, key_dir)
    output = ok(
        provision(
            folder,
            "update",
            "build",
            "--update-key",
            key_dir,
            "--source",
            REPO,
            "--version",
            BUMPED,
            "--min-previous",
            TREE_VERSION,
            "--out",
            folder / "out",
        )
    )
    yield Built(folder, key_dir, before, folder / "out" / f"resonera-agent-{BUMPED}.tar", output)


@pytest.mark.real_clock
def test_the_bundle_verifies_with_the_key_update_key_show_prints(built: Built) -> None:
    signing_id, signing_key = built.before.keys["signing"]
    _next_id, next_key = built.before.keys["next"]
    assert built.before.pinned == [signing_key, next_key]
    size, sha256 = file_digest(built.bundle)
    assert f"sha256 {sha256}" in built.output
    assert f"version {BUMPED}, {size} bytes" in built.output
    assert f"signed by update key {signing_id}" in built.output

    with tarfile.open(built.bundle) as tar:
        names = tar.getnames()
        manifest_file = tar.extractfile(MANIFEST_NAME)
        assert manifest_file is not None
        data = manifest_file.read()
    assert names[0] == MANIFEST_NAME
    manifest = verify_manifest(data, [update_key_from_b64(signing_key)])
    assert manifest.version == BUMPED
    assert manifest.min_previous_version == TREE_VERSION
    # during the rotation the bundle makes devices pin the next key beside the signing one
    assert manifest.update_keys == (signing_key, next_key)
    assert names[1].startswith(f"wheels/resonera-{BUMPED}-")
    # the device's lock, every wheel of it: the bundle installs with no network
    locked = {
        line.split("==")[0].lower().replace("-", "_")
        for line in (REPO / "requirements" / "device.txt").read_text().splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    }
    in_bundle = {n.removeprefix("wheels/").split("-")[0].lower() for n in names[2:]}
    assert locked <= in_bundle
    with pytest.raises(BundleRejected, match="not pinned"):
        read_bundle(built.bundle, [update_key_from_b64(next_key)])


@pytest.mark.real_clock
def test_the_wheels_install_with_no_network_and_run_as_the_new_version(
    built: Built, tmp_path: Path
) -> None:
    size, sha256 = file_digest(built.bundle)
    target = AgentUpdateTarget(version=BUMPED, sha256=sha256, size=size, rollout="r1")
    pinned = [update_key_from_b64(k) for k in built.before.pinned]
    verified = check_bundle(
        built.bundle, target=target, pinned=pinned, running_version=TREE_VERSION
    )
    wheels = extract_wheels(verified, tmp_path / "wheels")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            *map(str, wheels),
        ],
        capture_output=True,
        text=True,
        env=bare_env(PIP_CONFIG_FILE=os.devnull),
        check=False,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    version = subprocess.run(
        [str(venv / "bin" / "resonera-device"), "--version"],
        capture_output=True,
        text=True,
        env=bare_env(),
        check=True,
        timeout=120,
    )
    assert version.stdout.strip() == f"resonera-device {BUMPED}"
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "check"],
        capture_output=True,
        text=True,
        env=bare_env(PIP_CONFIG_FILE=os.devnull),
        check=False,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout  # every dependency of the device is there


@pytest.mark.real_clock
def test_promote_makes_the_next_key_sign_and_retires_the_old(built: Built) -> None:
    old_id, old_key = built.before.keys["signing"]
    new_id, new_key = built.before.keys["next"]
    out = ok(provision(built.folder, "update-key", "promote", "--update-key", built.key_dir))
    assert f"update key {new_id} signs from now on" in out
    after = show(built.folder, built.key_dir)
    assert after.keys == {"signing": (new_id, new_key), "retired": (old_id, old_key)}
    assert after.pinned == [new_key]
    again = provision(built.folder, "update-key", "promote", "--update-key", built.key_dir)
    assert again.returncode == 1
    assert "no rotation is under way: rotate first" in again.stderr


def test_update_key_create_show_rotate_and_their_mistakes(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    made = ok(provision(tmp_path, "update-key", "create", "--update-key", key_dir))
    shown = show(tmp_path, key_dir)
    key_id, public = shown.keys["signing"]
    assert f"created update key {key_id}" in made and public in made
    assert shown.pinned == [public]
    private = (key_dir / f"update-{key_id}.key").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in private
    assert (key_dir / f"update-{key_id}.key").stat().st_mode & 0o077 == 0

    cases = [
        (("update-key", "create", "--update-key", key_dir), {}, "holds an update key already"),
        (
            ("update-key", "create", "--update-key", tmp_path / "short"),
            {"passphrase": "short"},
            "at least 12 characters",
        ),
        (
            ("update-key", "show", "--update-key", tmp_path / "none"),
            {},
            "no update key in",
        ),
        (
            ("update-key", "rotate", "--update-key", key_dir),
            {"passphrase": "not the passphrase"},
            f"cannot unlock update key {key_id}",
        ),
    ]
    for args, options, message in cases:
        done = provision(tmp_path, *args, **options)
        assert done.returncode == 1, args
        assert message in done.stderr, (args, done.stderr)
    assert show(tmp_path, key_dir).keys == {"signing": (key_id, public)}  # nothing changed

    ok(provision(tmp_path, "update-key", "rotate", "--update-key", key_dir))
    twice = provision(tmp_path, "update-key", "rotate", "--update-key", key_dir)
    assert "a rotation is under way already" in twice.stderr


def test_update_build_says_what_is_wrong(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    ok(provision(tmp_path, "update-key", "create", "--update-key", key_dir))
    not_a_tree = tmp_path / "empty"
    not_a_tree.mkdir()
    broken = tmp_path / "broken"
    (broken / "requirements").mkdir(parents=True)
    (broken / "requirements" / "device.txt").write_text("")
    (broken / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "resonera"\nversion = "0.1.0"\n'
    )
    (broken / "setup.py").write_text("raise SystemExit('this tree is deliberately broken')\n")

    def build(*args: object, **options: str) -> subprocess.CompletedProcess[str]:
        return provision(tmp_path, "update", "build", "--out", tmp_path / "out", *args, **options)

    cases = [
        (build("--update-key", tmp_path / "none", "--source", REPO), "no update key in"),
        (
            build("--update-key", key_dir, "--source", REPO, passphrase="not the passphrase"),
            "wrong passphrase?",
        ),
        (
            build("--update-key", key_dir, "--source", not_a_tree),
            "has no pyproject.toml: --source must be the agent's source tree",
        ),
        (
            build("--update-key", key_dir, "--source", REPO, "--version", "next"),
            "'next' is not a PEP 440 version",
        ),
        (
            build("--update-key", key_dir, "--source", REPO, "--min-previous", "99"),
            "--min-previous 99 is above the version",
        ),
        (
            build("--update-key", key_dir, "--source", broken),
            "building the agent's wheel failed (pip exited 1)",
        ),
    ]
    for done, message in cases:
        assert done.returncode == 1
        assert message in done.stderr, done.stderr
    # pip's own last lines say why
    assert "this tree is deliberately broken" in cases[-1][0].stderr
    assert not (tmp_path / "out").exists()  # nothing half-made


def test_a_factory_bundle_pins_the_update_keys(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    ok(provision(tmp_path, "update-key", "create", "--update-key", key_dir))
    ok(provision(tmp_path, "update-key", "rotate", "--update-key", key_dir))
    pinned = show(tmp_path, key_dir).pinned
    ok(provision(tmp_path, "ca", "init", "--ca", tmp_path / "ca"))
    common = (
        "--ca",
        tmp_path / "ca",
        "--server-public-key",
        pinned[0],
        "--broker-host",
        "broker",
        "--broker-port",
        8883,
    )
    out = ok(
        provision(
            tmp_path,
            "device",
            "bundle",
            "SN-1",
            "--device-id",
            "dev-1",
            "--out",
            tmp_path / "with",
            "--update-key",
            key_dir,
            *common,
        )
    )
    assert "no --update-key" not in out
    root = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    assert verify_bundle(tmp_path / "with", root).manifest["update_public_keys"] == pinned

    without = ok(
        provision(
            tmp_path,
            "device",
            "bundle",
            "SN-2",
            "--device-id",
            "dev-2",
            "--out",
            tmp_path / "without",
            *common,
        )
    )
    assert "the device takes no agent update" in without
    manifest = json.loads((tmp_path / "without" / "manifest.json").read_text())
    assert manifest["update_public_keys"] == []


def test_a_firmware_image_signed_by_the_update_key_passes_the_mcus_check(tmp_path: Path) -> None:
    """``update sign-firmware`` signs what the safety MCU's bootloader will check, against the key
    ``update-key show`` tells the board to pin; what is not an image is refused, saying so."""
    key_dir = tmp_path / "update-key"
    ok(provision(tmp_path, "update-key", "create", "--update-key", key_dir))
    shown = ok(provision(tmp_path, "update-key", "show", "--update-key", key_dir))
    pinned_hex = shown.split("safety MCU's update_public_key: ")[1].split()[0]
    image = tmp_path / "firmware-1.6.0.bin"
    image.write_bytes(build_image("1.6.0", body_size=4096))
    signed = tmp_path / "firmware-1.6.0.signed"
    said = ok(
        provision(
            tmp_path, "update", "sign-firmware", image, "--update-key", key_dir, "--out", signed
        )
    )
    assert "signed firmware 1.6.0" in said
    loaded = SignedImage.load(signed)
    assert loaded.version == "1.6.0" and loaded.image == image.read_bytes()
    message = sl.update_signed_message(loaded.size, loaded.sha256, loaded.version)
    assert Ed25519Check()(bytes.fromhex(pinned_hex), message, loaded.signature)
    assert not Ed25519Check()(bytes.fromhex(pinned_hex), message + b"x", loaded.signature)

    (tmp_path / "notes.txt").write_text("not firmware")
    refused = provision(
        tmp_path,
        "update",
        "sign-firmware",
        tmp_path / "notes.txt",
        "--update-key",
        key_dir,
        "--out",
        tmp_path / "x.signed",
    )
    assert refused.returncode == 1 and "is not a firmware image" in refused.stderr
    assert not (tmp_path / "x.signed").exists()
