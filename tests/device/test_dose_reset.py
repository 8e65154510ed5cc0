"""A clinician's reset of a corrupted dose ledger, as the device takes it from the signed desired state:
carried out once per request, between sessions only, refused on an intact ledger, recorded as a
``dose_ledger_reset`` safety event with the week before, and reported."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from device_peer import ServerKey, device_settings

from resonera.common.ids import new_id
from resonera.device.crypto_store import write_key_file
from resonera.device.desired_state import DesiredStateApplier
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore

T0 = 1_800_000_000.0
DEVICE = "reset-dev"


class Device:
    """A store, a ledger with 20 % of the week used and one damaged minute, and an applier."""

    def __init__(self, tmp_path: Path, server_key: ServerKey) -> None:
        self.key = server_key
        self.settings: DeviceSettings = device_settings(
            None, tmp_path, DEVICE, server_public_key=server_key.public_b64
        )
        self.store: DeviceStore = self.settings.open_store()
        ledger = self.ledger()
        ledger.add_energy(T0, pa2s=0.2 * 5760.0, seconds=60)
        ledger.add_energy(T0 + 60, pa2s=3.0, seconds=60)
        ledger.close()
        self.damage(T0 + 60)
        self.applier = self.new_applier()

    def ledger(self) -> DoseLedger:
        return DoseLedger.for_settings(self.settings)

    def new_applier(self) -> DesiredStateApplier:
        return DesiredStateApplier(
            self.store,
            DEVICE,
            self.settings.pinned_server_key(),
            self.settings.profile,
            open_ledger=self.ledger,
            simulation=True,
            wall_clock=lambda: T0 + 300,
        )

    def damage(self, at: float) -> None:
        with sqlite3.connect(self.settings.dose_ledger_path) as conn:
            conn.execute("UPDATE dose_minute SET seconds = 59 WHERE minute = ?", (int(at // 60),))

    def week(self) -> float:
        ledger = self.ledger()
        try:
            return ledger.status(T0 + 300).fraction
        finally:
            ledger.close()

    def payload(self, version: int, *resets: dict[str, Any]) -> bytes:
        return self.key.payload(DEVICE, version, dose_ledger_reset=list(resets))

    def reports(self) -> list[dict[str, Any]]:
        messages = [m for m in self.store.pending(limit=1000) if m.kind == "reported"]
        bodies = [json.loads(m.payload)["body"] for m in messages]
        return [b for b in bodies if "dose_ledger_reset" in b]


def _request(reason: str = "ledger damaged after a power cut") -> dict[str, Any]:
    return {"id": new_id(), "reason": reason, "requested_by": "dr.moreau@clinic.example"}


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path, ServerKey())


def test_a_reset_is_applied_once_recorded_with_the_week_before_and_reported(
    device: Device,
) -> None:
    assert device.week() == 1.0  # a corrupted ledger counts as the whole allowance used
    request = _request()
    assert device.applier.handle(device.payload(1, request)).outcome == "applied"
    assert device.week() == pytest.approx(0.2)  # the intact minutes still count

    [event] = device.store.events()
    assert event.type == "dose_ledger_reset"
    assert event.dose_reset is not None
    assert event.dose_reset.reset_id == request["id"]
    assert event.dose_reset.applied
    assert event.dose_reset.removed_rows == 1
    assert event.dose_reset.week_fraction_before == 1.0
    assert event.dose_reset.week_fraction_after == pytest.approx(0.2)
    assert event.dose_reset.requested_by == "dr.moreau@clinic.example"
    assert "ledger damaged after a power cut" in event.cause
    assert device.reports() == [
        {
            "desired_version": 1,
            "status": "applied",
            "dose_ledger_reset": {"id": request["id"], "status": "applied"},
        }
    ]

    # the ledger is damaged again; a newer document still carries the same request, and the
    # retained copy comes back after a reconnect: neither resets again
    device.damage(T0)
    assert device.applier.handle(device.payload(2, request)).outcome == "applied"
    assert device.applier.handle(device.payload(2, request)).outcome == "unchanged"
    assert device.new_applier().handle(device.payload(2, request)).outcome == "unchanged"
    assert device.week() == 1.0
    assert len(device.store.events()) == 1
    assert len(device.reports()) == 1


def test_a_replayed_older_document_resets_nothing(device: Device) -> None:
    first = _request()
    device.applier.handle(device.payload(1, first))
    device.applier.handle(device.payload(2))
    device.damage(T0)
    # an attacker (or a stale retained copy) replays document 1, and one with a forged new request
    replay = device.applier.handle(device.payload(1, first))
    assert replay.outcome == "refused"
    assert device.applier.handle(device.payload(1, _request())).outcome == "refused"
    assert device.week() == 1.0
    assert [e.type for e in device.store.events()] == ["dose_ledger_reset"]


def test_a_reset_of_an_intact_ledger_is_refused_and_said_so(device: Device) -> None:
    device.applier.handle(device.payload(1, _request()))  # repairs it
    second = _request("patient says the week felt short")
    device.applier.handle(device.payload(2, second))
    assert device.week() == pytest.approx(0.2)  # nothing given back
    refusal = device.store.events()[0]
    assert refusal.dose_reset is not None and not refusal.dose_reset.applied
    assert "not corrupted" in refusal.cause
    assert device.reports()[-1] == {
        "desired_version": 2,
        "status": "applied",
        "dose_ledger_reset": {
            "id": second["id"],
            "status": "refused",
            "reason": "the dose ledger is not corrupted",
        },
    }


def test_during_a_session_the_reset_waits_for_its_end(device: Device) -> None:
    device.applier.session_started()
    # the document only carries a reset: its limits are those already in force, so it applies
    assert device.applier.handle(device.payload(1, _request())).outcome == "applied"
    assert device.week() == 1.0  # not while the chain is playing against the ledger
    assert device.store.events() == []
    device.applier.session_ended()
    assert device.week() == pytest.approx(0.2)
    assert [e.type for e in device.store.events()] == ["dose_ledger_reset"]


def test_a_malformed_request_refuses_the_document(device: Device) -> None:
    bad = {"id": "not-an-id", "reason": "x"}
    result = device.applier.handle(device.payload(1, bad))
    assert result.outcome == "refused"
    assert "dose_ledger_reset[0].id must be a UUIDv7" in result.reason
    no_reason = device.applier.handle(device.payload(2, {"id": new_id(), "reason": " "}))
    assert "reason must be 1-500 characters" in no_reason.reason
    assert device.week() == 1.0


def test_an_event_lost_to_a_crash_is_written_on_the_next_look(device: Device) -> None:
    request = _request()
    ledger = device.ledger()
    ledger.reset(request["id"], T0 + 300, reason=request["reason"])  # then the process died
    ledger.close()
    device.applier.handle(device.payload(1, request))
    [event] = device.store.events()
    assert event.dose_reset is not None and event.dose_reset.removed_rows == 1
    device.applier.handle(device.payload(2, request))
    assert len(device.store.events()) == 1


def test_a_ledger_whose_key_is_lost_keeps_the_request_for_later(device: Device) -> None:
    key_file = device.settings.data_key_path
    saved = key_file.read_bytes()
    key_file.unlink()  # the store has its key in memory; the ledger cannot open without it
    assert device.applier.handle(device.payload(1, _request())).outcome == "applied"
    assert device.store.events() == []  # nothing done, nothing claimed; the sync thread lives on
    write_key_file(saved, key_file)
    device.applier.session_started()
    device.applier.session_ended()  # the next look carries it out
    assert device.week() == pytest.approx(0.2)
    assert [e.type for e in device.store.events()] == ["dose_ledger_reset"]
