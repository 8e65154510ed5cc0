"""The device's check of an agent update bundle (``common/agent_update.py``), rule by rule, on small
hand-made tars of tiny fake wheels: what is refused, and the reason the device reports."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resonera.common.agent_update import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    AgentUpdateTarget,
    BundleRejected,
    ManifestFile,
    McuFirmware,
    UpdateManifest,
    UpdateReport,
    VerifiedBundle,
    check_bundle,
    extract_firmware,
    extract_wheels,
    file_digest,
    may_update,
    platform_tag,
    python_tag,
    read_bundle,
    sign_manifest,
    update_key_to_b64,
    verify_manifest,
    write_bundle,
)
from resonera.common.errors import ProtocolError
from resonera.common.signing import ed25519_key_id, sign_document_ed25519

KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
CREATED = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
RUNNING = "0.8.0"
AGENT = "resonera-0.9.0-cp311-cp311-linux_x86_64.whl"
WHEELS = {AGENT: b"the agent, version 0.9.0\n" * 40, "dep-1.2-py3-none-any.whl": b"a dependency"}

OTHER_PLATFORM = "linux_armv7l" if platform_tag() != "linux_armv7l" else "linux_x86_64"
Member = tuple[tarfile.TarInfo, bytes | None]


def manifest_of(wheels: dict[str, bytes] = WHEELS, **changes: object) -> UpdateManifest:
    files = tuple(
        ManifestFile(f"wheels/{name}", _sha256(data), len(data)) for name, data in wheels.items()
    )
    manifest = UpdateManifest(
        version="0.9.0",
        min_previous_version="0.5.0",
        python=python_tag(),
        platform=platform_tag(),
        created_at=CREATED,
        files=files,
    )
    return replace(manifest, **changes)  # type: ignore[arg-type]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def member(name: str, data: bytes | None = b"", kind: bytes = tarfile.REGTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "manifest.json"
    return info, data if kind == tarfile.REGTYPE else None


def wheel_members(wheels: dict[str, bytes] = WHEELS) -> list[Member]:
    return [member(f"wheels/{name}", data) for name, data in wheels.items()]


def pack(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def target_of(path: Path, version: str = "0.9.0") -> AgentUpdateTarget:
    size, sha256 = file_digest(path)
    return AgentUpdateTarget(version=version, sha256=sha256, size=size, rollout="r1")


def check(
    path: Path, *, running: str = RUNNING, keys: list[Ed25519PrivateKey] | None = None
) -> VerifiedBundle:
    pinned = [k.public_key() for k in (keys if keys is not None else [KEY])]
    return check_bundle(path, target=target_of(path), pinned=pinned, running_version=running)


def good_members(
    manifest: UpdateManifest | None = None, key: Ed25519PrivateKey = KEY
) -> list[Member]:
    """The manifest signed by ``key``, then its files (each with the content of WHEELS' entry at
    its place)."""
    manifest = manifest or manifest_of()
    wheels = [member(f.path, data) for f, data in zip(manifest.files, WHEELS.values(), strict=True)]
    return [member(MANIFEST_NAME, sign_manifest(key, manifest)), *wheels]


def test_a_good_bundle_is_taken_and_its_wheels_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "b.tar"
    write_bundle(path, sign_manifest(KEY, manifest_of()), _wheel_files(tmp_path))
    verified = check(path)
    assert verified.manifest == manifest_of()
    assert verified.key_id == ed25519_key_id(KEY.public_key())
    assert (verified.size, verified.sha256) == file_digest(path)

    wheels = extract_wheels(verified, tmp_path / "slot" / "wheels")
    assert [w.name for w in wheels] == list(WHEELS)
    assert {w.name: w.read_bytes() for w in wheels} == WHEELS
    assert sorted(p.name for p in (tmp_path / "slot").iterdir()) == ["wheels"]  # no .part left


def _wheel_files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "built"
    folder.mkdir(exist_ok=True)
    for name, data in WHEELS.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in WHEELS]


def test_write_bundle_gives_the_same_bytes_for_the_same_inputs(tmp_path: Path) -> None:
    data = sign_manifest(KEY, manifest_of())
    write_bundle(tmp_path / "one.tar", data, _wheel_files(tmp_path))
    write_bundle(tmp_path / "two.tar", data, _wheel_files(tmp_path))
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    with tarfile.open(tmp_path / "one.tar") as tar:
        assert tar.getnames() == [MANIFEST_NAME, *(f"wheels/{n}" for n in WHEELS)]


def test_the_download_must_be_the_targets_size_and_sha256(tmp_path: Path) -> None:
    path = pack(tmp_path / "b.tar", good_members())
    target = target_of(path)
    pinned = [KEY.public_key()]
    with pytest.raises(BundleRejected, match="bytes, the target"):  # an unfinished download
        check_bundle(
            path,
            target=replace(target, size=target.size + 1),
            pinned=pinned,
            running_version=RUNNING,
        )
    with pytest.raises(BundleRejected, match="longer than the target's"):
        check_bundle(
            path,
            target=replace(target, size=target.size - 1),
            pinned=pinned,
            running_version=RUNNING,
        )
    with pytest.raises(BundleRejected, match="SHA-256 is not the target's"):
        check_bundle(
            path, target=replace(target, sha256="0" * 64), pinned=pinned, running_version=RUNNING
        )


def _signed(doc_changes: dict[str, object], key: Ed25519PrivateKey = KEY) -> bytes:
    """A manifest signed after ``doc_changes`` were made to its JSON (what a careless or hostile
    builder could sign)."""
    doc = {**manifest_of().to_json(), **doc_changes}
    return json.dumps(sign_document_ed25519(key, doc)).encode()


def _tampered_manifest() -> bytes:
    doc = json.loads(sign_manifest(KEY, manifest_of()))
    doc["min_previous_version"] = "0.0.1"
    return json.dumps(doc).encode()


CASES: dict[str, tuple[Callable[[], list[Member]], str]] = {
    "empty tar": (lambda: [], "the bundle is empty"),
    "manifest not first": (
        lambda: [*wheel_members(), member(MANIFEST_NAME, sign_manifest(KEY, manifest_of()))],
        "first member is 'wheels/resonera-0.9.0",
    ),
    "manifest too large": (
        lambda: [member(MANIFEST_NAME, b" " * (MAX_MANIFEST_BYTES + 1)), *wheel_members()],
        "manifest.json has 262145 bytes",
    ),
    "manifest a link": (
        lambda: [member(MANIFEST_NAME, None, tarfile.SYMTYPE), *wheel_members()],
        "is a link",
    ),
    "manifest not JSON": (
        lambda: [member(MANIFEST_NAME, b"{not json"), *wheel_members()],
        "not UTF-8 JSON",
    ),
    "unsigned": (
        lambda: [
            member(MANIFEST_NAME, json.dumps(manifest_of().to_json()).encode()),
            *wheel_members(),
        ],
        "carries no signature",
    ),
    "signed by another key": (
        lambda: good_members(key=OTHER_KEY),
        f"signed by update key '{ed25519_key_id(OTHER_KEY.public_key())}', which is not pinned",
    ),
    "changed after signing": (
        lambda: [member(MANIFEST_NAME, _tampered_manifest()), *wheel_members()],
        "does not verify with update key",
    ),
    "extra member": (
        lambda: [*good_members(), member("wheels/evil-1.0-py3-none-any.whl", b"evil")],
        "'wheels/evil-1.0-py3-none-any.whl' is not listed",
    ),
    "member twice": (
        lambda: [*good_members(), wheel_members()[1]],
        "is not listed in the manifest (or is there twice)",
    ),
    "missing file": (lambda: good_members()[:2], "lacks 1 listed file"),
    "symlink": (
        lambda: [
            *good_members()[:2],
            member("wheels/dep-1.2-py3-none-any.whl", None, tarfile.SYMTYPE),
        ],
        "is a link, not a regular file",
    ),
    "hard link": (
        lambda: [
            *good_members()[:2],
            member("wheels/dep-1.2-py3-none-any.whl", None, tarfile.LNKTYPE),
        ],
        "is a link, not a regular file",
    ),
    "directory": (
        lambda: [*good_members(), member("wheels", None, tarfile.DIRTYPE)],
        "'wheels' is not a regular file",
    ),
    "absolute path": (
        lambda: [*good_members(), member("/etc/cron.d/evil", b"x")],
        "is an absolute path",
    ),
    "outside the bundle": (
        lambda: [*good_members(), member("wheels/../../evil.whl", b"x")],
        "points outside the bundle",
    ),
    "size differs": (
        lambda: [*good_members()[:2], member("wheels/dep-1.2-py3-none-any.whl", b"a dependency!")],
        "has 13 bytes, the manifest says 12",
    ),
    "content differs": (
        lambda: [*good_members()[:2], member("wheels/dep-1.2-py3-none-any.whl", b"A dependency")],
        "is not the file the manifest lists",
    ),
    "another Python": (
        lambda: good_members(manifest_of(python="cp399")),
        f"is for Python cp399, this device runs {python_tag()}",
    ),
    "another platform": (
        lambda: good_members(manifest_of(platform=OTHER_PLATFORM)),
        "is for platform linux_",
    ),
    "running too old": (
        lambda: good_members(manifest_of(min_previous_version="0.8.1")),
        "needs 0.8.1 or later to update from; this runs 0.8.0",
    ),
    "minimum above version": (
        lambda: good_members(manifest_of(min_previous_version="1.0")),
        "min_previous_version 1.0 is above the bundle's version 0.9.0",
    ),
    "not a PEP 440 version": (
        lambda: [member(MANIFEST_NAME, _signed({"version": "nine"})), *wheel_members()],
        "manifest version 'nine' is not a PEP 440 version",
    ),
    "another product": (
        lambda: [member(MANIFEST_NAME, _signed({"product": "other"})), *wheel_members()],
        "for 'other', not 'resonera-agent'",
    ),
    "another format": (
        lambda: [member(MANIFEST_NAME, _signed({"format": 2})), *wheel_members()],
        "bundle format 2 is not the one this agent reads",
    ),
    "unknown field": (
        lambda: [member(MANIFEST_NAME, _signed({"postinstall": "rm -rf /"})), *wheel_members()],
        "unknown fields: postinstall",
    ),
    "not a wheel": (
        lambda: [
            member(
                MANIFEST_NAME,
                _signed({"files": [*manifest_of().to_json()["files"], _entry("run.sh", b"x")]}),
            ),
            *wheel_members(),
            member("run.sh", b"x"),
        ],
        "'run.sh' is not wheels/<name>.whl",
    ),
    "no agent wheel": (
        lambda: [
            member(MANIFEST_NAME, _signed({"files": manifest_of().to_json()["files"][1:]})),
            *wheel_members()[1:],
        ],
        "exactly one wheel of resonera (it holds 0)",
    ),
    "agent wheel of another version": (
        lambda: [member(MANIFEST_NAME, _signed({"version": "0.9.1"})), *wheel_members()],
        "is not of the bundle's version 0.9.1",
    ),
    "bad update key": (
        lambda: [member(MANIFEST_NAME, _signed({"update_keys": ["AAAA"]})), *wheel_members()],
        "update key 'AAAA' is not base64 of a raw Ed25519 public key",
    ),
}


def _entry(path: str, data: bytes) -> dict[str, object]:
    return {"path": path, "sha256": _sha256(data), "size": len(data)}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_bundle_is_refused_with_its_reason(tmp_path: Path, case: str) -> None:
    members, reason = CASES[case]
    path = pack(tmp_path / "b.tar", members())
    with pytest.raises(BundleRejected, match=_literal(reason)):
        check(path)


def _literal(text: str) -> str:
    return re.escape(text)


def test_a_truncated_tar_is_refused(tmp_path: Path) -> None:
    """Cut inside the agent's wheel (the target names the cut file: only the tar says it is short)."""
    path = pack(tmp_path / "b.tar", good_members())
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"the agent, version") + 100])
    with pytest.raises(BundleRejected, match="is cut short"):
        check(path)
    path.write_bytes(data[:700])  # inside the manifest
    with pytest.raises(BundleRejected, match=r"manifest\.json is cut short"):
        check(path)


def test_a_compressed_tar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in good_members():
            tar.addfile(info, io.BytesIO(data or b""))
    with pytest.raises(BundleRejected, match="not an uncompressed tar"):
        check(path)


def test_a_device_pinning_no_key_takes_no_update(tmp_path: Path) -> None:
    path = pack(tmp_path / "b.tar", good_members())
    with pytest.raises(BundleRejected, match="no update key is pinned on this device"):
        check(path, keys=[])


def test_rotation_a_bundle_by_the_next_key_is_taken_once_it_is_pinned(tmp_path: Path) -> None:
    """Rotating the update key: a bundle signed by the old key carries both; the device pins both
    and takes the next bundle, signed by the new key, which carries the new one alone."""
    old, new = KEY, OTHER_KEY
    both = (update_key_to_b64(old.public_key()), update_key_to_b64(new.public_key()))
    first = pack(tmp_path / "a.tar", good_members(manifest_of(update_keys=both), key=old))
    assert check(first, keys=[old]).manifest.update_keys == both

    pinned_after = [k for k in (old, new) if update_key_to_b64(k.public_key()) in both]
    second = pack(
        tmp_path / "b.tar",
        good_members(manifest_of(update_keys=both[1:]), key=new),
    )
    verified = check(second, keys=pinned_after)
    assert verified.key_id == ed25519_key_id(new.public_key())
    assert verified.manifest.update_keys == both[1:]
    with pytest.raises(BundleRejected, match="not pinned"):
        check(second, keys=[old])  # a device that never took the first bundle


def test_the_bundle_must_be_the_targets_version(tmp_path: Path) -> None:
    path = pack(tmp_path / "b.tar", good_members())
    target = target_of(path, version="0.9.1")
    with pytest.raises(BundleRejected, match=r"the bundle is version 0\.9\.0, the target 0\.9\.1$"):
        check_bundle(path, target=target, pinned=[KEY.public_key()], running_version=RUNNING)
    same = target_of(path, version="0.9")  # PEP 440: 0.9 is 0.9.0
    check_bundle(path, target=same, pinned=[KEY.public_key()], running_version=RUNNING)


def test_the_running_agent_must_be_older_and_at_least_the_minimum(tmp_path: Path) -> None:
    path = pack(tmp_path / "b.tar", good_members())
    with pytest.raises(BundleRejected, match=_literal("0.9.0 is not newer than the running 0.9.0")):
        check(path, running="0.9.0")
    with pytest.raises(
        BundleRejected, match=_literal("needs 0.5.0 or later to update from; this runs 0.4")
    ):
        check(path, running="0.4")


def test_version_rules() -> None:
    manifest = manifest_of()
    may_update("0.5.0", manifest)
    may_update("0.8.9rc1", manifest)
    for running, reason in [
        ("0.9.0", "not newer than the running 0.9.0"),
        ("1.0", "not newer than the running 1.0"),
        ("0.4.9", "needs 0.5.0 or later"),
        ("0.9.0rc1x", "the running version '0.9.0rc1x' is not a PEP 440 version"),
    ]:
        with pytest.raises(BundleRejected, match=_literal(reason)):
            may_update(running, manifest)


def test_verify_manifest_takes_any_pinned_key() -> None:
    data = sign_manifest(OTHER_KEY, manifest_of())
    assert verify_manifest(data, [KEY.public_key(), OTHER_KEY.public_key()]) == manifest_of()
    with pytest.raises(BundleRejected, match="not pinned here"):
        verify_manifest(data, [KEY.public_key()])


def test_extract_refuses_a_tar_changed_after_its_check(tmp_path: Path) -> None:
    path = pack(tmp_path / "b.tar", good_members())
    verified = check(path)
    members = good_members()
    members[2] = member("wheels/dep-1.2-py3-none-any.whl", b"A dependency")  # same size
    pack(path, members)
    dest = tmp_path / "slot" / "wheels"
    with pytest.raises(BundleRejected, match="is not the file the manifest lists"):
        extract_wheels(verified, dest)
    assert not dest.exists()
    assert list((tmp_path / "slot").iterdir()) == []

    pack(path, good_members()[:2])
    with pytest.raises(BundleRejected, match="changed after its check: it lacks"):
        extract_wheels(verified, dest)
    assert list((tmp_path / "slot").iterdir()) == []


def test_extract_replaces_a_half_written_part_and_never_an_existing_folder(tmp_path: Path) -> None:
    path = pack(tmp_path / "b.tar", good_members())
    verified = check(path)
    dest = tmp_path / "wheels"
    part = tmp_path / ".wheels.part"
    part.mkdir()
    (part / AGENT).write_bytes(b"half")  # what a kill during an earlier extraction leaves
    extract_wheels(verified, dest)
    assert (dest / AGENT).read_bytes() == WHEELS[AGENT]
    assert not part.exists()
    with pytest.raises(FileExistsError, match="exists already"):
        extract_wheels(verified, dest)


def test_the_server_reads_a_bundle_without_a_devices_rules(tmp_path: Path) -> None:
    """``read_bundle`` (the upload's check) takes a bundle for another Python and an older version,
    and still refuses a foreign signature or a member not listed."""
    other = manifest_of(python="cp399")
    path = pack(tmp_path / "b.tar", good_members(other))
    read = read_bundle(path, [KEY.public_key()])
    assert read.manifest == other
    assert (read.size, read.sha256) == file_digest(path)
    with pytest.raises(BundleRejected, match="not pinned"):
        read_bundle(path, [OTHER_KEY.public_key()])
    pack(path, [*good_members(other), member("wheels/x-1-py3-none-any.whl", b"x")])
    with pytest.raises(BundleRejected, match="is not listed"):
        read_bundle(path, [KEY.public_key()])


# --- the safety MCU's firmware in the bundle ---------------------------------------------------

FIRMWARE = b"RSFWSIG1" + b"\x07" * 64 + b"RSFW image of 1.6.0"
FIRMWARE_PATH = "firmware/safety-1.6.0.signed"


def firmware_manifest(**changes: object) -> UpdateManifest:
    entry = ManifestFile(FIRMWARE_PATH, _sha256(FIRMWARE), len(FIRMWARE))
    manifest = manifest_of(mcu_firmware=McuFirmware(FIRMWARE_PATH, "1.6.0"))
    return replace(manifest, files=(*manifest.files, entry), **changes)  # type: ignore[arg-type]


def firmware_bundle(tmp_path: Path) -> Path:
    built = tmp_path / "fw"
    built.mkdir(exist_ok=True)
    (built / "safety-1.6.0.signed").write_bytes(FIRMWARE)
    path = tmp_path / "b.tar"
    data = sign_manifest(KEY, firmware_manifest())
    write_bundle(path, data, _wheel_files(tmp_path), built / "safety-1.6.0.signed")
    return path


def test_a_bundle_carrying_the_mcus_firmware_is_taken_and_each_part_written_where_it_goes(
    tmp_path: Path,
) -> None:
    path = firmware_bundle(tmp_path)
    with tarfile.open(path) as tar:
        assert tar.getnames()[-1] == FIRMWARE_PATH
    verified = check(path)
    assert verified.manifest.mcu_firmware == McuFirmware(FIRMWARE_PATH, "1.6.0")
    assert verified.manifest.to_json()["mcu_firmware"] == {
        "path": FIRMWARE_PATH,
        "version": "1.6.0",
    }
    # the wheels go to pip, the firmware alone to the slot
    wheels = extract_wheels(verified, tmp_path / "slot" / "wheels")
    assert [w.name for w in wheels] == list(WHEELS)
    dest = tmp_path / "slot" / "mcu-firmware.signed"
    assert extract_firmware(verified, dest) == dest and dest.read_bytes() == FIRMWARE
    assert sorted(p.name for p in (tmp_path / "slot").iterdir()) == [
        "mcu-firmware.signed",
        "wheels",
    ]


def test_a_bundle_without_firmware_has_no_mcu_firmware_field_and_extracts_none(
    tmp_path: Path,
) -> None:
    assert "mcu_firmware" not in manifest_of().to_json()
    path = pack(tmp_path / "b.tar", good_members())
    verified = check(path)
    assert verified.manifest.mcu_firmware is None
    assert extract_firmware(verified, tmp_path / "mcu-firmware.signed") is None
    assert not (tmp_path / "mcu-firmware.signed").exists()


def test_a_firmware_member_the_manifest_does_not_name_is_refused(tmp_path: Path) -> None:
    # listed in files, but mcu_firmware is absent: the device would not know it is firmware
    unnamed = replace(firmware_manifest(), mcu_firmware=None)
    with pytest.raises(BundleRejected, match="not the firmware the manifest's mcu_firmware names"):
        UpdateManifest.from_json(unnamed.to_json())
    # a second firmware beside the named one
    extra = ManifestFile("firmware/other.signed", _sha256(b"x"), 1)
    two = replace(firmware_manifest(), files=(*firmware_manifest().files, extra))
    with pytest.raises(BundleRejected, match=r"'firmware/other\.signed' is not the firmware"):
        UpdateManifest.from_json(two.to_json())
    # named but not listed
    unlisted = replace(firmware_manifest(), files=manifest_of().files)
    with pytest.raises(BundleRejected, match="is not among the manifest's files"):
        UpdateManifest.from_json(unlisted.to_json())
    # a member in the tar the (signed, firmware-less) manifest does not list
    members = [*good_members(), member(FIRMWARE_PATH, FIRMWARE)]
    with pytest.raises(BundleRejected, match=f"member '{FIRMWARE_PATH}' is not listed"):
        check(pack(tmp_path / "b.tar", members))


def test_a_firmware_whose_bytes_are_not_the_listed_ones_is_refused(tmp_path: Path) -> None:
    data = sign_manifest(KEY, firmware_manifest())
    wrong = FIRMWARE[:-1] + b"!"
    members = [member(MANIFEST_NAME, data), *wheel_members(), member(FIRMWARE_PATH, wrong)]
    with pytest.raises(BundleRejected, match=f"{FIRMWARE_PATH} is not the file the manifest"):
        check(pack(tmp_path / "b.tar", members))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"path": "wheels/x.whl", "version": "1.6.0"}, "is not firmware/<name>"),
        ({"path": "firmware/../x", "version": "1.6.0"}, "is not firmware/<name>"),
        ({"path": FIRMWARE_PATH, "version": ""}, "version must be text"),
        ({"path": FIRMWARE_PATH}, "exactly path and version"),
    ],
)
def test_a_malformed_mcu_firmware_field_is_refused(value: dict[str, str], reason: str) -> None:
    doc = {**firmware_manifest().to_json(), "mcu_firmware": value}
    with pytest.raises(BundleRejected, match=re.escape(reason)):
        UpdateManifest.from_json(doc)


def test_extract_firmware_refuses_a_tar_changed_after_its_check(tmp_path: Path) -> None:
    path = firmware_bundle(tmp_path)
    verified = check(path)
    data = sign_manifest(KEY, firmware_manifest())
    wrong = FIRMWARE[:-1] + b"!"
    pack(path, [member(MANIFEST_NAME, data), *wheel_members(), member(FIRMWARE_PATH, wrong)])
    dest = tmp_path / "mcu-firmware.signed"
    with pytest.raises(BundleRejected, match="SHA-256 differs"):
        extract_firmware(verified, dest)
    assert not dest.exists() and not (tmp_path / ".mcu-firmware.signed.part").exists()


def test_an_update_report_names_its_component_agent_unless_said() -> None:
    body = UpdateReport("installed", "1.5.0", "1.6.0", "r1", None, "mcu").to_json()
    assert UpdateReport.from_json(body).component == "mcu"
    older = {k: v for k, v in body.items() if k != "component"}  # an agent from before
    assert UpdateReport.from_json(older).component == "agent"
    with pytest.raises(ProtocolError, match="component 'bios' is not one of agent, mcu"):
        UpdateReport.from_json({**body, "component": "bios"})
