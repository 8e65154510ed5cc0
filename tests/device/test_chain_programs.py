"""The safety chain's guarantees over random valid programs and block sizes (docs/safety.md §4):
no sample above the ceiling, no 1-second A-weighted level above the maximum, no gain step larger than
the ramps allow, and the same output whatever the block size."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from resonera.common.profile import HearingProfile
from resonera.common.program import Program
from resonera.engine.audio.synth import ProgramRenderer
from resonera.engine.safety.chain import ChainLimits, SafetyChain

RATE = 48_000
#: A hot output chain (unit RMS = 105 dB SPL), so ordinary programs are louder than the ceiling.
LIMITS = ChainLimits(spl_at_unit_rms=105.0, peak_ceiling=0.5)


@st.composite
def programs(draw: st.DrawFn) -> Program:
    layers = []
    budget = 1.0
    for _ in range(draw(st.integers(1, 3))):
        gain = draw(st.floats(0.05, max(0.05, budget / 1.5)))
        budget -= gain
        kind = draw(st.sampled_from(["tone", "binaural", "monaural", "isochronic", "noise"]))
        if kind == "tone":
            layers.append({"type": kind, "frequency_hz": draw(st.floats(60, 8000)), "gain": gain})
        elif kind == "noise":
            layers.append(
                {
                    "type": kind,
                    "colour": draw(st.sampled_from(["white", "pink", "brown"])),
                    "gain": gain,
                }
            )
        elif kind == "isochronic":
            layers.append(
                {
                    "type": kind,
                    "carrier_hz": draw(st.floats(100, 1000)),
                    "pulse_hz": draw(st.floats(1, 20)),
                    "gain": gain,
                }
            )
        else:
            layers.append(
                {
                    "type": kind,
                    "carrier_hz": draw(st.floats(60, 1000)),
                    "beat_hz": draw(st.floats(1, 20)),
                    "gain": gain,
                }
            )
    return Program.model_validate(
        {
            "name": "random",
            "fade_in_s": 0.2,
            "fade_out_s": 0.2,
            "seed": draw(st.integers(0, 1000)),
            "steps": [{"duration_s": 2.5, "layers": layers}],
        }
    )  # fmt: skip


def render(program: Program, max_level: float, blocks: list[int]) -> tuple[np.ndarray, SafetyChain]:
    chain = SafetyChain(
        sample_rate=RATE,
        limits=LIMITS,
        profile=HearingProfile(max_level_dba=max_level, fallback_level_dba=min(75.0, max_level)),
        ledger=None,
        wall_clock=lambda: 0.0,
    )
    renderer = ProgramRenderer(program, RATE)
    out = []
    i = 0
    while not renderer.done:
        out.append(chain(renderer.render(blocks[i % len(blocks)])))
        i += 1
    return np.concatenate(out), chain


@settings(max_examples=12, deadline=None)
@given(
    program=programs(),
    max_level=st.floats(60.0, 90.0),
    blocks=st.lists(st.sampled_from([64, 256, 1000, 1024, 4096, 8192]), min_size=1, max_size=3),
)
def test_random_programs_stay_under_every_ceiling_whatever_the_blocks(
    program: Program, max_level: float, blocks: list[int]
) -> None:
    out, chain = render(program, max_level, blocks)
    assert np.max(np.abs(out)) <= LIMITS.peak_ceiling * (1 + 1e-6)
    assert max(chain.mels) <= max_level
    reference, _ = render(program, max_level, [1024])
    np.testing.assert_allclose(out[: len(reference)], reference[: len(out)], atol=2e-5)
    # no click: the chain's gain moves at most 1/L per sample, so the output's sample-to-sample
    # steps stay within the program's own (scaled by gain ≤ 1) plus that gain motion
    renderer = ProgramRenderer(program, RATE)
    raw = np.concatenate([renderer.render(1024) for _ in range(int(np.ceil(2.5 * RATE / 1024)))])
    steepest_in = float(np.max(np.abs(np.diff(raw, axis=0))))
    steepest_out = float(np.max(np.abs(np.diff(out, axis=0))))
    peak_in = float(np.max(np.abs(raw)))
    assert steepest_out <= steepest_in + peak_in * 2.0 / chain.limiter.window
