"""The safety chain on synthetic signals. Tones are at 1 kHz, where A-weighting is 0 dB, so their
levels are known exactly (the A-weighting filter has its own accuracy tests)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from factories import ManualClock
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal as scipy_signal

from resonera.common.dose import dose_fraction
from resonera.common.profile import HearingProfile
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.engine.safety.aweighting import design_a_weighting, design_c_weighting
from resonera.engine.safety.chain import ChainLimits, DoseEvent, SafetyChain

RATE = 48_000
T0 = 1_800_000_000.0
#: A flat "calibration": RMS 1.0 at the ear is 100 dB SPL.
LIMITS = ChainLimits(spl_at_unit_rms=100.0, peak_ceiling=0.9)


def tone(level_db: float, seconds: float) -> np.ndarray:
    """A stereo sine whose RMS is ``level_db`` below/above the 100 dB reference."""
    amplitude = np.sqrt(2) * 10 ** ((level_db - 100.0) / 20)
    t = np.arange(int(seconds * RATE)) / RATE
    x = amplitude * np.sin(2 * np.pi * 1000 * t)
    return np.stack([x, x], axis=1).astype(np.float32)


def run(
    chain: SafetyChain, signal: np.ndarray, clock: ManualClock, block: int = 1024
) -> np.ndarray:
    out = []
    for start in range(0, len(signal), block):
        clock.now = T0 + start / RATE
        out.append(chain(signal[start : start + block]))
    return np.concatenate(out)


def chain_for(
    tmp_path: Path, clock: ManualClock, events: list[DoseEvent], **profile: object
) -> SafetyChain:
    return SafetyChain(
        sample_rate=RATE,
        limits=LIMITS,
        profile=HearingProfile.model_validate(profile),
        ledger=DoseLedger(tmp_path / "dose.db"),
        wall_clock=clock,
        on_dose_event=events.append,
    )


def test_a_program_louder_than_the_maximum_is_held_below_it(tmp_path: Path) -> None:
    clock, events = ManualClock(T0), list[DoseEvent]()
    chain = chain_for(tmp_path, clock, events, max_level_dba=80.0)
    run(chain, tone(88.0, 4.0), clock)
    assert chain.mels  # one per second
    assert max(chain.mels) <= 80.0
    assert max(chain.mels[1:]) > 79.0  # held at the ceiling, not far below it


def test_quiet_programs_pass_and_their_dose_is_ledgered(tmp_path: Path) -> None:
    clock, events = ManualClock(T0), list[DoseEvent]()
    chain = chain_for(tmp_path, clock, events)
    out = run(chain, tone(70.0, 3.2), clock)
    assert len(chain.mels) == 3
    assert chain.mels[1] == pytest.approx(70.0, abs=0.05)
    assert np.max(np.abs(out)) <= LIMITS.peak_ceiling
    ledger = DoseLedger(tmp_path / "dose.db")
    assert ledger.status(clock.now).fraction == pytest.approx(chain.session_dose, rel=1e-9)
    assert chain.session_dose == pytest.approx(sum(dose_fraction(m) for m in chain.mels))


def fill_week(path: Path, fraction: float) -> None:
    ledger = DoseLedger(path)
    ledger.add_energy(T0 - 3600, pa2s=fraction * 5760.0, seconds=3600)
    ledger.close()


def test_at_100_percent_the_person_is_told_and_the_level_drops_to_the_fallback(
    tmp_path: Path,
) -> None:
    fill_week(tmp_path / "dose.db", 0.99999)
    clock, events = ManualClock(T0), list[DoseEvent]()
    chain = chain_for(tmp_path, clock, events, max_level_dba=85.0, fallback_level_dba=75.0)
    run(chain, tone(84.0, 6.0), clock)
    assert [e.kind for e in events] == ["dose_reached"]
    assert events[0].percent == 100
    assert "100 %" in events[0].message
    assert chain.mels[0] > 83.0
    assert max(chain.mels[-2:]) <= 75.0  # after the ramp, at the fallback
    assert not chain.stop_requested


def test_a_profile_that_says_stop_asks_the_player_to_stop(tmp_path: Path) -> None:
    fill_week(tmp_path / "dose.db", 0.99999)
    clock, events = ManualClock(T0), list[DoseEvent]()
    chain = chain_for(tmp_path, clock, events, on_dose_reached="stop")
    run(chain, tone(80.0, 2.0), clock)
    assert [e.kind for e in events] == ["dose_stop"]
    assert chain.stop_requested


def test_a_corrupted_ledger_starts_at_the_fallback_level(tmp_path: Path) -> None:
    fill_week(tmp_path / "dose.db", 0.1)
    with sqlite3.connect(tmp_path / "dose.db") as conn:
        conn.execute("update dose_minute set seconds = seconds + 1")
    clock, events = ManualClock(T0), list[DoseEvent]()
    chain = chain_for(tmp_path, clock, events, max_level_dba=85.0, fallback_level_dba=70.0)
    run(chain, tone(84.0, 3.0), clock)
    assert max(chain.mels) <= 70.0


def test_attenuation_ramps_without_a_jump(tmp_path: Path) -> None:
    clock, events = ManualClock(T0), list[DoseEvent]()
    chain = chain_for(tmp_path, clock, events)
    signal = tone(70.0, 3.0)
    first = run(chain, signal[:RATE], clock)
    chain.set_gain_db(-12.0, ramp_s=0.5)
    second = run(chain, signal[RATE:], clock)
    out = np.concatenate([first, second])
    steepest_signal = np.max(np.abs(np.diff(signal[:, 0])))
    assert np.max(np.abs(np.diff(out[:, 0]))) <= steepest_signal * 1.01
    assert chain.mels[-1] == pytest.approx(58.0, abs=0.1)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    max_level=st.floats(60.0, 90.0),
    block=st.sampled_from([64, 256, 1024, 4096, 8192]),
)
def test_with_real_a_weighting_no_second_exceeds_the_maximum_and_no_sample_the_ceiling(
    tmp_path_factory: pytest.TempPathFactory, seed: int, max_level: float, block: int
) -> None:
    rng = np.random.default_rng(seed)
    seconds = 3.0
    t = np.arange(int(seconds * RATE)) / RATE
    freqs = rng.uniform(60, 12_000, size=3)
    gains = rng.uniform(0.05, 0.6, size=3)
    swell = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t)
    x = swell * sum(g * np.sin(2 * np.pi * f * t) for f, g in zip(freqs, gains, strict=True))
    signal = np.stack([x, 0.7 * x], axis=1).astype(np.float32)
    clock = ManualClock(T0)
    chain = SafetyChain(
        sample_rate=RATE,
        limits=LIMITS,
        profile=HearingProfile(max_level_dba=max_level, fallback_level_dba=min(75.0, max_level)),
        ledger=DoseLedger(tmp_path_factory.mktemp("dose") / "dose.db"),
        wall_clock=clock,
    )
    out = run(chain, signal, clock, block=block)
    assert np.max(np.abs(out)) <= LIMITS.peak_ceiling * (1 + 1e-6)
    assert max(chain.mels) <= max_level
    # and measured on the output apart from the chain: scipy's filter, the louder ear per second
    weighted = scipy_signal.sosfilt(design_a_weighting(RATE), out.astype(np.float64), axis=0)
    seconds_out = len(out) // RATE
    energy = np.square(weighted[: seconds_out * RATE]).reshape(seconds_out, RATE, 2).mean(axis=1)
    measured = LIMITS.spl_at_unit_rms + 10 * np.log10(energy.max(axis=1))
    assert np.max(measured) <= max_level
    np.testing.assert_allclose(chain.mels[:seconds_out], measured, atol=0.01)


def bare_chain(
    spl_at_unit_rms: float = 100.0, peak_ceiling: float = 0.9, **profile: object
) -> SafetyChain:
    return SafetyChain(
        sample_rate=RATE,
        limits=ChainLimits(spl_at_unit_rms=spl_at_unit_rms, peak_ceiling=peak_ceiling),
        profile=HearingProfile.model_validate(profile),
        ledger=None,
        wall_clock=lambda: T0,
    )


def through(chain: SafetyChain, signal: np.ndarray, block: int = 1024) -> np.ndarray:
    return np.concatenate([chain(signal[at : at + block]) for at in range(0, len(signal), block)])


def test_dc_is_taken_out_before_it_reaches_the_driver() -> None:
    """A background file's DC (a render measured 0.965 of full scale) leaves no DC."""
    out = through(bare_chain(), np.full((3 * RATE, 2), 0.965, np.float32))
    settled = out[RATE // 2 :].astype(np.float64)
    assert np.abs(settled.mean(axis=0)).max() < 1e-3
    assert np.abs(out[RATE:]).max() < 1e-3


def test_nothing_starts_at_full_scale_at_once() -> None:
    """A full-scale 1 kHz program with no fade-in rises over the 50 ms onset."""
    chain = bare_chain(spl_at_unit_rms=80.0, peak_ceiling=1.0)
    t = np.arange(RATE) / RATE
    x = np.sin(2 * np.pi * 1000 * t)
    out = through(chain, np.stack([x, x], axis=1).astype(np.float32))[chain.latency_frames :]
    first_ms = RATE // 1000
    assert np.abs(out[:first_ms]).max() < 0.01
    assert np.abs(out[: 10 * first_ms]).max() < 0.15
    assert np.abs(out[100 * first_ms :]).max() > 0.5  # and then it plays


def test_a_20_hz_tone_at_full_scale_is_held_by_its_unweighted_and_c_weighted_level() -> None:
    """On a loud calibration (a full-scale sine is 120 dB SPL) a 20 Hz tone at gain 1 played
    120 dB SPL, charged as 70 dBA. Now: its C-weighted level under 100 dB(C) in every second."""
    spl = 120.0 + 20 * np.log10(np.sqrt(2))
    chain = bare_chain(spl_at_unit_rms=spl, peak_ceiling=1.0)
    t = np.arange(4 * RATE) / RATE
    x = np.sin(2 * np.pi * 20 * t)
    out = through(chain, np.stack([x, x], axis=1).astype(np.float64).astype(np.float32))
    c = scipy_signal.sosfilt(design_c_weighting(RATE), out.astype(np.float64), axis=0)
    per_second = np.square(c[: 4 * RATE]).reshape(4, RATE, 2).mean(axis=1).max(axis=1)
    assert spl + 10 * np.log10(per_second.max()) <= 100.0
    assert spl + 10 * np.log10(per_second[1:].min()) > 99.0  # held at it, not far below
    unweighted = np.square(out[2 * RATE :].astype(np.float64)).mean()
    assert spl + 10 * np.log10(unweighted) == pytest.approx(100.0 + 6.2, abs=0.5)


@pytest.mark.parametrize("frequency", [2500.0, RATE / 4])
def test_no_reconstructed_peak_passes_the_peak_ceiling(frequency: float) -> None:
    """A 2.5 kHz square at 48 kHz measured +2.1 dBTP, fs/4 content +3.1 dBTP; the true peak is
    measured here by scipy's 8-times polyphase interpolation."""
    t = np.arange(2 * RATE) / RATE
    x = np.sin(2 * np.pi * frequency * t + np.pi / 4)
    x = np.sign(x) if frequency == 2500.0 else x / np.abs(x).max()
    chain = bare_chain(spl_at_unit_rms=60.0, peak_ceiling=0.8)
    out = through(chain, np.stack([x, x], axis=1).astype(np.float32)).astype(np.float64)
    assert np.abs(out).max() <= 0.8
    true_peak = np.abs(scipy_signal.resample_poly(out, 8, 1, axis=0)).max()
    assert true_peak <= 0.8
    assert true_peak > 0.8 * 10 ** (-2.0 / 20)  # held at the ceiling, less the margin


PLAY_THROUGH_THE_CHAIN = textwrap.dedent(
    """
    import sys
    import numpy as np
    import resonera.engine.audio.player
    from resonera.common.profile import HearingProfile
    from resonera.engine.safety.chain import ChainLimits, SafetyChain

    chain = SafetyChain(
        sample_rate=48_000,
        limits=ChainLimits(spl_at_unit_rms=100.0, peak_ceiling=0.9),
        profile=HearingProfile(),
        ledger=None,
        wall_clock=lambda: 1_800_000_000.0,
    )
    for _ in range(60):  # loud enough for the level ceiling and the limiter to work
        chain(np.full((1024, 2), 0.95, np.float32))
    print(len(chain.mels), [m for m in ("scipy.signal", "scipy.ndimage") if m in sys.modules])
    """
)


def test_playing_through_the_chain_loads_neither_scipy_signal_nor_ndimage() -> None:
    """Each costs a playing device some 75-85 MB of memory."""
    done = subprocess.run(
        [sys.executable, "-c", PLAY_THROUGH_THE_CHAIN], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "1 []"  # one second metered, neither module loaded
