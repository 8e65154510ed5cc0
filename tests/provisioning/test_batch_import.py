"""``resonera-provision devices import``: a CSV of serials registered at once through the real CLI
on the server's real database; codes and labels that a scanner reads back and a board enrolls
with over HTTPS; re-running the same file changes nothing; a bad row names its line and leaves the
registry and the disk as they were; factory bundles for a batch."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from enrolled_fleet import ISSUING_PASSPHRASE, Fleet
from qr_labels import png_pixels, read_qr, sheet_svgs, svg_pixels
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from support import bare_env

from resonera.common.bundle import verify_bundle
from resonera.device.enroll import enroll
from resonera.device.settings import DeviceSettings
from resonera.provisioning.batch import BatchError, read_serials
from resonera.provisioning.labels import Label, read_label_payload
from resonera.server.db import make_engine
from resonera.server.enrollment_codes import code_hash
from resonera.server.models import DeviceCertificateRow, EnrollmentRow

BIN = Path(sys.executable).parent
SERIALS = "serial,device_id\nSN-0001,dev-0001\nSN-0002,dev-0002\nSN-0003\n\nSN-0004,dev-0004\n"


def provision(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "resonera-provision"), *map(str, args)],
        capture_output=True,
        text=True,
        env=bare_env(**(env or {})),
        check=False,
        timeout=120,
    )


def registry(engine: Engine) -> list[tuple[str, str | None, str, object]]:
    with Session(engine) as session:
        rows = session.exec(select(EnrollmentRow).order_by(EnrollmentRow.serial)).all()
        return [(r.serial, r.device_id, r.code_hash, r.used_at) for r in rows]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_batch_enrolls_from_its_labels_and_a_rerun_changes_nothing(fleet: Fleet) -> None:
    serials = fleet.workdir / "serials.csv"
    serials.write_text(SERIALS)
    batch = fleet.workdir / "batch-1"
    made = provision(
        "devices", "import", serials, "--out", batch, "--server-config", fleet.config_path
    )
    assert made.returncode == 0, made.stderr
    assert "4 serials: 4 new, 0 already registered" in made.stdout
    assert "line 4: 'SN-0003' as 'SN-0003': new, code valid until" in made.stdout
    codes = read_csv(batch / "codes.csv")
    assert [(c["serial"], c["device_id"]) for c in codes] == [
        ("SN-0001", "dev-0001"),
        ("SN-0002", "dev-0002"),
        ("SN-0003", "SN-0003"),
        ("SN-0004", "dev-0004"),
    ]
    # the codes are secrets: the folder and its files are the admin's alone
    assert (batch.stat().st_mode & 0o777) == 0o700
    assert {(p.stat().st_mode & 0o777) for p in batch.rglob("*") if p.is_file()} == {0o600}
    # each label's QR code, as printed on its own and on the sheet, reads back as its board's code
    wanted = {Label(c["serial"], c["device_id"], code=c["code"]) for c in codes}
    from_pngs = {
        read_label_payload(read_qr(png_pixels(batch / "labels" / f"{c['device_id']}.png")))
        for c in codes
    }
    sheet = (batch / "labels.html").read_text()
    from_sheet = {read_label_payload(read_qr(svg_pixels(svg))) for svg in sheet_svgs(sheet)}
    assert from_pngs == from_sheet == wanted
    assert all(c["code"] in sheet and c["serial"] in sheet for c in codes)
    # the database keeps each code's hash only, bound to the file's device id
    before = registry(fleet.engine)
    assert [(s, d, h) for s, d, h, _used in before] == [
        (c["serial"], c["device_id"], code_hash(c["code"])) for c in codes
    ]
    assert (batch / "report.txt").read_text().count("new, code valid until") == 4

    # a board enrolls over HTTPS with the code scanned from its label
    label = read_label_payload(read_qr(png_pixels(batch / "labels" / "dev-0002.png")))
    assert label.code is not None
    device = DeviceSettings(device_id="dev-0002", data_dir=fleet.workdir / "dev-0002")
    enroll(device, fleet.url, label.code, serial=label.serial, ca_file=fleet.https_ca)
    with Session(fleet.engine) as session:
        [cert] = session.exec(select(DeviceCertificateRow)).all()
        assert cert.device_id == "dev-0002"

    # the same file again: nothing registered, nothing written, each serial reported as it stands
    enrolled = registry(fleet.engine)
    again = provision(
        "devices", "import", serials, "--out", fleet.workdir / "batch-2",
        "--server-config", fleet.config_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "4 serials: 0 new, 4 already registered" in again.stdout
    assert "line 3: 'SN-0002' as 'dev-0002': already registered and enrolled" in again.stdout
    assert "'SN-0001' as 'dev-0001': already registered, its code unused until" in again.stdout
    assert "nothing new: the registry is unchanged and nothing was written" in again.stdout
    assert registry(fleet.engine) == enrolled
    assert not (fleet.workdir / "batch-2").exists()

    # new codes only when asked, and never for the enrolled board
    renewed = provision(
        "devices", "import", serials, "--out", fleet.workdir / "batch-3", "--new-codes",
        "--server-config", fleet.config_path,
    )  # fmt: skip
    assert renewed.returncode == 0, renewed.stderr
    assert "4 serials: 0 new, 3 given a new code, 1 already registered" in renewed.stdout
    fresh = read_csv(fleet.workdir / "batch-3" / "codes.csv")
    assert [c["serial"] for c in fresh] == ["SN-0001", "SN-0003", "SN-0004"]
    hashes = {serial: h for serial, _d, h, _u in registry(fleet.engine)}
    assert hashes["SN-0001"] == code_hash(fresh[0]["code"]) != code_hash(codes[0]["code"])


@pytest.fixture
def server_config(tmp_path: Path) -> Path:
    config = tmp_path / "server.toml"
    config.write_text(tomli_w.dumps({"database_url": f"sqlite:///{tmp_path / 's.db'}"}))
    migrated = subprocess.run(
        [str(BIN / "resonera-server"), "migrate", "--config", str(config)],
        capture_output=True,
        text=True,
        env=bare_env(),
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    return config


BAD_FILES = [
    ("SN-1\nSN-2\nSN-1\n", "line 3: serial 'SN-1' is already on line 1"),
    ("SN-1,dev-a\nSN-2,dev-a\n", "line 2: device id 'dev-a' is already on line 1"),
    ("serial,device_id\nSN-1\n,dev-2\n", "line 3: the serial is empty"),
    ("SN-1\n SN-2\n", "line 2: serial ' SN-2' is not valid"),
    ("SN-1\nSN\u00072\n", "line 2: serial 'SN\\x072' is not valid"),
    ("SN 1\n", "line 1: device id 'SN 1' is not valid"),
    ("SN-1,dev/1\n", "line 1: device id 'dev/1' is not valid"),
    ("SN-1,dev-1,x\n", "line 1: 3 columns"),
    ("SN-1\nSN-\xff\n".encode("latin-1").decode("utf-8", "surrogateescape"), "line 2: not UTF-8"),
    ("serial\n\n", "holds no serials"),
    ('SN-1\n"SN-2\n', "line 2: unexpected end of data"),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES)
def test_a_bad_file_names_its_line(tmp_path: Path, content: str, message: str) -> None:
    serials = tmp_path / "serials.csv"
    serials.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(BatchError) as refused:
        read_serials(serials)
    assert str(refused.value).startswith(str(serials)) and message in str(refused.value)


def test_a_bad_row_is_said_by_the_command_and_changes_nothing(
    tmp_path: Path, server_config: Path
) -> None:
    serials = tmp_path / "serials.csv"
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        content, message = BAD_FILES[0]
        serials.write_text(content)
        answer = provision(
            "devices", "import", serials, "--out", tmp_path / "batch",
            "--server-config", server_config,
        )  # fmt: skip
        assert answer.returncode == 1
        [line] = answer.stderr.splitlines()
        assert line.startswith(f"resonera-provision: error: {serials}"), line
        assert message in line, line
        assert registry(engine) == []
        left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("s.db"))
        assert left == ["serials.csv", "server.toml"]  # no batch folder, no staging folder
    finally:
        engine.dispose()


def test_a_row_the_registry_refuses_undoes_the_whole_batch(
    tmp_path: Path, server_config: Path
) -> None:
    added = provision(
        "device", "add", "SN-9", "--device-id", "dev-2", "--server-config", server_config
    )
    assert added.returncode == 0, added.stderr
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        before = registry(engine)
        serials = tmp_path / "serials.csv"
        for content, message in [
            (
                "SN-1,dev-1\nSN-2,dev-2\n",
                "line 2: device id 'dev-2' belongs to the board with serial 'SN-9'",
            ),
            ("SN-1,dev-1\nSN-9,dev-9\n", "line 2: serial 'SN-9' is registered as device 'dev-2'"),
        ]:
            serials.write_text(content)
            answer = provision(
                "devices", "import", serials, "--out", tmp_path / "batch",
                "--server-config", server_config,
            )  # fmt: skip
            assert answer.returncode == 1
            assert f"resonera-provision: error: {message}" in answer.stderr
            assert registry(engine) == before  # SN-1, on the line before, is not registered
            assert not (tmp_path / "batch").exists()
            assert not [p for p in tmp_path.iterdir() if p.name.startswith(".batch")]
        # an existing folder is never overwritten: refused before anything is registered
        (tmp_path / "batch").mkdir()
        serials.write_text("SN-1,dev-1\n")
        answer = provision(
            "devices",
            "import",
            serials,
            "--out",
            tmp_path / "batch",
            "--server-config",
            server_config,
        )
        assert answer.returncode == 1 and "give a new folder (--out)" in answer.stderr
        assert registry(engine) == before
    finally:
        engine.dispose()


def test_factory_bundles_for_a_batch(fleet: Fleet) -> None:
    serials = fleet.workdir / "serials.csv"
    serials.write_text("SN-0101,dev-0101\nSN-0102,dev-0102\n")
    batch = fleet.workdir / "factory"
    args = ("devices", "import", serials, "--bundles", "--ca", fleet.issuing.directory)
    made = provision(
        *args, "--out", batch, "--server-config", fleet.config_path,
        env={"RESONERA_CA_PASSPHRASE": ISSUING_PASSPHRASE.decode()},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "2 serials: 2 new, 0 already registered" in made.stdout
    devices = read_csv(batch / "devices.csv")
    for row in devices:
        bundle = verify_bundle(batch / row["bundle"], fleet.root.cert)
        assert bundle.device_id == row["device_id"]
        assert bundle.manifest["serial"] == row["serial"]
        assert bundle.manifest["certificate_sha256"] == row["certificate_sha256"]
        # its label names the board; no code: a bundle needs none
        label = read_qr(png_pixels(batch / "labels" / f"{row['device_id']}.png"))
        assert read_label_payload(label) == Label(row["serial"], row["device_id"])
    with Session(fleet.engine) as session:
        certs = session.exec(select(DeviceCertificateRow)).all()
        assert sorted((c.device_id, c.how) for c in certs) == [
            ("dev-0101", "bundle"),
            ("dev-0102", "bundle"),
        ]
    again = provision(
        *args, "--out", fleet.workdir / "factory-2",
        "--server-config", fleet.config_path,
        env={"RESONERA_CA_PASSPHRASE": ISSUING_PASSPHRASE.decode()},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "already registered and enrolled; nothing made" in again.stdout
    assert not (fleet.workdir / "factory-2").exists()
