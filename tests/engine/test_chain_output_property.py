"""What leaves the player, measured apart from the chain: every 1-s window and every 125 ms
exponential level (A- and C-weighted) within the person's limits, no C-weighted peak or true peak
above its limit, no DC, whatever the program (DC, 20 Hz at full scale, pulses 40-60 ms apart, squares
near fs/4, noise), the calibration (every one ``Calibration`` accepts), the profile, the block sizes,
and whether the player ends it with its stop fade or its fault ramp.

The meter here is the test's own: the A and C curves' analogue transfer functions (IEC 61672-1,
poles and zeros, phase included) applied by FFT to the zero-padded output, and the true peak from
the output's spectrum interpolated 8 times. Nothing of ``resonera.engine.safety`` measures it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import signal as scipy_signal
from scipy.fft import next_fast_len

from resonera.common.profile import MAX_LEVEL_DBC, MAX_PEAK_DBC, HearingProfile
from resonera.engine.audio.calibration import PLAUSIBLE_FULL_SCALE_SPL
from resonera.engine.audio.player import play
from resonera.engine.audio.sink_base import NullSink
from resonera.engine.safety.chain import ChainLimits, SafetyChain

# Sound alone, no dates: left out of the faketime pass (make pytest-future).
pytestmark = pytest.mark.dateless

Signal = NDArray[np.float64]
SECONDS = 2.5
#: Oversampling of the independent true-peak and C-peak measurement.
UPSAMPLE = 8
#: The output's mean over any second stays under this (full scale): a full-scale DC step leaves the
#: DC blocker as a transient whose first lobe holds 0.0145 s of full scale (and the rest as much,
#: negative), so a second that holds one lobe alone has a mean of 0.0145; sustained DC leaves none.
DC_BOUND = 0.015

F1, F2, F3, F4 = 20.598997, 107.65265, 737.86223, 12194.217


def analogue_weighting(frequency: Signal, curve: str) -> NDArray[np.complex128]:
    """The IEC 61672-1 weighting's analogue transfer function at ``frequency`` (Hz), phase
    included (a peak depends on it), 0 dB at 1 kHz."""

    def response(f: Signal) -> NDArray[np.complex128]:
        s = 2j * np.pi * f
        w1, w2, w3, w4 = (2 * np.pi * p for p in (F1, F2, F3, F4))
        high = w4**2 / (s + w4) ** 2
        low = s**2 / (s + w1) ** 2
        if curve == "A":
            low = low * s**2 / ((s + w2) * (s + w3))
        result: NDArray[np.complex128] = low * high
        return result

    normalised: NDArray[np.complex128] = response(frequency) / abs(response(np.array([1000.0]))[0])
    return normalised


class KeepingSink(NullSink):
    """Keeps what the player wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[NDArray[np.float32]] = []

    def write(self, block: NDArray[np.float32]) -> None:
        super().write(block)
        self.blocks.append(block.copy())


class Source:
    """A prepared signal as the player's block source."""

    def __init__(self, samples: NDArray[np.float32], rate: int) -> None:
        self.samples, self.sample_rate, self.at = samples, rate, 0

    @property
    def done(self) -> bool:
        return self.at >= len(self.samples)

    @property
    def remaining_frames(self) -> int:
        return len(self.samples) - self.at

    def render(self, frames: int) -> NDArray[np.float32]:
        block = self.samples[self.at : self.at + frames]
        self.at += len(block)
        return block


def program(kind: str, rate: int, rng: np.random.Generator) -> NDArray[np.float32]:
    """One adversarial program at full scale or near it (a background file is scaled to peak 1)."""
    frames = int(SECONDS * rate)
    t = np.arange(frames) / rate
    if kind == "dc":
        x = np.full(frames, rng.uniform(0.5, 1.0)) * rng.choice([-1.0, 1.0])
    elif kind == "20hz":
        x = np.sin(2 * np.pi * 20.0 * t + rng.uniform(0, 2 * np.pi))
    elif kind == "pulses":  # 20 ms bursts of a tone, 40-60 ms apart, sharp edges
        spacing = rng.uniform(0.040, 0.060)
        on = (t % spacing) < 0.020
        x = on * np.sin(2 * np.pi * rng.uniform(500.0, 4000.0) * t)
    elif kind == "square":  # near fs/4, or the 2.5 kHz square a render measured at +2.1 dBTP
        f = rng.choice([2500.0, rate / 4 * rng.uniform(0.9, 1.1)])
        x = np.sign(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)))
    elif kind == "fs4":
        x = np.sin(2 * np.pi * rate / 4 * t + np.pi / 4) * math.sqrt(2)
        x = np.clip(x, -1.0, 1.0)
    else:  # white noise, peak scaled to 1
        x = rng.standard_normal(frames)
        x /= np.max(np.abs(x))
    right = x if rng.random() < 0.5 else x * rng.uniform(0.3, 1.0)
    return np.stack([x, right], axis=1).astype(np.float32)


def weighted(out: Signal, rate: int, curve: str) -> Signal:
    """The output weighted by the analogue curve (zero-padded: no wrap-around)."""
    frames = len(out)
    padded = next_fast_len(2 * frames, real=True)
    spectrum = np.fft.rfft(out, padded, axis=0)
    freqs = np.fft.rfftfreq(padded, 1 / rate)
    response = analogue_weighting(np.maximum(freqs, 1e-9), curve)
    response[0] = 0.0
    result: Signal = np.fft.irfft(spectrum * response[:, None], padded, axis=0)[:frames]
    return result


def upsampled(x: Signal) -> Signal:
    """``x`` interpolated ``UPSAMPLE`` times by its zero-padded spectrum (band-limited)."""
    frames = len(x)
    padded = next_fast_len(2 * frames, real=True)
    spectrum = np.fft.rfft(x, padded, axis=0)
    result: Signal = np.fft.irfft(spectrum, padded * UPSAMPLE, axis=0)[: frames * UPSAMPLE]
    return result * UPSAMPLE


def max_window_db(energy: Signal, window: int) -> float:
    """The highest mean of ``energy`` (frames, channels) over any ``window`` frames, in dB."""
    csum = np.concatenate((np.zeros((1, energy.shape[1])), np.cumsum(energy, axis=0)))
    if len(energy) < window:
        return -math.inf
    means = (csum[window:] - csum[:-window]) / window
    return float(10 * np.log10(max(float(means.max()), 1e-30)))


def fast_level_db(energy: Signal, rate: int) -> float:
    """The highest exponential (F, 125 ms) level of ``energy``, in dB."""
    a = math.exp(-1.0 / (0.125 * rate))
    smoothed = scipy_signal.lfilter([1 - a], [1, -a], energy, axis=0)
    return float(10 * np.log10(max(float(smoothed.max()), 1e-30)))


KINDS = st.sampled_from(["dc", "20hz", "pulses", "square", "fs4", "noise"])


@settings(max_examples=20, deadline=None)
@given(
    kinds=st.lists(KINDS, min_size=1, max_size=2),
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([44_100, 48_000]),
    full_scale_spl=st.floats(*PLAUSIBLE_FULL_SCALE_SPL),
    max_level_dba=st.floats(60.0, 90.0),
    max_level_dbc=st.floats(60.0, MAX_LEVEL_DBC),
    max_peak_dbc=st.floats(80.0, MAX_PEAK_DBC),
    peak_ceiling=st.floats(0.3, 1.0),
    block=st.sampled_from([64, 256, 1000, 1024, 4096]),
    ending=st.sampled_from(["completed", "stop", "fault"]),
    fade_in=st.booleans(),
)
def test_what_leaves_the_player_stays_within_every_limit(
    *,
    kinds: list[str],
    seed: int,
    rate: int,
    full_scale_spl: float,
    max_level_dba: float,
    max_level_dbc: float,
    max_peak_dbc: float,
    peak_ceiling: float,
    block: int,
    ending: str,
    fade_in: bool,
) -> None:
    rng = np.random.default_rng(seed)
    mixed = sum(program(kind, rate, rng) for kind in kinds) / len(kinds)
    assert isinstance(mixed, np.ndarray)
    samples: NDArray[np.float32] = mixed.astype(np.float32)
    if fade_in:  # a program's own raised-cosine fade-in; without one the chain's onset alone
        ramp = min(len(samples), int(rng.uniform(0.01, 0.5) * rate))
        samples[:ramp] *= (0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp))[:, None]
    spl = full_scale_spl + 20 * math.log10(math.sqrt(2))  # dB SPL of an rms of 1.0
    profile = HearingProfile(
        max_level_dba=max_level_dba,
        fallback_level_dba=min(70.0, max_level_dba),
        max_level_dbc=max_level_dbc,
        max_peak_dbc=max_peak_dbc,
    )
    chain = SafetyChain(
        sample_rate=rate,
        limits=ChainLimits(spl_at_unit_rms=spl, peak_ceiling=peak_ceiling),
        profile=profile,
        ledger=None,
        wall_clock=lambda: 1_800_000_000.0,
    )
    end_at = int(rng.uniform(0.3, 0.9) * len(samples)) // block  # the block a stop or fault hits
    blocks_seen = [0]

    def count(_block: NDArray[np.float32], _source: Source) -> None:
        blocks_seen[0] += 1

    sink = KeepingSink()
    result = play(
        Source(samples, rate),
        sink,
        block_frames=block,
        processors=(chain,),
        should_stop=(lambda: blocks_seen[0] >= end_at) if ending == "stop" else None,
        gate=(lambda: blocks_seen[0] < end_at) if ending == "fault" else None,
        on_block=count,
    )
    assert result.outcome == ("stopped" if ending == "stop" else ending) or ending != "completed"
    out = np.concatenate(sink.blocks).astype(np.float64) if sink.blocks else np.zeros((0, 2))
    if len(out) == 0:
        return
    # every second after the end counts too: silence follows what was played
    out = np.concatenate((out, np.zeros((rate, 2))))

    found = excesses(out, rate, spl, profile, peak_ceiling)
    assert not found, "; ".join(found)


def excesses(
    out: Signal, rate: int, spl: float, profile: HearingProfile, peak_ceiling: float
) -> list[str]:
    """Each limit the output passes, with by how much."""
    a = weighted(out, rate, "A")
    c = weighted(out, rate, "C")
    tol = 1e-3  # dB: float32 output and the FFT's rounding
    found = []
    for name, measured, limit in (
        ("LAeq,1s", spl + max_window_db(a**2, rate), profile.max_level_dba + tol),
        ("LAF", spl + fast_level_db(a**2, rate), profile.max_level_dba + 0.5),
        ("LCeq,1s", spl + max_window_db(c**2, rate), profile.max_level_dbc + tol),
        ("LCF", spl + fast_level_db(c**2, rate), profile.max_level_dbc + 0.5),
        (
            "LCpeak",
            spl + 20 * math.log10(max(float(np.max(np.abs(upsampled(c)))), 1e-30)),
            profile.max_peak_dbc + tol,
        ),
        (
            "true peak (dB re the ceiling)",
            20 * math.log10(max(float(np.max(np.abs(upsampled(out)))), 1e-30) / peak_ceiling),
            1e-3,
        ),
    ):
        if measured > limit:
            found.append(f"{name} {measured:.3f} over {limit:.3f}")
    csum = np.concatenate((np.zeros((1, 2)), np.cumsum(out, axis=0)))
    dc = float(np.abs(csum[rate:] - csum[:-rate]).max()) / rate
    if dc > DC_BOUND:
        found.append(f"DC {dc:.4f} over {DC_BOUND}")
    return found
