from __future__ import annotations

import pytest

from resonera.common.errors import ProgramError
from resonera.common.profile import FrequencyRange, HearingProfile
from resonera.common.program import load_program_toml
from resonera.common.program_check import check_program_for

BINAURAL = """
name = "drift"
[[steps]]
duration_s = 600
[[steps.layers]]
type = "binaural"
carrier_hz = 200
beat_hz = 10
gain = 0.3
slide = { beat_hz = "exponential" }
[[steps]]
duration_s = 600
[[steps.layers]]
type = "binaural"
carrier_hz = 200
beat_hz = 4
gain = 0.3
"""


def test_a_program_within_the_profile_plays_unchanged_on_headphones() -> None:
    program = load_program_toml(BINAURAL)
    assert check_program_for(program, HearingProfile(), "headphones") is program


def test_every_problem_is_named_with_step_layer_field_and_range() -> None:
    profile = HearingProfile(beat_hz=FrequencyRange(low=6, high=12), max_session_s=900.0)
    with pytest.raises(ProgramError) as info:
        check_program_for(load_program_toml(BINAURAL), profile, "headphones")
    message = str(info.value)
    assert "lasts 1200 s" in message and "at most 900 s" in message
    assert (
        "step 2 layer 1 (binaural): beat_hz 4 Hz is outside this person's range 6–12 Hz" in message
    )


def test_binaural_on_a_speaker_is_refused_or_rendered_otherwise() -> None:
    program = load_program_toml(BINAURAL)
    with pytest.raises(ProgramError, match="need headphones"):
        check_program_for(program, HearingProfile(output="speaker"), "speaker")
    monaural = check_program_for(program, HearingProfile(binaural_on_speaker="monaural"), "speaker")
    assert {layer.type for s in monaural.steps for layer in s.layers} == {"monaural"}
    isochronic = check_program_for(
        program, HearingProfile(binaural_on_speaker="isochronic"), "speaker"
    )
    first = isochronic.steps[0].layers[0]
    assert first.type == "isochronic"
    assert first.curve("pulse_hz") == "exponential"  # the beat's slide carried over
    assert not isochronic.needs_headphones
