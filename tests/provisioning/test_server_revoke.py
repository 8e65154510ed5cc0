"""Revoking a device from the server's API when the server holds the issuing CA: its certificates
go on the CRL, the broker reload command runs (here: SIGHUP to the test mosquitto) and the broker
refuses the device; a failing command or a server without the CA is said in the answer, never a
500. The device's data stays. (The dashboard's button: tests/dashboard/test_dashboard_revoke.py.)"""

from __future__ import annotations

from typing import Any

from enrolled_fleet import Fleet, add_admin, broker_admits, enrolled, fleet_app, sighup_command
from factories import make_record
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from support import wait_until

from resonera.device.enroll import renew
from resonera.device.settings import DeviceSettings
from resonera.device.sync import DeviceSync
from resonera.server.ingest_mqtt import IngestConsumer
from resonera.server.models import AuditRow, DeviceCertificateRow, DeviceRow, SessionRow

API = "/api/v1"


def revoke(fleet: Fleet, command: list[str] | None, device_id: str, how: str) -> dict[str, Any]:
    _email, token = add_admin(fleet, "correct horse battery staple")
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(fleet_app(fleet, command), raise_server_exceptions=False) as client:
        if how == "patch":
            answer = client.patch(
                f"{API}/devices/{device_id}", json={"revoked": True}, headers=headers
            )
        else:
            answer = client.post(f"{API}/devices/{device_id}/revoke", headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def audit_actions(fleet: Fleet) -> list[tuple[str, str]]:
    with Session(fleet.engine) as db:
        rows = db.exec(select(AuditRow).order_by(col(AuditRow.id))).all()
        return [(r.action, r.resource) for r in rows]


def test_revoking_on_the_api_makes_the_broker_refuse_the_device(fleet: Fleet) -> None:
    settings = enrolled(fleet, "dev-40", "SN-40")
    ingest = IngestConsumer(
        fleet.settings.model_copy(update={"mqtt": fleet.server_mqtt()}), fleet.engine
    )
    ingest.start()
    try:
        store = settings.open_store()
        store.record_session("dev-40", make_record())
        with DeviceSync(settings, store) as sync:
            assert sync.drain(timeout_s=30), sync.last_error
        store.close()
    finally:
        ingest.stop()
    assert broker_admits(settings.mqtt, "dev-40")

    body = revoke(fleet, sighup_command(fleet.broker), "dev-40", "post")
    assert body["revoked"] is True
    assert "1 certificate(s) added to the CRL" in body["revocation"]
    assert "the broker was reloaded and refuses it" in body["revocation"]
    wait_until(
        lambda: not broker_admits(settings.mqtt, "dev-40"), what="the broker to refuse dev-40"
    )
    assert [r.device_id for r in fleet.issuing.revocations()] == ["dev-40"]
    with Session(fleet.engine) as db:
        assert len(db.exec(select(SessionRow)).all()) == 1  # its data stays
        device = db.get(DeviceRow, "dev-40")
        assert device is not None and device.revoked
        certs = db.exec(select(DeviceCertificateRow)).all()
        assert certs and all(c.revoked_at is not None for c in certs)
    actions = audit_actions(fleet)
    assert ("update", "device") in actions
    assert ("revoke", "device_certificate") in actions
    assert ("broker_reload", "broker") in actions


def test_a_renewed_device_loses_every_certificate_and_patch_revokes_too(fleet: Fleet) -> None:
    settings = enrolled(fleet, "dev-41", "SN-41")
    renew(settings)
    body = revoke(fleet, sighup_command(fleet.broker), "dev-41", "patch")
    assert "2 certificate(s) added to the CRL" in body["revocation"]
    fresh = DeviceSettings(device_id="dev-41", data_dir=settings.data_dir)
    wait_until(lambda: not broker_admits(fresh.mqtt, "dev-41"), what="the broker to refuse dev-41")


def test_a_failing_reload_command_is_reported_and_audited(fleet: Fleet) -> None:
    settings = enrolled(fleet, "dev-42", "SN-42")
    body = revoke(fleet, ["false"], "dev-42", "post")
    assert body["revoked"] is True
    assert "The broker reload command `false` exited with 1" in body["revocation"]
    assert "reload the broker by hand" in body["revocation"]
    assert ("broker_reload_failed", "broker") in audit_actions(fleet)
    missing = revoke(fleet, ["/nonexistent/reload-broker"], "dev-42", "post")
    assert "could not be started" in missing["revocation"]
    # the CRL is written: the broker refuses the device once it is reloaded by hand
    fleet.broker.reload()
    wait_until(
        lambda: not broker_admits(settings.mqtt, "dev-42"), what="the broker to refuse dev-42"
    )


def test_without_the_issuing_ca_the_answer_says_how_to_revoke_the_certificate(
    fleet: Fleet,
) -> None:
    settings = enrolled(fleet, "dev-43", "SN-43")
    fleet.settings = fleet.settings.model_copy(
        update={"enrollment": fleet.settings.enrollment.model_copy(update={"issuing_ca_dir": None})}
    )
    body = revoke(fleet, sighup_command(fleet.broker), "dev-43", "post")
    assert body["revoked"] is True
    assert "resonera-provision device revoke" in body["revocation"]
    assert fleet.issuing.revocations() == []
    assert broker_admits(settings.mqtt, "dev-43")  # only the CA's CRL can keep it out
