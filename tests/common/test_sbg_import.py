"""SBaGen ``.sbg`` import: tone-sets, times, slides, noise, isochronic, and errors by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from resonera.common.errors import ProgramError
from resonera.common.program import (
    BackgroundLayer,
    BinauralLayer,
    IsochronicLayer,
    NoiseLayer,
    ToneLayer,
    load_program_file,
)
from resonera.common.sbg import import_sbg

SCHEDULE = """\
## Drift from alpha to theta
## over half an hour.
-SE
alpha: pink/30 200+10/20    # pink noise and a 10 Hz beat
theta: pink/30 200+4/20
iso:   white/10 300@12/15 432/5
off: -

NOW      == alpha ->
+00:10   == theta
+00:20:30   iso
+00:30   off
"""


def test_a_schedule_becomes_steps_with_slides_noise_and_isochronic() -> None:
    result = import_sbg(SCHEDULE, source="drift.sbg")
    program = result.program
    assert program.name == "drift"
    assert program.description == "Drift from alpha to theta over half an hour."
    assert [s.duration_s for s in program.steps] == [600.0, 630.0, 570.0]
    assert [s.at_s for s in program.steps] == [0.0, 600.0, 1230.0]
    assert [s.label for s in program.steps] == ["alpha", "theta", "iso"]
    noise, beat = program.steps[0].layers
    assert isinstance(noise, NoiseLayer) and noise.colour == "pink" and noise.gain == 0.3
    assert isinstance(beat, BinauralLayer)
    assert (beat.carrier_hz, beat.beat_hz, beat.gain) == (200.0, 10.0, 0.2)
    # '->' with '==' on both lines: the beat slides linearly to theta's 4 Hz.
    assert beat.curve("beat_hz") == "linear"
    assert beat.curve("gain") == "linear"
    assert program.steps[1].layers[1].curve("beat_hz") == "hold"
    white, iso, tone = program.steps[2].layers
    assert isinstance(white, NoiseLayer) and white.colour == "white"
    assert isinstance(iso, IsochronicLayer) and (iso.carrier_hz, iso.pulse_hz) == (300.0, 12.0)
    assert isinstance(tone, ToneLayer) and tone.frequency_hz == 432.0
    assert program.duration_s == 1800.0
    assert result.notes == []


def test_clock_times_count_from_the_first_and_wrap_past_midnight() -> None:
    text = "a: 150+6/20\noff: -\n23:30 a\n00:15 off\n"
    program = import_sbg(text).program
    assert program.duration_s == 45 * 60


def test_relative_times_are_relative_to_the_last_absolute_time() -> None:
    text = "a: 150+6/20\nb: 150+5/20\noff: -\nNOW a\nNOW+00:01 b\n+00:02 a\n+00:03:30 off\n"
    steps = import_sbg(text).program.steps
    assert [s.duration_s for s in steps] == [60.0, 60.0, 90.0]


def test_minus_sign_and_the_last_tone_set_are_reported_as_notes() -> None:
    text = "a: 150-6/20\nNOW a\n+00:01 a\n"
    result = import_sbg(text, source="x.sbg")
    assert any("x.sbg:1:" in note and "right ear" in note for note in result.notes)
    assert any("x.sbg:3:" in note and "marks the end" in note for note in result.notes)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("a: bell+400/20\nNOW a\n+00:01 a\n", "s.sbg:1: tone-spec 'bell+400/20': bell tone-spec"),
        ("a: spin:300+4/20\nNOW a\n+00:01 a\n", "s.sbg:1: tone-spec 'spin:300+4/20'"),
        ("a: 200+4/20\nblk: {\n +00:00 a\n}\nNOW a\n+00:01 a\n", "s.sbg:2: block definitions"),
        ("-L 0:30\na: 200+4/20\nNOW a\n+00:01 a\n", "s.sbg:1: option '-L' is not supported"),
        ("a: 200+4/20\nNOW a\n+00:01 b\n", "s.sbg:3: unknown tone-set 'b'"),
        ("a: 200+4/20\nNOW a\n12:00 a\n", "s.sbg:3: mixing NOW and clock times"),
        (
            "a: 200+4/20\nNOW+00:02 a\nNOW+00:01 a\n",
            "s.sbg:3: time-sequence lines must be in order",
        ),
        ("a: 200+60/20\nNOW a\n+00:01 a\n", "s.sbg:1: tone-spec '200+60/20': beat_hz"),
        ("a: 200+4/120\nNOW a\n+00:01 a\n", "s.sbg:1: tone-spec '200+4/120': amplitude 120"),
        ("a: mix/50\nNOW a\n+00:01 a\n", "needs a background file"),
        ("a: 200+4/20\n+00:01 a\n+00:02 a\n", "relative time '+00:01' before any absolute time"),
        ("a: 200+4/20\nNOW a\n", "at least two time-sequence lines"),
        ("a: 200+4/20\nthis is not sbg\nNOW a\n+00:01 a\n", "s.sbg:2: cannot read"),
    ],
)
def test_unsupported_or_wrong_constructs_are_errors_with_their_line(
    text: str, complaint: str
) -> None:
    with pytest.raises(ProgramError) as info:
        import_sbg(text, source="s.sbg")
    assert complaint in str(info.value)


def test_every_error_is_reported_not_only_the_first() -> None:
    text = "a: bell+400/20\nb: wave00:200+4/20\nNOW a\n+00:01 b\n"
    with pytest.raises(ProgramError) as info:
        import_sbg(text, source="s.sbg")
    assert "s.sbg:1:" in str(info.value) and "s.sbg:2:" in str(info.value)


def test_a_schedule_longer_than_three_hours_is_refused() -> None:
    with pytest.raises(ProgramError, match=r"schedule\.sbg:3: duration_s: .*10800"):
        import_sbg("a: 200+4/20\noff: -\nNOW a\n+04:00 off\n")


def test_sbg_files_load_with_their_background(tmp_path: Path) -> None:
    (tmp_path / "river.flac").write_bytes(b"")
    (tmp_path / "s.sbg").write_text(
        "-m river.flac\na: mix/40 200+4/20\noff: -\nNOW a\n+00:05 off\n"
    )
    program = load_program_file(tmp_path / "s.sbg")
    background = program.steps[0].layers[0]
    assert isinstance(background, BackgroundLayer)
    assert background.path == str(tmp_path / "river.flac")
    (tmp_path / "t.sbg").write_text("-m gone.flac\na: mix/40\noff: -\nNOW a\n+00:05 off\n")
    with pytest.raises(ProgramError, match=r"gone\.flac does not exist"):
        load_program_file(tmp_path / "t.sbg")
