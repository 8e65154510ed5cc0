"""A clinician resets a device's corrupted dose ledger, every hop real: REST API → signed desired state
retained on mosquitto → device sync → the ledger, once → ``dose_ledger_reset`` safety event and report
→ mosquitto → server ingest → the API shows the reset applied. A reconnect (the retained document
again) resets nothing more."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from clinic import clinic, signing_key
from device_peer import device_settings
from support import Mosquitto, wait_until

from resonera.device.desired_state import DesiredStateApplier
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.settings import DeviceSettings
from resonera.device.sync import DeviceSync

DEVICE = "e2e-reset-1"


def _damage(ledger_path: Path) -> None:
    with sqlite3.connect(ledger_path) as conn:
        conn.execute("UPDATE dose_minute SET seconds = seconds + 1")


def _week(device: DeviceSettings) -> tuple[float, bool]:
    ledger = DoseLedger.for_settings(device)
    try:
        status = ledger.status(1_800_000_000.0 + 120)
        return status.fraction, status.corrupted
    finally:
        ledger.close()


def _sync(device: DeviceSettings, store: Any) -> DeviceSync:
    applier = DesiredStateApplier(
        store,
        DEVICE,
        device.pinned_server_key(),
        device.profile,
        open_ledger=lambda: DoseLedger.for_settings(device),
        simulation=device.simulation,
    )
    return DeviceSync(device, store, desired=applier)


def test_a_clinician_reset_reaches_the_device_once_and_comes_back_applied(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    key_file, server_public_key = signing_key(tmp_path)
    device = device_settings(mosquitto, tmp_path, DEVICE, server_public_key=server_public_key)
    store = device.open_store()
    ledger = DoseLedger.for_settings(device)  # sealed under the store's data key
    ledger.add_energy(1_800_000_000.0, pa2s=0.25 * 5760.0, seconds=60)
    ledger.close()
    _damage(device.dose_ledger_path)
    assert _week(device) == (1.0, True)

    with clinic(mosquitto, tmp_path, DEVICE, key_file) as site:
        api = site.api
        posted = api.post("/dose-ledger/reset", json={"reason": "ledger damaged, log reviewed"})
        assert posted.status_code == 202, posted.text
        [request] = posted.json()
        assert request["status"] == "pending"

        with _sync(device, store) as sync:
            wait_until(lambda: not _week(device)[1], timeout=30, what="the ledger reset")
            assert sync.drain(timeout_s=30), sync.last_error

        def answered() -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = api.get("/dose-ledger/reset").json()
            return result

        wait_until(lambda: answered()[0]["status"] != "pending", timeout=30, what="the answer")
        [done] = answered()
        assert done["id"] == request["id"]
        assert done["status"] == "applied"
        assert done["removed_rows"] == 1
        assert done["week_fraction_before"] == 1.0
        assert abs(done["week_fraction_after"] - 0.0) < 1e-9  # the damaged minute was all of it
        events = api.get("/safety-events", params={"type": "dose_ledger_reset"}).json()
        assert [e["body"]["dose_reset"]["reset_id"] for e in events] == [request["id"]]

        # damaged again; a reconnect brings the retained document (still naming the request until
        # the server saw the answer) once more: the old request does not reset it again
        ledger = DoseLedger.for_settings(device)
        ledger.add_energy(1_800_000_000.0 + 60, pa2s=1.0, seconds=60)
        ledger.close()
        _damage(device.dose_ledger_path)
        with _sync(device, store) as sync:
            assert sync.drain(timeout_s=30), sync.last_error
        assert _week(device)[1]  # still corrupted: a new reset needs a new request
        assert [e.type for e in store.events()] == ["dose_ledger_reset"]
        assert len(api.get("/safety-events", params={"type": "dose_ledger_reset"}).json()) == 1
        with sqlite3.connect(site.database) as db:
            reports = [
                json.loads(body)
                for (body,) in db.execute("SELECT body FROM device_message WHERE kind = 'reported'")
            ]
        assert {
            "desired_version": 1,
            "status": "applied",
            "dose_ledger_reset": {"id": request["id"], "status": "applied"},
        } in reports
        with sqlite3.connect(site.database) as db:
            # the server took the report (not quarantined): the device runs version 1
            (applied,) = db.execute(
                "SELECT reported_version FROM device_state WHERE device_id = ?", (DEVICE,)
            ).fetchone()
        assert applied == 1
