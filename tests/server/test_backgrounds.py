"""Background files (issue 20): uploaded by clinicians into a content-addressed store (checked,
bounded, audited), named by library programs only when held, prescribed with their size, and
fetched by devices over the server's own HTTPS with their client certificate (mutual TLS, uvicorn):
200 with the bytes, 404 unknown, 401 without a certificate, 403 once revoked, each fetch audited."""

from __future__ import annotations

import hashlib
import io
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common.identity import generate_key, make_csr
from resonera.common.prescription import PrescribedProgram, check_prescribed
from resonera.engine.capabilities import engine_capabilities
from resonera.server.backgrounds import BackgroundStore
from resonera.server.crypto import new_key_line, write_signing_key
from resonera.server.desired import MemoryPublisher, enforced_profile
from resonera.server.device_certificates import record_certificate
from resonera.server.fleet_ca import FleetCA
from resonera.server.models import AuditRow, DeviceRow
from resonera.server.revocation import revoke_device
from resonera.server.runner import run_server_in_thread
from resonera.server.settings import EnrollmentSettings, ServerSettings

API = "/api/v1"
ROOT_PASSPHRASE = b"root passphrase for background tests"
ISSUING_PASSPHRASE = b"issuing passphrase for background tests"


def _wav(seconds: float = 0.5, rate: int = 48000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.2 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return buffer.getvalue()


def _program_with(sha256: str) -> str:
    return f"""\
name = "Rain and tone"

[[steps]]
duration_s = 120
[[steps.layers]]
type = "tone"
frequency_hz = 220
gain = 0.2
[[steps.layers]]
type = "background"
path = "sha256:{sha256}"
gain = 0.3
"""


def _upload(client: TestClient, headers: dict[str, str], data: bytes) -> Any:
    return client.post(
        f"{API}/backgrounds",
        content=data,
        headers={**headers, "Content-Type": "audio/wav"},
    )


def test_upload_store_and_prescribe_a_background(
    client: TestClient, world: Any, engine: Engine, publisher: MemoryPublisher, app: Any
) -> None:
    wav = _wav()
    uploaded = _upload(client, world.clinician.headers, wav)
    assert uploaded.status_code == 201, uploaded.text
    digest = hashlib.sha256(wav).hexdigest()
    assert uploaded.json() == {"sha256": digest, "size": len(wav), "path": f"sha256:{digest}"}
    store: BackgroundStore = app.state.resonera.backgrounds
    assert store.path_for(digest).read_bytes() == wav
    # The same bytes again are the same file; nothing else is left in the folder.
    assert _upload(client, world.admin.headers, wav).json()["sha256"] == digest
    assert [p.name for p in store.directory.iterdir()] == [digest]
    with Session(engine) as session:
        rows = session.exec(select(AuditRow).where(AuditRow.resource == "background")).all()
    assert [(r.action, r.actor_id, r.resource_id) for r in rows] == [
        ("create", world.clinician.id, digest),
        ("create", world.admin.id, digest),
    ]

    created = client.post(
        f"{API}/programs",
        json={"document": _program_with(digest)},
        headers=world.clinician.headers,
    )
    assert created.status_code == 201, created.text
    # Its preview plays the held file (the engine reads it from the store).
    preview = client.get(
        f"{API}/programs/{created.json()['id']}/preview.wav", headers=world.clinician.headers
    )
    assert preview.status_code == 200, preview.text
    assert preview.headers["content-type"] == "audio/wav"
    put = client.put(
        f"{API}/patients/{world.patient}/desired",
        json={"programs": [{"library_id": created.json()["id"]}]},
        headers={**world.clinician.headers, "If-Match": '"0"'},
    )
    assert put.status_code == 200, put.text
    document = json.loads(publisher.documents[world.device])
    entry = PrescribedProgram.model_validate(document["programs"][0])
    assert [(f.sha256, f.size) for f in entry.backgrounds] == [(digest, len(wav))]
    check_prescribed(entry, enforced_profile(document), engine_capabilities())

    # A background the store no longer holds cannot be prescribed: named, with why.
    store.path_for(digest).unlink()
    again = client.put(
        f"{API}/patients/{world.patient}/desired",
        json={"programs": [{"library_id": created.json()["id"]}]},
        headers={**world.clinician.headers, "If-Match": '"1"'},
    )
    assert again.status_code == 422, again.text
    message = again.json()["error"]["message"]
    assert (
        "'Rain and tone'" in message and f"sha256:{digest} is not in the server's store" in message
    )


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 422, "the file is empty"),
        (b"not a sound file at all" * 10, 422, "not a sound file"),
    ],
    ids=["empty", "not-sound"],
)
def test_uploads_refused_say_why(
    *, client: TestClient, world: Any, app: Any, data: bytes, status: int, words: str
) -> None:
    refused = _upload(client, world.clinician.headers, data)
    assert refused.status_code == status, refused.text
    assert words in refused.json()["error"]["message"]
    assert list(app.state.resonera.backgrounds.directory.iterdir()) == []


def test_upload_bounds_and_roles(client: TestClient, world: Any, app: Any) -> None:
    store: BackgroundStore = app.state.resonera.backgrounds
    store.max_bytes = 10_000  # the real bound is 64 MiB; the same check, smaller
    too_big = _upload(client, world.clinician.headers, _wav(seconds=1.0))
    assert too_big.status_code == 413, too_big.text
    assert "larger than the 10000 bytes" in too_big.json()["error"]["message"]
    declared = client.post(
        f"{API}/backgrounds",
        content=b"x",
        headers={**world.clinician.headers, "Content-Length": str(64 * 1024 * 1024 + 1)},
    )
    assert declared.status_code == 413
    assert _upload(client, world.auditor.headers, _wav(0.1)).status_code == 403
    assert list(store.directory.iterdir()) == []


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("sha256:" + "ab" * 32, "is not in the server's store"),
        ("/etc/passwd", "names its background file by content"),
    ],
    ids=["not-held", "a-path"],
)
def test_library_backgrounds_must_be_held(
    client: TestClient, world: Any, path: str, words: str
) -> None:
    document = _program_with("0" * 64).replace("sha256:" + "0" * 64, path)
    refused = client.post(
        f"{API}/programs", json={"document": document}, headers=world.clinician.headers
    )
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["details"]["field"] == "steps.0.layers.1.path"
    assert words in error["message"]


# -- devices fetch with their client certificate --------------------------------------------


@dataclass
class HttpsServer:
    url: str
    https_ca: Path
    issuing: FleetCA
    settings: ServerSettings
    store: BackgroundStore


@pytest.fixture
def https_server(tmp_path: Path, engine: Engine) -> Iterator[HttpsServer]:
    """The API over its own HTTPS, asking clients for a certificate from the issuing CA."""
    root = FleetCA.init(tmp_path / "root", ROOT_PASSPHRASE)
    issuing = root.issue_intermediate(ROOT_PASSPHRASE, tmp_path / "issuing", ISSUING_PASSPHRASE)
    https = tmp_path / "https"
    https.mkdir()
    root.issue_service(
        "service:resonera-https",
        https / "https.key",
        https / "https.crt",
        ROOT_PASSPHRASE,
        server_names=["127.0.0.1", "localhost"],
        client=False,
    )
    signing_key = tmp_path / "signing.key"
    write_signing_key(signing_key)
    settings = ServerSettings(
        http_port=0,
        jwt_secret=SecretStr("background-test-jwt-secret-0123456789abcdef"),
        patient_keys=SecretStr(new_key_line("t1")),
        desired_signing_key_file=signing_key,
        tls_cert_file=https / "https.crt",
        tls_key_file=https / "https.key",
        data_dir=tmp_path / "data",
        enrollment=EnrollmentSettings(
            issuing_ca_dir=issuing.directory,
            issuing_passphrase=SecretStr(ISSUING_PASSPHRASE.decode()),
        ),
    )
    server = run_server_in_thread(
        settings, ingest=False, engine=engine, publisher=MemoryPublisher()
    )
    try:
        yield HttpsServer(
            server.api_url,
            root.cert_path,
            issuing,
            settings,
            BackgroundStore.for_settings(settings),
        )
    finally:
        server.stop()


def _device(server: HttpsServer, engine: Engine, folder: Path, device_id: str) -> tuple[str, str]:
    """A device with a certificate from the issuing CA, registered as enrollment registers it:
    its (certificate, key) files."""
    key = generate_key()
    cert = server.issuing.sign_device_csr(
        make_csr(key, device_id, f"SER-{device_id}"), ISSUING_PASSPHRASE
    )
    with Session(engine) as session:
        record_certificate(session, cert, how="bundle", now=datetime.now(UTC))
        session.commit()
    folder.mkdir()
    cert_file, key_file = folder / "device.crt", folder / "device.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def _tls(server: HttpsServer, client: tuple[str, str] | None) -> ssl.SSLContext:
    """The server's CA, and a device's certificate and key when it presents them."""
    context = ssl.create_default_context(cafile=str(server.https_ca))
    if client is not None:
        context.load_cert_chain(*client)
    return context


def test_a_device_fetches_with_its_client_certificate(
    https_server: HttpsServer, engine: Engine, tmp_path: Path
) -> None:
    wav = _wav()
    with https_server.store.writer() as writer:
        writer.write(wav)
        held = writer.finish()
    cert = _device(https_server, engine, tmp_path / "dev-x", "dev-x")
    url = f"{https_server.url}/device/backgrounds/{held.sha256}"
    with httpx.Client(verify=_tls(https_server, cert)) as device:
        fetched = device.get(url)
        assert fetched.status_code == 200, fetched.text
        assert fetched.content == wav
        assert fetched.headers["content-length"] == str(len(wav))
        unknown = device.get(f"{https_server.url}/device/backgrounds/{'cd' * 32}")
        assert unknown.status_code == 404, unknown.text
    with httpx.Client(verify=_tls(https_server, None)) as anonymous:
        refused = anonymous.get(url)
    assert refused.status_code == 401
    assert "client certificate is needed" in refused.json()["error"]["message"]

    with Session(engine) as session:
        device_row = session.get(DeviceRow, "dev-x")
        assert device_row is not None
        revoke_device(session, https_server.settings.enrollment, device_row, now=datetime.now(UTC))
        session.commit()
    with httpx.Client(verify=_tls(https_server, cert)) as device:
        revoked = device.get(url)
    assert revoked.status_code == 403, revoked.text
    assert "revoked" in revoked.json()["error"]["message"]

    with Session(engine) as session:
        fetches = session.exec(select(AuditRow).where(AuditRow.resource == "background")).all()
    assert [(r.actor_email, r.actor_role, r.action, r.resource_id) for r in fetches] == [
        ("device:dev-x", "device", "read", held.sha256)
    ]
