"""Agent updates on the server (issue 25, docs/updates.md "The server's side"): bundles uploaded and
checked (signature, members, duplicates), rollouts to a cohort or a stable share of the fleet, the
target carried in the signed desired document (devices serving nobody too), one rollout at a
time, update reports ingested into each device's standing, the automatic pause taking the target
away from devices not yet switched, and the per-version counts; on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.common import topics
from resonera.common.agent_update import AgentUpdateTarget
from resonera.common.desired import verify_desired
from resonera.common.envelope import Envelope
from resonera.server import fleet_alerts
from resonera.server.app import create_app
from resonera.server.crypto import Ed25519Signer, FieldCipher
from resonera.server.db import alembic_config, migrate
from resonera.server.desired import DesiredService, MemoryPublisher
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import (
    AuditRow,
    DeviceRow,
    DeviceUpdateRow,
    QuarantineRow,
    RolloutRow,
    UpdateReportRow,
)
from resonera.server.settings import ServerSettings
from resonera.server.updates import bucket


def _bundle_maker() -> ModuleType:
    """``update_bundles.py`` beside this file (a plain import would find the ``server`` package of
    the source tree, as ``dashboard/helpers.server_helpers`` explains)."""
    name = "resonera_update_bundles"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("update_bundles.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


bundles = _bundle_maker()
bundle_bytes = bundles.bundle_bytes
API = "/api/v1"
OLD, NEW = "0.8.0", "0.9.0"


@pytest.fixture(scope="module")
def update_key() -> Any:
    return bundles.UpdateKey.new()


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def server_settings(server_settings: ServerSettings, update_key: Any) -> ServerSettings:
    return server_settings.model_copy(update={"update_public_keys": [update_key.public_b64]})


@pytest.fixture
def app(
    server_settings: ServerSettings,
    engine: Engine,
    cipher: FieldCipher,
    publisher: MemoryPublisher,
    signing_key: Ed25519PrivateKey,
) -> FastAPI:
    """The API signing with Ed25519, so a test checks documents as a device does."""
    return create_app(
        server_settings,
        engine,
        cipher=cipher,
        publisher=publisher,
        signer=Ed25519Signer.of(signing_key),
    )


def _upload(client: TestClient, world: Any, data: bytes) -> Any:
    return client.post(
        f"{API}/updates/bundles",
        content=data,
        headers={**world.admin.headers, "Content-Type": "application/x-tar"},
    )


def _document(
    publisher: MemoryPublisher, signing_key: Ed25519PrivateKey, device: str
) -> dict[str, Any]:
    """The device's retained document, verified as the device verifies it."""
    verified = verify_desired(
        publisher.documents[device],
        device_id=device,
        pinned=signing_key.public_key(),
        applied_version=0,
    )
    return verified.content


def _say_version(engine: Engine, device: str, version: str, seq: int = 1) -> None:
    """The device's telemetry says which agent it runs (through ingest, as from the broker)."""
    IngestProcessor(engine).process([_message(device, "metrics", {"agent_version": version}, seq)])


def _message(device: str, kind: topics.UpKind, body: dict[str, Any], seq: int) -> Received:
    envelope = Envelope.create(device=device, seq=seq, kind=kind, body=body)
    return Received(topics.up(device, kind), envelope.to_bytes())


def _report(device: str, state: str, rollout: str, seq: int, reason: str | None = None) -> Received:
    body = {
        "state": state,
        "from_version": OLD,
        "to_version": NEW,
        "rollout": rollout,
        "reason": reason,
    }
    return _message(device, "update", body, seq)


# -- bundles ---------------------------------------------------------------------------------


def test_a_bundle_is_checked_kept_by_its_hash_listed_and_audited(
    *, client: TestClient, world: Any, update_key: Any, server_settings: ServerSettings
) -> None:
    data = bundle_bytes(update_key, NEW, min_previous_version="0.7.0")
    uploaded = _upload(client, world, data)
    assert uploaded.status_code == 201, uploaded.text
    body = uploaded.json()
    assert (body["version"], body["size"], body["min_previous_version"], body["files"]) == (
        NEW,
        len(data),
        "0.7.0",
        2,
    )
    stored = server_settings.data_dir / "updates" / body["sha256"]
    assert stored.read_bytes() == data
    listed = client.get(f"{API}/updates/bundles", headers=world.admin.headers)
    assert [b["version"] for b in listed.json()] == [NEW]
    assert listed.headers["X-Total-Count"] == "1"
    # Admins only.
    assert _upload(client, world, data).status_code == 409
    refused = client.post(
        f"{API}/updates/bundles", content=data, headers=world.clinician.headers
    ).status_code
    assert refused == 403


@pytest.mark.parametrize(
    ("broken", "words"),
    [
        ("tampered", "changed after it was signed"),
        ("corrupt", "is not the file the manifest lists (SHA-256 differs)"),
        ("extra", "is not listed in the manifest"),
        ("missing", "the bundle lacks 1 listed file(s)"),
        ("link", "is a link, not a regular file"),
        ("not-first", "the bundle's first member is"),
    ],
)
def test_a_broken_bundle_is_refused_saying_why_and_nothing_is_kept(
    *,
    client: TestClient,
    world: Any,
    update_key: Any,
    server_settings: ServerSettings,
    broken: Any,
    words: str,
) -> None:
    refused = _upload(client, world, bundle_bytes(update_key, NEW, broken=broken))
    assert refused.status_code == 422, refused.text
    assert words in refused.json()["error"]["message"]
    assert list((server_settings.data_dir / "updates").iterdir()) == []


def test_a_bundle_signed_by_another_key_or_not_a_tar_is_refused(
    *, client: TestClient, world: Any, update_key: Any
) -> None:
    other = bundles.UpdateKey.new()
    refused = _upload(client, world, bundle_bytes(other, NEW))
    assert refused.status_code == 422
    assert "which is not pinned here" in refused.json()["error"]["message"]
    garbage = _upload(client, world, b"this is no tar at all" * 100)
    assert garbage.status_code == 422
    assert "not an uncompressed tar" in garbage.json()["error"]["message"]


def test_a_version_is_uploaded_once(
    *, client: TestClient, world: Any, update_key: Any, server_settings: ServerSettings
) -> None:
    assert _upload(client, world, bundle_bytes(update_key, NEW)).status_code == 201
    again = _upload(client, world, bundle_bytes(update_key, NEW, min_previous_version="0.1"))
    assert again.status_code == 409, again.text
    assert "version 0.9.0 was uploaded already" in again.json()["error"]["message"]
    # The refused bytes are not left in the store.
    assert len(list((server_settings.data_dir / "updates").iterdir())) == 1


def test_without_update_keys_uploads_are_refused(
    *, client: TestClient, world: Any, update_key: Any, app: FastAPI
) -> None:
    state = app.state.resonera
    state.settings = state.settings.model_copy(update={"update_public_keys": []})
    refused = _upload(client, world, bundle_bytes(update_key, NEW))
    assert refused.status_code == 422
    assert "no update_public_keys configured" in refused.json()["error"]["message"]


def test_update_keys_must_be_raw_ed25519() -> None:
    with pytest.raises(ValueError, match="is not base64 of a raw Ed25519 public key"):
        ServerSettings(update_public_keys=["bm90IGEga2V5"])


# -- rollouts and the desired state ----------------------------------------------------------


def _rollout(client: TestClient, world: Any, **body: Any) -> Any:
    return client.post(f"{API}/updates/rollouts", json=body, headers=world.admin.headers)


def test_a_cohort_rollout_puts_a_signed_target_in_its_devices_documents(
    *,
    client: TestClient,
    world: Any,
    engine: Engine,
    update_key: Any,
    publisher: MemoryPublisher,
    signing_key: Ed25519PrivateKey,
    registered: Callable[..., str],
) -> None:
    registered("dev-spare")  # serves nobody: gets an update-only document
    for device in (world.device, world.other_device, "dev-spare"):
        _say_version(engine, device, OLD)
    sha256 = _upload(client, world, bundle_bytes(update_key, NEW)).json()["sha256"]
    for device in (world.device, "dev-spare"):
        put = client.put(
            f"{API}/devices/{device}/cohort", json={"cohort": "pilot"}, headers=world.admin.headers
        )
        assert put.json() == {"device_id": device, "cohort": "pilot"}
    made = _rollout(client, world, version=NEW, cohort="pilot")
    assert made.status_code == 201, made.text
    rollout = made.json()
    assert (rollout["state"], rollout["targeted"], rollout["pending"]) == ("active", 2, 2)

    for device in (world.device, "dev-spare"):
        target = AgentUpdateTarget.from_desired(_document(publisher, signing_key, device))
        assert target == AgentUpdateTarget(
            NEW, sha256, len(bundle_bytes(update_key, NEW)), rollout["id"]
        )
    assert world.other_device not in publisher.documents  # another cohort: nothing re-issued
    spare = _document(publisher, signing_key, "dev-spare")
    assert "profile" not in spare and "programs" not in spare  # keeps its provisioned profile
    patient = _document(publisher, signing_key, world.device)
    assert patient["patient_config_version"] == 0 and patient["programs"] == []

    # The device now runs the new version: its next document asks nothing; once every targeted
    # device runs it, the rollout is completed.
    _say_version(engine, world.device, NEW, seq=2)
    listed = client.get(f"{API}/updates/rollouts", headers=world.admin.headers).json()
    assert (listed[0]["installed"], listed[0]["pending"]) == (1, 1)
    _say_version(engine, "dev-spare", NEW, seq=2)
    with Session(engine) as session:
        row = session.get(RolloutRow, rollout["id"])
        assert row is not None and row.state == "completed"
    with Session(engine) as session:
        audits = session.exec(select(AuditRow).where(AuditRow.resource == "rollout")).all()
    assert [(a.action, a.actor_id) for a in audits] == [("create", world.admin.id)]


def test_a_percentage_takes_a_stable_bucket_and_widening_keeps_the_devices_in(
    *,
    client: TestClient,
    world: Any,
    engine: Engine,
    update_key: Any,
    publisher: MemoryPublisher,
    signing_key: Ed25519PrivateKey,
    registered: Callable[..., str],
) -> None:
    devices = [registered(f"pct-{n:02d}") for n in range(40)]
    _upload(client, world, bundle_bytes(update_key, NEW))
    first = _rollout(client, world, version=NEW, percentage=20).json()

    def asked() -> set[str]:
        return {
            d
            for d in devices
            if d in publisher.documents
            and AgentUpdateTarget.from_desired(_document(publisher, signing_key, d)) is not None
        }

    narrow = asked()
    assert narrow == {d for d in devices if bucket(d) < 20}
    assert 0 < len(narrow) < len(devices)
    wider = _rollout(client, world, version=NEW, percentage=60)
    assert wider.status_code == 201, wider.text
    assert narrow < asked() == {d for d in devices if bucket(d) < 60}
    with Session(engine) as session:
        old = session.get(RolloutRow, first["id"])
        assert old is not None and old.state == "cancelled"
    # Every document names the rollout asking now.
    assert {_document(publisher, signing_key, d)["agent_update"]["rollout"] for d in asked()} == {
        wider.json()["id"]
    }


def test_one_rollout_at_a_time_and_what_each_state_allows(
    *,
    client: TestClient,
    world: Any,
    engine: Engine,
    update_key: Any,
    publisher: MemoryPublisher,
    signing_key: Ed25519PrivateKey,
) -> None:
    _upload(client, world, bundle_bytes(update_key, NEW))
    _upload(client, world, bundle_bytes(update_key, "0.9.1"))
    client.put(
        f"{API}/devices/{world.device}/cohort", json={"cohort": "c"}, headers=world.admin.headers
    )
    rollout = _rollout(client, world, version=NEW, cohort="c").json()["id"]
    other = _rollout(client, world, version="0.9.1", cohort="c")
    assert other.status_code == 409
    assert "cancel it before rolling out another version" in other.json()["error"]["message"]
    assert _rollout(client, world, version="1.0", percentage=5).status_code == 404
    both = _rollout(client, world, version=NEW, cohort="c", percentage=5)
    assert both.status_code == 422

    def act(action: str) -> Any:
        return client.post(
            f"{API}/updates/rollouts/{rollout}/{action}", headers=world.admin.headers
        )

    assert "agent_update" in _document(publisher, signing_key, world.device)
    assert act("resume").status_code == 409
    paused = act("pause")
    assert paused.json()["state"] == "paused" and paused.json()["paused_reason"]
    assert "agent_update" not in _document(publisher, signing_key, world.device)
    assert act("resume").json()["state"] == "active"
    assert "agent_update" in _document(publisher, signing_key, world.device)
    assert act("cancel").json()["state"] == "cancelled"
    assert "agent_update" not in _document(publisher, signing_key, world.device)
    assert act("pause").status_code == 409
    # Cancelled, another version may roll out.
    assert _rollout(client, world, version="0.9.1", cohort="c").status_code == 201


def test_newer_and_too_old_devices_are_not_asked(
    *,
    client: TestClient,
    world: Any,
    engine: Engine,
    update_key: Any,
    publisher: MemoryPublisher,
    registered: Callable[..., str],
) -> None:
    for device, version in (("dev-new", "1.0.0"), ("dev-ancient", "0.1.0"), ("dev-old", OLD)):
        registered(device)
        _say_version(engine, device, version)
        client.put(
            f"{API}/devices/{device}/cohort", json={"cohort": "c"}, headers=world.admin.headers
        )
    _upload(client, world, bundle_bytes(update_key, NEW, min_previous_version="0.5"))
    rollout = _rollout(client, world, version=NEW, cohort="c").json()
    # dev-new runs a later version (installed), dev-ancient is below the minimum (out).
    assert (rollout["targeted"], rollout["installed"], rollout["pending"]) == (2, 1, 1)
    assert {d for d in ("dev-new", "dev-ancient", "dev-old") if d in publisher.documents} == {
        "dev-old"
    }


# -- reports and the automatic pause ----------------------------------------------------------


def test_failures_pause_the_rollout_and_the_others_lose_their_target(
    *,
    client: TestClient,
    world: Any,
    engine: Engine,
    update_key: Any,
    publisher: MemoryPublisher,
    signing_key: Ed25519PrivateKey,
    registered: Callable[..., str],
) -> None:
    devices = [registered(f"fl-{n}") for n in range(6)]
    for device in devices:
        _say_version(engine, device, OLD)
        client.put(
            f"{API}/devices/{device}/cohort", json={"cohort": "c"}, headers=world.admin.headers
        )
    _upload(client, world, bundle_bytes(update_key, NEW))
    rollout = _rollout(
        client, world, version=NEW, cohort="c", failure_threshold=0.25, min_failures=2
    ).json()["id"]
    desired = DesiredService(Ed25519Signer.of(signing_key), publisher)
    ingest = IngestProcessor(engine, desired=desired)
    # A step under way, then one failure: 1 of 6 is below the threshold and the minimum.
    failed = _report("fl-1", "failed", rollout, 3, "the bundle's SHA-256 is not the target's")
    result = ingest.process(
        [
            _report("fl-0", "downloading", rollout, 2),
            _report("fl-1", "downloading", rollout, 2),
            failed,
        ]
    )
    assert result.stored == 3
    # The device that failed is asked no more; the others still are.
    assert [o.device_id for o in result.outgoing] == ["fl-1"]
    desired.publish(result.outgoing)  # as the ingest consumer does after its commit
    assert "agent_update" not in _document(publisher, signing_key, "fl-1")
    assert "agent_update" in _document(publisher, signing_key, "fl-0")
    with Session(engine) as session:
        row = session.get(RolloutRow, rollout)
        assert row is not None and row.state == "active"
    # Sent again: stored once, nothing counted twice.
    again = ingest.process([failed])
    assert (again.stored, again.duplicates, again.outgoing) == (0, 1, [])

    # Two failures of six is more than 25 %: paused, and every document loses the target.
    paused = ingest.process([_report("fl-2", "rolled_back", rollout, 2, "health check: no MCU")])
    desired.publish(paused.outgoing)
    with Session(engine) as session:
        row = session.get(RolloutRow, rollout)
        assert row is not None and row.state == "paused"
        assert row.paused_reason is not None
        assert row.paused_reason.startswith("2 of 6 targeted devices failed or rolled back")
        assert "fl-2: health check: no MCU" in row.paused_reason
        audit = session.exec(select(AuditRow).where(AuditRow.action == "pause")).one()
        assert (audit.actor_email, audit.resource_id) == ("server:ingest", rollout)
        states = {r.device_id: r.state for r in session.exec(select(DeviceUpdateRow))}
        history = session.exec(select(UpdateReportRow).order_by(col(UpdateReportRow.id))).all()
    assert {o.device_id for o in paused.outgoing} == {"fl-0", "fl-2", "fl-3", "fl-4", "fl-5"}
    for device in devices:
        assert "agent_update" not in _document(publisher, signing_key, device)
    assert (states["fl-0"], states["fl-1"], states["fl-2"]) == (
        "downloading",
        "failed",
        "rolled_back",
    )
    assert [(h.device_id, h.state) for h in history] == [
        ("fl-0", "downloading"),
        ("fl-1", "downloading"),
        ("fl-1", "failed"),
        ("fl-2", "rolled_back"),
    ]

    versions = client.get(f"{API}/updates/versions", headers=world.admin.headers).json()
    line = next(v for v in versions if v["version"] == NEW)
    assert line["uploaded"] and line["running"] == 0
    assert [(s["device_id"], s["state"]) for s in line["updating"]] == [("fl-0", "downloading")]
    assert [(s["device_id"], s["reason"]) for s in line["failed"]] == [
        ("fl-1", "the bundle's SHA-256 is not the target's"),
        ("fl-2", "health check: no MCU"),
    ]
    old = next(v for v in versions if v["version"] == OLD)
    assert old["running"] == 6

    # Resumed, the failures so far no longer count; the devices that failed are not asked again.
    client.post(f"{API}/updates/rollouts/{rollout}/resume", headers=world.admin.headers)
    asked = {d for d in devices if "agent_update" in _document(publisher, signing_key, d)}
    assert asked == {"fl-0", "fl-3", "fl-4", "fl-5"}


def test_a_bad_update_report_is_quarantined_with_its_reason(
    engine: Engine, registered: Callable[..., str]
) -> None:
    registered("dev-q")
    result = IngestProcessor(engine).process(
        [_message("dev-q", "update", {"state": "exploded", "from_version": OLD}, 1)]
    )
    assert result.quarantined == 1
    with Session(engine) as session:
        reason = session.exec(select(QuarantineRow.reason)).one()
    assert reason.startswith("invalid update body: update state 'exploded' is not one of")


def test_metrics_and_the_fleet_alert_count_failed_updates(
    *, client: TestClient, world: Any, engine: Engine
) -> None:
    ingest = IngestProcessor(engine)
    ingest.process(
        [
            _report(world.device, "failed", "r-1", 1, "no space left"),
            _report(world.other_device, "rolled_back", "r-1", 1, "health check"),
            _report(world.other_device, "installed", "r-1", 2),
        ]
    )
    with engine.connect() as conn:
        condition = next(
            c
            for c in fleet_alerts.fleet_alerts(conn, datetime.now(UTC)).conditions
            if c.rule == "ResoneraUpdateFailures"
        )
        later = fleet_alerts.fleet_alerts(conn, datetime.now(UTC) + timedelta(hours=2))
    assert condition.met and condition.found == "2 failed or rolled back updates"
    assert {f.device_id for f in condition.devices} == {world.device, world.other_device}
    assert not next(c for c in later.conditions if c.rule == "ResoneraUpdateFailures").met
    text = client.get("/metrics").text
    assert "resonera_update_failures_total 2.0" in text


def test_the_migration_goes_up_and_down_keeping_the_devices(empty_engine: Engine) -> None:
    migrate(empty_engine, "0018")
    with empty_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO device (id, cert_fingerprint, revoked, note, created_at) "
                "VALUES ('dev-m', '', :no, '', :at)"
            ),
            {"no": False, "at": datetime.now(UTC)},
        )
    migrate(empty_engine)
    with Session(empty_engine) as db:
        device = db.get(DeviceRow, "dev-m")
        assert device is not None and device.cohort is None  # registered before: in no cohort
    config = alembic_config()
    with empty_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0018")
    inspector = sa.inspect(empty_engine)
    assert "cohort" not in {c["name"] for c in inspector.get_columns("device")}
    assert not {"agent_bundle", "rollout", "device_update", "update_report"} & set(
        inspector.get_table_names()
    )
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM device")).scalars().all() == ["dev-m"]
