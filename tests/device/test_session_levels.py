"""The level a session really plays at, heard and said (issue 22, items 6 and 7), through the real
session path into a WAV file measured by ``resonera-device measure``'s code: at most the dose
mode's reference level while the time is untrusted, the fallback once the week is used, and the
pre-flight message naming that level (after a fallback it said "about 90 dBA")."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
from dose_clocks import SYNCED

from resonera.common.clock import CLOCK_FLOOR
from resonera.common.dose import allowance_pa2s, pressure_squared
from resonera.common.profile import HearingProfile
from resonera.common.program import load_program_toml
from resonera.common.records import SessionRecord
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.session import Session, SessionWatch, standalone_parts
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.device.trusted_time import DoseClock, TimeSources
from resonera.engine.audio.sinks import WavSink
from resonera.engine.safety.measure import (
    Measurement,
    measure_file,
    spl_at_unit_rms_from_full_scale,
)

#: A full-scale sine is 100 dB SPL at the ear.
LOUD_HEADPHONES = """
name = "loud test headphones"
output = "headphones"
dac_full_scale_vrms = 1.0
sensitivity_db_spl_per_v = 100.0
"""
#: No network time: the kernel says the clock is not synchronised.
UNSYNCED = TimeSources(synchronized=lambda: False)


def tone(level_dba: float, seconds: float = 4.0) -> str:
    """A centred 1 kHz tone at ``level_dba`` per ear (gain g is g/√2 per ear)."""
    gain = math.sqrt(2.0) * 10 ** ((level_dba - 100.0) / 20.0)
    return f"""
name = "loud tone"
fade_in_s = 0.2
fade_out_s = 0.2
[[steps]]
duration_s = {seconds}
[[steps.layers]]
type = "tone"
frequency_hz = 1000
gain = {gain:.6f}
"""


def play(
    tmp_path: Path, profile: HearingProfile, sources: TimeSources, level_dba: float = 89.0
) -> tuple[SessionRecord, Measurement, list[str]]:
    calibration = tmp_path / "loud.toml"
    calibration.write_text(LOUD_HEADPHONES, encoding="utf-8")
    settings = DeviceSettings.model_validate(
        {
            "device_id": "levels",
            "data_dir": tmp_path,
            "simulation": True,
            "calibration_file": calibration,
            "profile": profile.model_dump(),
        }
    )
    said: list[str] = []
    wav = tmp_path / "session.wav"
    with standalone_parts(settings, DeviceStore(settings.store_path)) as parts:
        session = Session(
            replace(parts, time_sources=sources), watch=SessionWatch(notify=said.append)
        )
        record = session.run(load_program_toml(tone(level_dba)), WavSink(wav))
    return record, measure_file(wav, spl_at_unit_rms_from_full_scale(100.0)), said


def week_used(tmp_path: Path, fraction: float) -> None:
    ledger = DoseLedger(tmp_path / "dose.db")
    ledger.add_energy(time.time() - 60, allowance_pa2s(1) * fraction, 3600)
    ledger.close()


def test_with_network_time_the_session_plays_at_its_level(tmp_path: Path) -> None:
    record, heard, said = play(tmp_path, HearingProfile(max_level_dba=90.0), SYNCED)
    assert record.outcome == "completed"
    assert heard.max_mel_dba == pytest.approx(89.0, abs=0.3)
    assert "about 89 dBA" in said[0] and "plays at most" not in said[0]


@pytest.mark.parametrize(("mode", "cap"), [(1, 80.0), (2, 75.0)])
def test_while_the_time_is_untrusted_it_plays_at_most_at_the_modes_reference_level(
    tmp_path: Path, mode: int, cap: float
) -> None:
    profile = HearingProfile.model_validate({"max_level_dba": 90.0, "dose_mode": mode})
    record, heard, said = play(tmp_path, profile, UNSYNCED)
    assert record.outcome == "completed"
    assert cap - 1.0 <= heard.max_mel_dba <= cap  # the ceiling holds 0.3 dB under it
    assert f"about {cap:.0f} dBA" in said[0]
    assert f"not confirmed by network time yet, so it plays at most at {cap:g} dBA" in said[0]
    # the dose is still counted, dated by the dose clock
    ledger = DoseLedger(tmp_path / "dose.db", read_only=True)
    assert ledger.status(time.time() + 60).pa2s > 0.0
    ledger.close()


def test_after_a_fallback_the_preflight_says_the_fallback_level(tmp_path: Path) -> None:
    week_used(tmp_path, 1.0)
    profile = HearingProfile(max_level_dba=90.0, refuse_over_allowance=False)
    record, heard, said = play(tmp_path, profile, SYNCED)
    assert record.outcome == "completed"
    assert heard.max_mel_dba <= 75.0
    assert "about 75 dBA" in said[0] and "about 90 dBA" not in said[0]
    assert "this week's allowance is used, so it plays at most at 75 dBA" in said[0]


def test_in_mode_2_the_fallback_adds_little(tmp_path: Path) -> None:
    """Mode 2's default fallback (70 dBA) is below its reference level (75 dBA): an hour there
    adds 0.79 % of the week, not the 2.5 % the old 75 dBA fallback kept adding."""
    week_used(tmp_path, 2.0)  # twice mode 1's allowance: over 100 % in mode 2 too
    profile = HearingProfile.model_validate(
        {"max_level_dba": 90.0, "dose_mode": 2, "refuse_over_allowance": False}
    )
    assert profile.fallback_level_dba == 70.0
    _record, heard, said = play(tmp_path, profile, SYNCED)
    assert heard.max_mel_dba <= 70.0
    assert "so it plays at most at 70 dBA" in said[0]


def test_a_session_played_while_the_clock_read_1970_counts_once_it_is_set(tmp_path: Path) -> None:
    in_1970 = TimeSources(wall=lambda: 86_400.0 + time.monotonic(), synchronized=lambda: False)
    record, heard, said = play(tmp_path, HearingProfile(max_level_dba=90.0), in_1970)
    assert record.outcome == "completed"
    assert record.started_at.timestamp() >= CLOCK_FLOOR  # dated by the dose clock, not 1970
    assert "not confirmed by network time" in said[0]
    ledger = DoseLedger(tmp_path / "dose.db")
    try:
        assert ledger.status(time.time()).pa2s == 0.0  # dated at this release's date so far
        DoseClock(ledger, SYNCED).refresh()  # network time arrives
        week = ledger.status(time.time() + 60)
    finally:
        ledger.close()
    played = pressure_squared(heard.laeq_dba) * heard.duration_s
    assert week.pa2s == pytest.approx(played, rel=0.1)
