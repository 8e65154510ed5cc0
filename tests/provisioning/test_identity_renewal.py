"""Renewal on the device, with a real fleet (HTTPS server, two-tier CA, mutual-TLS mosquitto): a
crash at any step of installing the new identity leaves a key and certificate that belong together
(checked by a TLS connect), a running sync moves to the new certificate by itself, and what was
queued before a renewal is accepted after it."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from enrolled_fleet import ISSUING_PASSPHRASE, Fleet, broker_admits, enrolled
from factories import make_record
from sqlmodel import Session, select
from support import wait_until

from resonera.common.identity import load_private_key
from resonera.device import identity as identity_module
from resonera.device.enroll import EnrollError, Identity, renew, renewed_mqtt
from resonera.device.settings import DeviceSettings
from resonera.device.sync import DeviceSync
from resonera.server.ingest_mqtt import IngestConsumer
from resonera.server.models import SessionRow


def consistent(settings: DeviceSettings) -> bytes:
    """The certificate in force, after checking that its key belongs to it (ssl refuses a
    mismatched pair) and that the broker lets it in."""
    fresh = DeviceSettings(device_id=settings.device_id, data_dir=settings.data_dir)
    mqtt = fresh.mqtt
    assert mqtt.cert_file is not None and mqtt.key_file is not None
    ssl.create_default_context().load_cert_chain(mqtt.cert_file, mqtt.key_file)
    assert broker_admits(mqtt, settings.device_id)
    return mqtt.cert_file.read_bytes()


class Crash(OSError):
    """Stands in for the power going away at one step of writing the identity."""


def crash_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the ``step``-th file write (or sync) of the next renewal fail."""
    calls = [0]

    def failing(real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == step:
                raise Crash(f"injected crash at step {step}")
            return real(*args, **kwargs)

        return wrapper

    # every write to the identity folder is in device/identity.py
    for name in ("_write", "_fsync", "write_private_key"):
        monkeypatch.setattr(identity_module, name, failing(getattr(identity_module, name)))


def test_a_crash_at_any_step_of_a_renewal_leaves_a_working_identity(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = enrolled(fleet, "dev-30", "SN-30")
    original = consistent(settings)
    step = 1
    while True:
        with monkeypatch.context() as patch:
            crash_at(step, patch)
            try:
                renew(settings)
            except EnrollError as exc:
                assert f"injected crash at step {step}" in str(exc)
            else:
                break
        # old or new, but whole: key and certificate match and the broker admits them
        in_force = consistent(settings)
        assert in_force == original  # the switch is the last write: nothing switched yet
        step += 1
    assert step > 5  # crashed at every write and sync before the switch
    renewed = consistent(settings)
    assert renewed != original
    folder = Identity.of(settings.data_dir).folder
    # one version folder and the pointer: the crashed attempts left no litter, no pending key
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["current.json", Identity.of(settings.data_dir).current.name]
    )


#: ``renew`` in a process that SIGKILLs itself at the Nth file write or sync (argv: device id,
#: data dir, N): a real crash, with no exception handler or ``finally`` running.
KILLED_RENEWAL = """
import os, signal, sys
from pathlib import Path
from resonera.device import enroll, identity
from resonera.device.settings import DeviceSettings

calls = [0]

def dying(real):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapper

for name in ("_write", "_fsync", "write_private_key"):
    setattr(identity, name, dying(getattr(identity, name)))
enroll.renew(DeviceSettings(device_id=sys.argv[1], data_dir=Path(sys.argv[2])))
"""


def test_a_renewal_killed_at_any_step_leaves_a_working_identity(fleet: Fleet) -> None:
    settings = enrolled(fleet, "dev-35", "SN-35")
    seen = {consistent(settings)}
    for step in range(1, 30):
        done = subprocess.run(
            [sys.executable, "-c", KILLED_RENEWAL, "dev-35", str(settings.data_dir), str(step)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        seen.add(consistent(settings))  # old or new, whole, and the broker admits it
        if done.returncode == 0:
            break
        assert done.returncode == -signal.SIGKILL, done.stderr
    else:
        pytest.fail("the renewal never got past the injected kills")
    assert step > 5 and len(seen) >= 2  # killed at every step, and renewed in the end
    identity = Identity.of(settings.data_dir)
    assert sorted(p.name for p in identity.folder.iterdir()) == [
        "current.json",
        identity.current.name,
    ]


def test_a_crash_after_the_server_answered_is_retried_with_the_same_key(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = enrolled(fleet, "dev-31", "SN-31")
    issued_before = len(list((fleet.issuing.directory / "issued").iterdir()))
    with monkeypatch.context() as patch:
        crash_at(4, patch)  # after the pending key was kept: the server signed, the install died
        with pytest.raises(EnrollError, match="injected crash"):
            renew(settings)
    assert len(list((fleet.issuing.directory / "issued").iterdir())) == issued_before + 1
    renew(settings)  # the server's newest certificate is for the pending key: it comes again
    assert len(list((fleet.issuing.directory / "issued").iterdir())) == issued_before + 1
    consistent(settings)


def test_an_identity_in_the_layout_before_versions_still_works_and_renews(fleet: Fleet) -> None:
    settings = enrolled(fleet, "dev-32", "SN-32")
    identity = Identity.of(settings.data_dir)
    version = identity.current
    for entry in version.iterdir():
        entry.rename(identity.folder / entry.name)
    version.rmdir()
    identity.pointer_path.unlink()
    assert identity.current == identity.folder
    old = consistent(settings)
    renew(settings)
    assert consistent(settings) != old
    assert not (identity.folder / "device.key").exists()


def test_a_running_sync_moves_to_the_renewed_certificate(fleet: Fleet) -> None:
    settings = enrolled(fleet, "dev-33", "SN-33")
    identity = Identity.of(settings.data_dir)
    old_cert = identity.certificate()
    old_files = fleet.workdir / "old-identity"
    old_files.mkdir()
    for name in ("device.key", "device.crt", "chain.pem"):
        (old_files / name).write_bytes((identity.current / name).read_bytes())
    old_mqtt = settings.mqtt.model_copy(
        update={
            "key_file": old_files / "device.key",
            "cert_file": old_files / "device.crt",
            "ca_file": old_files / "chain.pem",
        }
    )
    ingest = IngestConsumer(
        fleet.settings.model_copy(update={"mqtt": fleet.server_mqtt()}), fleet.engine
    )
    ingest.start()
    store = settings.open_store()
    try:
        with DeviceSync(settings, store) as sync:
            store.record_session("dev-33", make_record())
            assert sync.drain(timeout_s=30), sync.last_error
            renew(settings)
            # as the agent's renewal does: sign with the new key, reconnect with the new cert
            store.signing_key = load_private_key(identity.key_path)
            mqtt = renewed_mqtt(settings)
            assert mqtt is not None and mqtt.cert_file == identity.cert_path
            sync.reconnect(mqtt)
            wait_until(lambda: sync.connected, what="the sync to reconnect")
            # the old certificate is revoked and the broker restarted: every connection is new,
            # and only the renewed certificate gets in
            fleet.issuing.revoke(old_cert, "dev-33", "superseded", ISSUING_PASSPHRASE)
            fleet.broker.stop()
            fleet.broker.start()
            assert not broker_admits(old_mqtt, "dev-33")
            store.record_session("dev-33", make_record())
            assert sync.drain(timeout_s=60), sync.last_error
    finally:
        store.close()
        ingest.stop()
    with Session(fleet.engine) as db:
        rows = db.exec(select(SessionRow)).all()
        assert len(rows) == 2  # nothing lost, nothing twice
        assert all(r.sig_status == "verified" for r in rows)


def test_what_was_queued_before_a_renewal_is_accepted_after_it(fleet: Fleet) -> None:
    """Renewal does not wait for the outbox to empty (it may never, offline or shut out): a
    session queued with the old key and sent after the renewal is stored, verified."""
    settings = enrolled(fleet, "dev-35", "SN-35")
    ingest = IngestConsumer(
        fleet.settings.model_copy(update={"mqtt": fleet.server_mqtt()}), fleet.engine
    )
    ingest.start()
    store = settings.open_store()
    try:
        store.record_session("dev-35", make_record())  # offline: queued, signed with the old key
        renew(settings)
        store.signing_key = load_private_key(Identity.of(settings.data_dir).key_path)
        store.record_session("dev-35", make_record())  # signed with the new key
        renewed = DeviceSettings(device_id=settings.device_id, data_dir=settings.data_dir)
        with DeviceSync(renewed, store) as sync:
            assert sync.drain(timeout_s=60), sync.last_error
    finally:
        store.close()
        ingest.stop()
    with Session(fleet.engine) as db:
        rows = db.exec(select(SessionRow).where(SessionRow.device_id == "dev-35")).all()
        assert len(rows) == 2
        assert all(r.sig_status == "verified" for r in rows)


def test_tls_files_configured_elsewhere_are_left_alone(fleet: Fleet, tmp_path: Path) -> None:
    settings = enrolled(fleet, "dev-34", "SN-34")
    elsewhere = settings.mqtt.model_copy(update={"cert_file": tmp_path / "own.crt"})
    assert renewed_mqtt(settings.model_copy(update={"mqtt": elsewhere})) is None
