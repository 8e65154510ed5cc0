"""Safety events: stored and queued atomically, written off the caller's thread, marked when
simulated; the adapter the monitor and the safety state machine share."""

from __future__ import annotations

from pathlib import Path

import pytest

from resonera.common import serial_link as sl
from resonera.common.envelope import decode_envelope
from resonera.common.ids import new_id
from resonera.common.records import SafetyEventRecord
from resonera.common.safety_link import HardLimits
from resonera.device.safety_events import (
    SafetyEventRecorder,
    limits_record,
    readings_from_telemetry,
)
from resonera.device.store import DeviceStore


def test_record_event_stores_and_queues_in_one_transaction(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    with SafetyEventRecorder(store, "dev-a", simulation=False) as recorder:
        record = recorder.event(
            "consent_withdrawn",
            "MCU fault: amplifier over temperature",
            code=sl.FAULT_OVER_TEMPERATURE,
            readings=readings_from_telemetry(sl.Telemetry(95.0, 0.3, 0.5, 2.0, 0.0, 0x01, 1)),
            limits=limits_record(HardLimits(2.0, 85.0, 1.5, 50.0, 0.0)),
            hardware_board="b-1 fw 1.0.0",
        )
        assert recorder.flush()
    assert store.events() == [record]
    [entry] = store.pending()
    assert entry.kind == "event"
    assert entry.topic == "resonera/v1/dev/dev-a/up/event"
    sent = SafetyEventRecord.model_validate(decode_envelope(entry.payload).body)
    assert sent == record
    assert sent.readings is not None
    assert (sent.readings.amp_temp_c, sent.readings.muted, sent.readings.fault_code) == (
        95.0,
        True,
        1,
    )
    assert sent.limits is not None
    assert sent.limits.max_amp_temp_c == 85.0
    assert recorder.written == 1


def test_sessions_and_events_share_one_sequence(tmp_path: Path) -> None:
    from factories import make_record

    store = DeviceStore(tmp_path / "device.db")
    a = store.record_session("dev-a", make_record())
    recorder = SafetyEventRecorder(store, "dev-a", simulation=True)
    recorder.event("transition", "amplifier warm", from_state="playing", to_state="attenuating")
    recorder.close()
    b = store.record_session("dev-a", make_record())
    assert [e.seq for e in store.pending()] == [a.seq, a.seq + 1, b.seq]
    [event] = store.events()
    assert (event.type, event.from_state, event.to_state) == (
        "transition",
        "playing",
        "attenuating",
    )
    assert event.simulation is True  # every record of a simulated device says so


def test_events_are_listed_newest_first(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    with SafetyEventRecorder(store, "dev-a", simulation=False) as recorder:
        kinds = ["fault", "warning", "warning_cleared", "consent_withdrawn"]
        for kind in kinds:
            recorder.event(kind, kind)  # type: ignore[arg-type]
    assert [e.type for e in store.events()] == kinds[::-1]
    assert [e.type for e in store.events(limit=2)] == kinds[:1:-1]


class BrokenStore(DeviceStore):
    def record_event(self, device_id: str, record: SafetyEventRecord) -> object:  # type: ignore[override]
        raise OSError("disk on fire")


def test_a_failing_store_is_counted_never_raised_into_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = SafetyEventRecorder(BrokenStore(tmp_path / "d.db"), "dev-a", simulation=False)
    recorder.event("fault", "MCU fault: x")  # returns; the writer logs the failure
    assert recorder.flush()
    recorder.close()
    assert (recorder.written, recorder.failed) == (0, 1)
    assert "cannot store safety event fault" in caplog.text
    recorder.event("fault", "after close")
    assert recorder.failed == 2


def test_records_refuse_nothing_a_sensor_can_say() -> None:
    readings = readings_from_telemetry(
        sl.Telemetry(float("nan"), float("inf"), -float("inf"), 1e39, 0.0, 0xFF, 0xFF)
    )
    assert readings is not None
    assert readings.amp_temp_c == 0.0
    assert readings.supply_current_a == 3.4e38
    assert readings_from_telemetry(None) is None
    record = SafetyEventRecord(
        event_id=new_id(),
        at="2026-11-24T10:00:00Z",
        type="warning",
        cause="amplifier temperature 80.0 °C nearing limit 85.0 °C",
        readings=readings,
        simulation=False,
        attenuation_db=-6.0,
    )
    assert SafetyEventRecord.model_validate_json(record.model_dump_json()) == record
