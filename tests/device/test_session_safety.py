"""The safety chain as a session uses it: calibration required, pre-flight dose, MCU limits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from resonera.common.dose import dose_fraction
from resonera.common.errors import ProgramError
from resonera.common.profile import FrequencyRange, HearingProfile
from resonera.common.program import load_program_toml
from resonera.common.safety_link import HardLimits
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.safety.session import CalibrationMissing, preflight
from resonera.device.session import (
    Session,
    SessionRefused,
    SessionWatch,
    play_standalone,
    standalone_parts,
)
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.engine.audio.calibration import load_calibration_file, packaged_calibration
from resonera.engine.audio.sinks import NullSink, WavSink
from resonera.engine.pipeline import chain_limits, limited_profile
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.sim import Simulator

# Times the safety MCU's watchdogs or measures recorded sound against real time: the main pass
# only (the dates of their sessions are checked under faketime by the sessions' other tests).
pytestmark = pytest.mark.realtime

TONE_1K = """
name = "tone"
fade_in_s = 0.5
fade_out_s = 0.5
[[steps]]
duration_s = 8
[[steps.layers]]
type = "tone"
frequency_hz = 1000
gain = 0.5
"""


def settings(tmp_path: Path, **changes: object) -> DeviceSettings:
    values: dict[str, object] = {
        "device_id": "safety-dev",
        "data_dir": tmp_path,
        "simulation": True,
        "calibration_file": packaged_calibration(),
    }
    values.update(changes)
    return DeviceSettings.model_validate(values)


def test_without_a_calibration_nothing_plays(tmp_path: Path) -> None:
    s = settings(tmp_path, calibration_file=None)
    with pytest.raises(CalibrationMissing, match="does not play"):
        play_standalone(
            s, DeviceStore(s.store_path), load_program_toml(TONE_1K), WavSink(tmp_path / "x.wav")
        )
    assert not (tmp_path / "x.wav").exists()


def test_preflight_predicts_the_dose_from_the_calibrated_level(tmp_path: Path) -> None:
    calibration = load_calibration_file(packaged_calibration())
    program = load_program_toml(TONE_1K)
    week = DoseLedger(tmp_path / "dose.db").status(time.time())
    check = preflight(
        program, sample_rate=48_000, calibration=calibration, profile=HearingProfile(), week=week
    )
    # a centred tone at gain 0.5 is 0.5/√2 per ear: rms 0.354 → -9.03 dBFS → 74 dB SPL at 1 kHz
    expected_level = calibration.spl_at_dbfs(20 * __import__("math").log10(0.5 / 2**0.5 / 2**0.5))
    assert check.expected_laeq_dba == pytest.approx(expected_level, abs=0.5)
    assert check.expected_fraction == pytest.approx(dose_fraction(expected_level, 8.0), rel=0.15)
    assert "expected to use" in check.message and not check.refused


def test_a_session_that_would_pass_the_allowance_is_refused_before_it_starts(
    tmp_path: Path,
) -> None:
    ledger = DoseLedger(tmp_path / "dose.db")
    ledger.add_energy(time.time() - 60, pa2s=0.999999 * 5760.0, seconds=3600)
    ledger.close()
    s = settings(tmp_path)
    messages: list[str] = []
    with pytest.raises(SessionRefused, match="would pass 100 %"):
        play_standalone(s, DeviceStore(s.store_path), load_program_toml(TONE_1K), NullSink(),
                     watch=SessionWatch(notify=messages.append))  # fmt: skip
    assert DeviceStore(s.store_path).sessions() == []


def test_at_100_percent_during_a_session_the_person_is_told(tmp_path: Path) -> None:
    ledger = DoseLedger(tmp_path / "dose.db")
    ledger.add_energy(time.time() - 60, pa2s=0.999999 * 5760.0, seconds=3600)
    ledger.close()
    profile = HearingProfile(refuse_over_allowance=False)
    s = settings(tmp_path, profile=profile)
    messages: list[str] = []
    record = play_standalone(s, DeviceStore(s.store_path), load_program_toml(TONE_1K), NullSink(),
                          watch=SessionWatch(notify=messages.append))  # fmt: skip
    assert record.outcome == "completed"
    assert any("100 % of this week's safe listening allowance" in m for m in messages)
    assert DoseLedger(tmp_path / "dose.db").status(time.time()).fraction > 1.0


def test_the_mcu_limits_lower_the_chain_never_raise_it() -> None:
    calibration = load_calibration_file(packaged_calibration())
    hard = HardLimits(
        max_output_vrms=0.05, max_amp_temp_c=85, max_supply_current_a=1.0,
        max_dc_offset_mv=50, max_ear_spl_db=80.0,
    )  # fmt: skip
    profile = limited_profile(HearingProfile(max_level_dba=85.0), hard)
    assert profile.max_level_dba == 80.0 and profile.fallback_level_dba == 75.0
    assert (
        limited_profile(
            HearingProfile(max_level_dba=70.0, fallback_level_dba=65.0), hard
        ).max_level_dba
        == 70.0
    )
    # 0.05 V allowed; full scale is 1 V RMS (1.414 V peak) after a -20 dB stage: 0.1414 V peak
    assert chain_limits(calibration, hard).peak_ceiling == pytest.approx(0.05 / 0.14142, rel=1e-3)
    assert chain_limits(calibration, None).peak_ceiling == 1.0


def transitions(store: DeviceStore, session_id: str) -> list[tuple[str | None, str | None]]:
    events = sorted(store.events(limit=1000), key=lambda e: (e.at, e.event_id))
    return [
        (e.from_state, e.to_state)
        for e in events
        if e.type == "transition" and e.session_id == session_id
    ]


def test_a_normal_start_and_end_are_counted_not_recorded_as_safety_events(tmp_path: Path) -> None:
    s = settings(tmp_path)
    store = DeviceStore(s.store_path)
    with standalone_parts(s, store) as parts:
        record = Session(parts).run(load_program_toml(TONE_1K), NullSink())
        counts = parts.recorder.routine_counts()
    assert transitions(store, record.session_id) == []  # routine: docs/safety-events.md
    assert counts["session_transitions"] == 3  # idle → arming → playing → idle
    kinds = {e.type for e in store.events(limit=1000)}
    assert "no_monitor" in kinds  # simulation mode says so in the record of events
    assert all(e.simulation for e in store.events(limit=1000))


def test_an_mcu_fault_mid_session_silences_it_and_latches_the_fault_state(tmp_path: Path) -> None:
    with Simulator() as sim:
        s = settings(tmp_path, simulation=False, serial_url=sim.port_path)
        store = DeviceStore(s.store_path)
        blocks: list[np.ndarray] = []

        def on_block(block: np.ndarray, _renderer: object) -> None:
            blocks.append(block.copy())
            if len(blocks) == 40:
                sim.over_temperature()

        record = play_standalone(s, store, load_program_toml(TONE_1K), NullSink(),
                                 watch=SessionWatch(on_block=on_block))  # fmt: skip
    assert record.outcome == "fault"
    assert "temperature" in record.reason
    assert record.played_s < 8.0
    assert not record.simulation and record.hardware_board
    assert transitions(store, record.session_id)[-1] == ("playing", "fault")
    faults = [e for e in store.events(limit=1000) if e.type in ("fault", "consent_withdrawn")]
    assert faults and any("temperature" in e.cause for e in faults)


def test_a_program_outside_the_persons_ranges_is_refused_before_a_sample(tmp_path: Path) -> None:
    profile = HearingProfile(tone_hz=FrequencyRange(low=100, high=800))
    s = settings(tmp_path, profile=profile)
    with pytest.raises(ProgramError, match="frequency_hz 1000 Hz is outside"):
        play_standalone(
            s, DeviceStore(s.store_path), load_program_toml(TONE_1K), WavSink(tmp_path / "x.wav")
        )
    assert not (tmp_path / "x.wav").exists()


def test_an_ear_cup_level_far_from_the_calibrations_prediction_mutes(tmp_path: Path) -> None:
    with Simulator(BoardConfig(max_ear_spl_db=100.0)) as sim:
        s = settings(tmp_path, simulation=False, serial_url=sim.port_path)
        store = DeviceStore(s.store_path)
        calm = play_standalone(s, store, load_program_toml(TONE_1K), NullSink())
        assert calm.outcome == "completed"  # the microphone agrees with the calibration (~70 dBA)

        blocks = 0

        def on_block(block: np.ndarray, _renderer: object) -> None:
            nonlocal blocks
            blocks += 1
            if blocks == 20:
                sim.board.set_ear_spl(86.0)  # 15 dB louder than predicted: a wrong calibration
            if blocks >= 20:
                # paced like a sound card from here on: the MCU's ear-cup readings arrive in real
                # time, and an unpaced null sink would finish the program before they do
                time.sleep(len(block) / s.sample_rate)

        record = play_standalone(s, store, load_program_toml(TONE_1K), NullSink(),
                                 watch=SessionWatch(on_block=on_block))  # fmt: skip
    assert record.outcome == "fault"
    assert "ear-cup" in record.reason
    assert 3.0 <= record.played_s < 8.0
    assert any(e.type == "fault" and "calibration" in e.cause for e in store.events(limit=1000))


def test_the_session_record_carries_its_exposure(tmp_path: Path) -> None:
    s = settings(tmp_path)
    record = play_standalone(s, DeviceStore(s.store_path), load_program_toml(TONE_1K), NullSink())
    assert record.laeq_dba == pytest.approx(70.6, abs=1.0)
    assert record.max_mel_dba == pytest.approx(71.0, abs=1.0)
    ledger = DoseLedger(tmp_path / "dose.db").status(time.time())
    assert record.dose_fraction == pytest.approx(ledger.fraction, rel=1e-6)


def test_a_stopped_session_records_who_stopped_it_and_why(tmp_path: Path) -> None:
    s = settings(tmp_path)
    store = DeviceStore(s.store_path)

    def on_block(_block: np.ndarray, _renderer: object) -> None:
        session.stop("the clinician lowered the limits")

    with standalone_parts(s, store) as parts:
        session = Session(parts, watch=SessionWatch(on_block=on_block))
        record = session.run(load_program_toml(TONE_1K), NullSink())
    assert record.outcome == "stopped"
    assert record.reason == "the clinician lowered the limits"
    assert transitions(store, record.session_id)[-1] == ("playing", "idle")


def test_the_clinicians_sessions_per_day_hold_for_every_way_of_playing(tmp_path: Path) -> None:
    s = settings(tmp_path)
    store = DeviceStore(s.store_path)
    store.save_desired(1, {"limits": {"max_sessions_per_day": 1}}, None, "applied")
    first = play_standalone(s, store, load_program_toml(TONE_1K), NullSink())
    assert first.outcome == "completed"
    with pytest.raises(SessionRefused, match="1 session\\(s\\) a day is the limit"):
        play_standalone(s, store, load_program_toml(TONE_1K), NullSink())
    assert [e.type for e in store.events(limit=100)].count("session_refused") == 1
    assert len(store.sessions(limit=10)) == 1
