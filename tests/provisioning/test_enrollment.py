"""Enrollment end to end with every part real: a two-tier fleet CA, the server's API over HTTPS
(uvicorn, TLS certificate from the fleet root), mosquitto with mutual TLS, the server's ingest, and
the device's own CLI. Codes: single use, expiring, bound to a serial, rate-limited; bad requests
issue nothing; renewal, factory bundles and revocation."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from enrolled_fleet import ISSUING_PASSPHRASE, Fleet, broker_admits, enrollment_code
from factories import make_record
from fleet import PASSPHRASE
from sqlmodel import Session, select
from support import bare_env, wait_until
from updates_support import update_key

from resonera.common.identity import generate_key, load_private_key, make_csr
from resonera.device.enroll import (
    EnrollError,
    Identity,
    enroll,
    renew,
    renew_daily,
    renew_if_due,
)
from resonera.device.settings import DeviceSettings
from resonera.device.sync import DeviceSync
from resonera.server.device_certificates import record_certificate
from resonera.server.fleet_ca import FleetCA
from resonera.server.ingest_mqtt import IngestConsumer
from resonera.server.models import (
    DeviceCertificateRow,
    DeviceRow,
    QuarantineRow,
    SessionRow,
)

BIN = Path(sys.executable).parent


def cli(
    name: str, *args: object, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / name), *map(str, args)],
        capture_output=True,
        text=True,
        env=bare_env(**(env or {})),
        check=False,
        timeout=120,
    )


def device_config(fleet: Fleet, device_id: str) -> Path:
    path = fleet.workdir / f"{device_id}.toml"
    path.write_text(
        tomli_w.dumps(
            {
                "device_id": device_id,
                "data_dir": str(fleet.workdir / device_id),
                "enroll_ca_file": str(fleet.https_ca),
            }
        )
    )
    return path


def device_settings(fleet: Fleet, device_id: str) -> DeviceSettings:
    return DeviceSettings(device_id=device_id, data_dir=fleet.workdir / device_id)


new_code = enrollment_code


def post(fleet: Fleet, path: str, body: dict[str, Any]) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(fleet.https_ca))
    return httpx.post(f"{fleet.url}/api/v1{path}", json=body, verify=context)


def issued_count(fleet: Fleet) -> int:
    return len(list((fleet.issuing.directory / "issued").iterdir()))


# --- the whole path ------------------------------------------------------------------------------


def test_enrolled_device_syncs_over_mutual_tls_and_revocation_cuts_it_off(fleet: Fleet) -> None:
    added = cli(
        "resonera-provision",
        "device",
        "add",
        "SN-100",
        "--device-id",
        "dev-100",
        "--expires",
        "1h",
        "--server-config",
        fleet.config_path,
    )
    assert added.returncode == 0, added.stderr
    code = added.stdout.splitlines()[1].strip()
    config = device_config(fleet, "dev-100")
    enrolled = cli(
        "resonera-device",
        "enroll",
        "--config",
        config,
        "--server",
        fleet.url,
        "--code",
        code,
        "--serial",
        "SN-100",
    )
    assert enrolled.returncode == 0, enrolled.stderr
    assert "enrolled 'dev-100'" in enrolled.stdout
    identity = Identity.of(fleet.workdir / "dev-100")
    assert identity.key_path.stat().st_mode & 0o077 == 0
    # the device's settings now come from its identity: TLS files, broker, pinned server key
    settings = device_settings(fleet, "dev-100")
    assert settings.mqtt.cert_file == identity.cert_path
    assert settings.mqtt.port == fleet.broker.port
    assert settings.server_public_key is not None
    with Session(fleet.engine) as db:
        device = db.get(DeviceRow, "dev-100")
        assert device is not None and not device.revoked and device.public_key

    ingest = IngestConsumer(
        fleet.settings.model_copy(update={"mqtt": fleet.server_mqtt()}), fleet.engine
    )
    ingest.start()
    try:
        store = settings.open_store()
        store.record_session("dev-100", make_record())
        with DeviceSync(settings, store) as sync:
            assert sync.drain(timeout_s=30), sync.last_error
        with Session(fleet.engine) as db:
            [row] = db.exec(select(SessionRow)).all()
            assert row.device_id == "dev-100" and row.sig_status == "verified"

        revoked = cli(
            "resonera-provision",
            "device",
            "revoke",
            "--ca",
            fleet.issuing.directory,
            "--cert",
            identity.cert_path,
            "--reason",
            "stolen",
            "--server-config",
            fleet.config_path,
            env={"RESONERA_CA_PASSPHRASE": ISSUING_PASSPHRASE.decode()},
        )
        assert revoked.returncode == 0, revoked.stderr
        assert "marked 'dev-100' revoked on the server" in revoked.stdout
        # before the broker reloads its CRL, the server already refuses the device's messages
        store.record_session("dev-100", make_record())
        with DeviceSync(settings, store) as sync:
            sync.drain(timeout_s=0.5)

            def quarantined() -> bool:
                with Session(fleet.engine) as db:
                    rows = db.exec(select(QuarantineRow)).all()
                    return any("revoked" in r.reason for r in rows)

            wait_until(quarantined, what="the revoked device's message in quarantine")
        store.close()
        with Session(fleet.engine) as db:
            assert len(db.exec(select(SessionRow)).all()) == 1  # its data stays
    finally:
        ingest.stop()
    fleet.broker.reload()
    wait_until(
        lambda: not broker_admits(settings.mqtt, "dev-100"), what="the broker to refuse dev-100"
    )


# --- codes ---------------------------------------------------------------------------------------


def test_a_code_works_once(fleet: Fleet) -> None:
    code = new_code(fleet, "SN-1", device_id="dev-1")
    enroll(device_settings(fleet, "dev-1"), fleet.url, code, serial="SN-1", ca_file=fleet.https_ca)
    before = issued_count(fleet)
    with pytest.raises(EnrollError, match="already used"):
        enroll(
            device_settings(fleet, "dev-1b"), fleet.url, code, serial="SN-1", ca_file=fleet.https_ca
        )
    assert issued_count(fleet) == before


def test_an_expired_code_is_refused(fleet: Fleet) -> None:
    code = new_code(
        fleet, "SN-2", device_id="dev-2", ttl=timedelta(minutes=5), ago=timedelta(hours=1)
    )
    with pytest.raises(EnrollError, match="expired at"):
        enroll(
            device_settings(fleet, "dev-2"), fleet.url, code, serial="SN-2", ca_file=fleet.https_ca
        )
    assert issued_count(fleet) == 0
    assert not Identity.of(fleet.workdir / "dev-2").exists()


def test_a_device_whose_clock_is_off_is_told_so_and_keeps_its_code(fleet: Fleet) -> None:
    code = new_code(fleet, "SN-13", device_id="dev-13")
    settings = device_settings(fleet, "dev-13")
    skewed = datetime.now(UTC) - timedelta(days=3)
    with pytest.raises(EnrollError, match="set the device's clock"):
        enroll(
            settings, fleet.url, code, serial="SN-13", ca_file=fleet.https_ca, clock=lambda: skewed
        )
    assert issued_count(fleet) == 0
    enroll(settings, fleet.url, code, serial="SN-13", ca_file=fleet.https_ca)


def test_a_code_for_another_serial_is_refused(fleet: Fleet) -> None:
    code = new_code(fleet, "SN-3", device_id="dev-3")
    new_code(fleet, "SN-4")
    with pytest.raises(EnrollError, match="not valid for serial 'SN-4'"):
        enroll(
            device_settings(fleet, "dev-3"), fleet.url, code, serial="SN-4", ca_file=fleet.https_ca
        )
    csr = make_csr(generate_key(), "dev-3", "SN-other")
    answer = post(fleet, "/enroll", {"serial": "SN-3", "code": code, "csr": csr.decode()})
    assert answer.status_code == 400
    assert "names serial 'SN-other', not 'SN-3'" in answer.json()["error"]["message"]
    assert issued_count(fleet) == 0


def test_guessing_codes_is_rate_limited_per_serial_and_per_address(fleet: Fleet) -> None:
    code = new_code(fleet, "SN-5", device_id="dev-5")
    csr = make_csr(generate_key(), "dev-5", "SN-5").decode()
    for _ in range(3):
        wrong = post(fleet, "/enroll", {"serial": "SN-5", "code": "AAAAA-AAAAA", "csr": csr})
        assert wrong.status_code == 403
    locked = post(fleet, "/enroll", {"serial": "SN-5", "code": code, "csr": csr})
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0
    assert "too many failed enrollment attempts" in locked.json()["error"]["message"]
    # other serials from the same address: limited once the address has failed too often
    for n in range(3):
        assert (
            post(fleet, "/enroll", {"serial": f"SN-x{n}", "code": "B", "csr": csr}).status_code
            == 403
        )
    answer = post(fleet, "/enroll", {"serial": "SN-y", "code": "B", "csr": csr})
    assert answer.status_code == 429 and "address" in answer.json()["error"]["message"]
    assert issued_count(fleet) == 0


def rsa_csr(serial: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "dev-rsa"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("body", "status", "complaint"),
    [
        ({"csr": "not a csr"}, 400, "not a PEM-encoded CSR"),
        ({"csr": rsa_csr("SN-6")}, 400, "ECDSA P-256"),
        ({"csr": "x" * 9000}, 422, "body.csr"),
        ({"serial": "S" * 65}, 422, "body.serial"),
        ({"code": "C" * 65}, 422, "body.code"),
    ],
)
def test_bad_requests_are_refused_clearly_and_issue_nothing(
    fleet: Fleet, body: dict[str, str], status: int, complaint: str
) -> None:
    code = new_code(fleet, "SN-6", device_id="d6")
    full = {"serial": "SN-6", "code": code, "csr": make_csr(generate_key(), "d6", "SN-6").decode()}
    answer = post(fleet, "/enroll", {**full, **body})
    assert answer.status_code == status
    assert complaint in answer.text
    assert issued_count(fleet) == 0
    # the code was not spent on a bad request
    assert post(fleet, "/enroll", full).status_code == 200


def test_the_server_certificate_must_verify(fleet: Fleet, tmp_path: Path) -> None:
    other = FleetCA.init(tmp_path / "other", PASSPHRASE)
    code = new_code(fleet, "SN-7", device_id="dev-7")
    with pytest.raises(EnrollError, match="does not verify against"):
        enroll(
            device_settings(fleet, "dev-7"), fleet.url, code, serial="SN-7", ca_file=other.cert_path
        )
    with pytest.raises(EnrollError, match="must start with https://"):
        enroll(
            device_settings(fleet, "dev-7"), "http://127.0.0.1:1", code, serial="SN-7", ca_file=None
        )


# --- renewal -------------------------------------------------------------------------------------


def test_renewal_gives_a_new_key_and_a_working_certificate(fleet: Fleet) -> None:
    settings = device_settings(fleet, "dev-8")
    enroll(
        settings,
        fleet.url,
        new_code(fleet, "SN-8", device_id="dev-8"),
        serial="SN-8",
        ca_file=fleet.https_ca,
    )
    identity = Identity.of(settings.data_dir)
    old_cert = identity.cert_path.read_bytes()
    old_key = identity.key_path.read_bytes()
    assert not renew_if_due(settings)  # a fresh certificate is not due
    later = datetime.now(UTC) + timedelta(days=70)  # under 30 % of 90 days left
    with pytest.raises(EnrollError, match="set the device's clock"):
        renew(settings, clock=lambda: later)
    renew(settings)
    assert identity.cert_path.read_bytes() != old_cert
    assert identity.key_path.read_bytes() != old_key
    assert broker_admits(device_settings(fleet, "dev-8").mqtt, "dev-8")
    with Session(fleet.engine) as db:
        rows = db.exec(select(DeviceCertificateRow)).all()
        assert sorted(r.how for r in rows) == ["enroll", "renew"]
        assert sum(r.superseded_at is None for r in rows) == 1
    # the superseded certificate cannot renew again
    stale = post(
        fleet,
        "/enroll/renew",
        {
            "certificate": old_cert.decode(),
            "csr": "x",
            "time": "2026-01-01T00:00:00+00:00",
            "signature": "AA==",
        },
    )
    assert stale.status_code in (400, 401, 409)


def test_the_agent_renews_a_certificate_near_its_end(fleet: Fleet) -> None:
    settings = device_settings(fleet, "dev-12")
    enroll(
        settings,
        fleet.url,
        new_code(fleet, "SN-12", device_id="dev-12"),
        serial="SN-12",
        ca_file=fleet.https_ca,
    )
    identity = Identity.of(settings.data_dir)
    key = load_private_key(identity.key_path)
    # the certificate the device holds is 80 days into its 90: under 30 % left
    now = datetime.now(UTC)
    aging = fleet.issuing.sign_device_csr(
        make_csr(key, "dev-12", "SN-12"),
        ISSUING_PASSPHRASE,
        days=90,
        not_before=now - timedelta(days=80),
    )
    identity.cert_path.write_bytes(aging.public_bytes(serialization.Encoding.PEM))
    with Session(fleet.engine) as db:
        record_certificate(db, aging, how="enroll", now=now)
        db.commit()
    stop = threading.Event()
    stop.set()  # one check, as at the agent's start
    renewed: list[ec.EllipticCurvePrivateKey] = []
    renew_daily(settings, stop, renewed.append)
    assert len(renewed) == 1 and renewed[0].public_key() != key.public_key()
    assert identity.certificate().not_valid_after_utc > aging.not_valid_after_utc
    assert broker_admits(device_settings(fleet, "dev-12").mqtt, "dev-12")
    renew_daily(settings, stop, renewed.append)
    assert len(renewed) == 1  # the new certificate is not due


# --- factory bundle ------------------------------------------------------------------------------


def bundle(fleet: Fleet, out: Path, device_id: str, serial: str, *extra: object) -> None:
    made = cli(
        "resonera-provision",
        "device",
        "bundle",
        serial,
        "--out",
        out,
        "--ca",
        fleet.issuing.directory,
        "--device-id",
        device_id,
        "--server-config",
        fleet.config_path,
        *extra,
        env={"RESONERA_CA_PASSPHRASE": ISSUING_PASSPHRASE.decode()},
    )
    assert made.returncode == 0, made.stderr


def test_a_factory_bundle_installs_connects_and_renews(fleet: Fleet) -> None:
    out = fleet.workdir / "sd-image"
    keys = update_key()
    bundle(fleet, out, "dev-9", "SN-9", "--server-url", fleet.url, "--update-key", keys.directory)
    config = device_config(fleet, "dev-9")
    installed = cli(
        "resonera-device",
        "enroll",
        "--config",
        config,
        "--bundle",
        out,
        "--fleet-ca",
        fleet.root.cert_path,
    )
    assert installed.returncode == 0, installed.stderr
    settings = device_settings(fleet, "dev-9")
    assert broker_admits(settings.mqtt, "dev-9")
    assert settings.update_public_keys == [keys.public_key]  # it will take updates signed so
    with Session(fleet.engine) as db:
        device = db.get(DeviceRow, "dev-9")
        assert device is not None and device.public_key
    before = Identity.of(settings.data_dir).cert_path.read_bytes()
    renew(settings)  # the server registered the bundle's certificate, so it renews like any other
    assert Identity.of(settings.data_dir).cert_path.read_bytes() != before


def test_a_tampered_or_foreign_bundle_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    out = fleet.workdir / "sd-image"
    bundle(fleet, out, "dev-10", "SN-10")
    config = device_config(fleet, "dev-10")
    manifest = out / "manifest.json"
    original = manifest.read_text()
    manifest.write_text(original.replace(f'"broker_port": {fleet.broker.port}', '"broker_port": 1'))
    args = ("resonera-device", "enroll", "--config", config, "--bundle", out, "--fleet-ca")
    refused = cli(*args, fleet.root.cert_path)
    assert refused.returncode == 1
    assert "manifest signature does not verify" in refused.stderr
    manifest.write_text(original)
    # a genuine certificate of the fleet, but not the one the manifest lists
    other_cert = fleet.issuing.sign_device_csr(
        make_csr(generate_key(), "dev-10", "SN-10"), ISSUING_PASSPHRASE
    )
    (out / "device.crt").write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    refused = cli(*args, fleet.root.cert_path)
    assert "device.crt is not the file that was signed" in refused.stderr
    assert refused.returncode == 1
    other = FleetCA.init(tmp_path / "other", PASSPHRASE)
    assert "not from this fleet" in cli(*args, other.cert_path).stderr
    assert not Identity.of(fleet.workdir / "dev-10").exists()


def test_device_add_without_a_server_says_how(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"]}
    answer = cli("resonera-provision", "device", "add", "SN-11", env=env)
    assert answer.returncode == 1
    assert "--server-config" in answer.stderr
    bad = cli("resonera-provision", "device", "add", "SN-11", "--expires", "soon", env=env)
    assert bad.returncode == 2 and "not a duration" in bad.stderr
