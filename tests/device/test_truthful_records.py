"""Truthful records on the device (issue 21): routine hand-overs of the safety MCU (consent granted
and given back by claims and releases, the link up and closed, a normal start and end) are counted,
not recorded; a normal end is no fault and leaves the session idle; a real fault still records;
an accidental 0.05 s start does not use up the day's sessions, a 61 s one does, and every second
played counts toward the dose. The simulator on its real pty stands in for the MCU."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from factories import make_record
from support import wait_until

from resonera.common.program import load_program_toml
from resonera.device.hwmonitor import HardwareMonitor
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.safety.state import State
from resonera.device.safety_events import SafetyEventRecorder
from resonera.device.session import Session, SessionWatch, daily_limit_refusal, standalone_parts
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.engine.audio.calibration import packaged_calibration
from resonera.engine.audio.sinks import NullSink
from resonera.hardware.sim import Simulator

# Times the safety MCU's watchdogs against real time: the main pass only.
pytestmark = pytest.mark.realtime

SHORT = """
name = "short"
fade_in_s = 0.2
fade_out_s = 0.2
[[steps]]
duration_s = 2
[[steps.layers]]
type = "tone"
frequency_hz = 1000
gain = 0.3
"""


def _settings(tmp_path: Path, **changes: object) -> DeviceSettings:
    values: dict[str, object] = {
        "device_id": "truthful-dev",
        "data_dir": tmp_path,
        "calibration_file": packaged_calibration(),
        "arm_timeout_s": 3.0,
    }
    values.update(changes)
    return DeviceSettings.model_validate(values)


def test_claims_and_releases_are_counted_and_not_recorded(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    with Simulator() as sim, SafetyEventRecorder(store, "dev-a", simulation=False) as recorder:
        monitor = HardwareMonitor(sim.port_path, events=recorder)
        monitor.start()
        try:
            for _ in range(3):  # a prompt between sessions, then a session
                prompt = monitor.claim("a prompt between sessions", timeout_s=3.0)
                prompt.release()
                session = monitor.claim("a session", timeout_s=3.0, preempt=True)
                session.release()
            # a session taking over a prompt still speaking: one hand-over, no withdrawal
            prompt = monitor.claim("a prompt between sessions", timeout_s=3.0)
            session = monitor.claim("a session", timeout_s=3.0, preempt=True)
            prompt.release()  # late: mutes nothing of the session's
            assert session.consent
            session.release()
            wait_until(lambda: sim.muted, 5, "the MCU to mute")
        finally:
            monitor.stop()
        assert recorder.flush()
    assert store.events() == []
    assert recorder.routine_counts() == {
        "consent_granted": 7,
        "device_mutes": 7,
        "link_up": 1,
        "link_closed": 1,
        "link_drops": 0,
        "session_transitions": 0,
    }


def test_a_normal_end_is_no_fault_and_leaves_the_session_idle(tmp_path: Path) -> None:
    with Simulator() as sim:
        settings = _settings(tmp_path, serial_url=sim.port_path)
        store = DeviceStore(settings.store_path)
        with standalone_parts(settings, store) as parts:
            assert parts.monitor is not None
            for _ in range(3):
                session = Session(parts)
                record = session.run(load_program_toml(SHORT), NullSink())
                assert record.outcome == "completed", record.reason
                assert session.supervisor is not None
                assert session.supervisor.state is State.IDLE
                # a prompt between sessions: the MCU claimed and given back
                parts.monitor.claim("a prompt between sessions", timeout_s=3.0).release()
                time.sleep(0.3)  # the release's MUTE lands while nothing listens for the session
                assert session.supervisor.state is State.IDLE
            counts = parts.recorder.routine_counts()
        assert parts.recorder.flush()
    assert store.events(limit=100) == []  # nothing but routine hand-overs happened
    assert counts["session_transitions"] == 9  # idle -> arming -> playing -> idle, three times
    assert counts["consent_granted"] == counts["device_mutes"] == 6


def test_a_real_fault_mid_session_is_still_recorded(tmp_path: Path) -> None:
    with Simulator() as sim:
        settings = _settings(tmp_path, serial_url=sim.port_path)
        store = DeviceStore(settings.store_path)
        blocks = 0

        def on_block(_block: np.ndarray, _renderer: object) -> None:
            nonlocal blocks
            blocks += 1
            if blocks == 10:
                sim.over_temperature()

        with standalone_parts(settings, store) as parts:
            session = Session(parts, watch=SessionWatch(on_block=on_block))
            record = session.run(load_program_toml(SHORT), NullSink())
    assert record.outcome == "fault" and "temperature" in record.reason
    events = sorted(store.events(limit=100), key=lambda e: (e.at, e.event_id))
    assert [e.type for e in events if e.type != "warning"] == [
        "fault",
        "consent_withdrawn",
        "transition",
    ]
    fault, withdrawn, transition = (e for e in events if e.type != "warning")
    assert "temperature" in fault.cause and fault.code == withdrawn.code != 0
    assert (transition.from_state, transition.to_state) == ("playing", "fault")
    assert session.supervisor is not None and session.supervisor.state is State.FAULT


def test_the_daily_limit_ignores_an_accidental_start_and_counts_a_61_s_session(
    tmp_path: Path,
) -> None:
    store = DeviceStore(tmp_path / "device.db")
    store.save_desired(1, {"limits": {"max_sessions_per_day": 1}}, None, "applied")
    now = time.time()
    started = datetime.fromtimestamp(now, UTC) - timedelta(seconds=1)
    accidental = make_record(started_at=started, ended_at=started, planned_s=600.0, played_s=0.05,
                             outcome="stopped")  # fmt: skip
    store.record_session("dev-a", accidental)
    assert daily_limit_refusal(store, now) is None  # no session yet today
    counted = make_record(started_at=started, ended_at=started + timedelta(seconds=61),
                          planned_s=600.0, played_s=61.0, outcome="stopped")  # fmt: skip
    store.record_session("dev-a", counted)
    refusal = daily_limit_refusal(store, now)
    assert refusal is not None and "1 session(s) a day" in refusal


def test_every_second_of_an_accidental_start_counts_toward_the_dose(tmp_path: Path) -> None:
    settings = _settings(tmp_path, simulation=True)
    store = DeviceStore(settings.store_path)

    def on_block(_block: np.ndarray, _renderer: object) -> None:
        session.stop()

    with standalone_parts(settings, store) as parts:
        session = Session(parts, watch=SessionWatch(on_block=on_block))
        record = session.run(load_program_toml(SHORT), NullSink())
    assert record.outcome == "stopped" and 0 < record.played_s < 1.0
    ledger = DoseLedger.for_settings(settings)
    try:
        assert ledger.status(time.time()).fraction > 0
    finally:
        ledger.close()
    assert daily_limit_refusal(store, time.time()) is None
