"""A device revoked through the server's API learns it: connected, from the server's signed
``revoked`` notice on its desired-state topic; at its next start, from the broker's TLS alert once
the broker reads the CRL. Its outbox is kept throughout (``docs/shut-out.md``)."""

from __future__ import annotations

from enrolled_fleet import Fleet, add_admin, broker_admits, enrolled, fleet_app, sighup_command
from factories import make_record
from fastapi.testclient import TestClient
from support import wait_until

from resonera.device.sync import DeviceSync
from resonera.server.crypto import Ed25519Signer
from resonera.server.desired import DesiredService, MqttPublisher


def revoke(fleet: Fleet, device_id: str, desired: DesiredService) -> str:
    """Revoke through the API, which puts the certificates on the CRL, reloads the broker and
    publishes the notice signed with the server's key (``desired``)."""
    _email, token = add_admin(fleet, "correct horse battery staple")
    app = fleet_app(fleet, sighup_command(fleet.broker), desired)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post(
            f"/api/v1/devices/{device_id}/revoke", headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["revocation"])


def test_a_device_revoked_on_the_server_learns_it_and_keeps_its_outbox(fleet: Fleet) -> None:
    settings = enrolled(fleet, "dev-70", "SN-70")
    assert settings.server_public_key  # pinned at enrollment: the notice verifies with it
    server = fleet.settings.model_copy(update={"mqtt": fleet.server_mqtt()})
    assert server.desired_signing_key_file is not None
    desired = DesiredService(
        Ed25519Signer.from_file(server.desired_signing_key_file), MqttPublisher(server)
    )
    store = settings.open_store()
    try:
        with DeviceSync(settings, store) as sync:
            wait_until(lambda: sync.connected, what="the device to connect")
            # after the revocation's commit the API publishes its notice (retained)
            assert "the broker was reloaded" in revoke(fleet, "dev-70", desired)
            wait_until(lambda: sync.shut_out is not None, what="the notice", timeout=15)
            assert sync.shut_out is not None and sync.shut_out.kind == "revoked"
            assert "revoked on the server" in sync.shut_out.reason
            store.record_session("dev-70", make_record())  # played while shut out: kept
        assert store.outbox_depth() == 1
        wait_until(lambda: not broker_admits(settings.mqtt, "dev-70"), what="the CRL in force")
        # restarted: still shut out, and the broker's alert says so again; nothing is lost
        with DeviceSync(settings, store) as again:
            assert again.shut_out is not None and again.shut_out.kind == "revoked"
            wait_until(lambda: again.held_checks >= 1, what="the refused connection held")
            assert again.last_error is not None and "revoked" in again.last_error
        assert store.outbox_depth() == 1
    finally:
        desired.publisher.close()
        store.close()
