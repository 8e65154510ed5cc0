from __future__ import annotations

import pytest

from resonera.common.errors import ProgramError
from resonera.common.program import BUILTIN_PROGRAMS, builtin_program, load_program_toml

GOOD = """
name = "Alpha drift"
fade_in_s = 1.0
fade_out_s = 1.0

[[steps]]
duration_s = 60
[[steps.layers]]
type = "binaural"
carrier_hz = 200
beat_hz = 10
gain = 0.3
[[steps.layers]]
type = "tone"
frequency_hz = 432
gain = 0.2
pan = -0.5
"""


def test_hand_written_program_loads() -> None:
    program = load_program_toml(GOOD)
    assert program.duration_s == 60
    assert program.needs_headphones
    assert len(program.digest()) == 64


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("carrier_hz = 200", "carrier_hz = 2000", "carrier_hz"),
        ("beat_hz = 10", "beat_hz = 60", "beat_hz"),
        ("beat_hz = 10", "beat_hz = nan", "beat_hz"),
        ("frequency_hz = 432", "frequency_hz = inf", "frequency_hz"),
        ("duration_s = 60", "duration_s = 20000", "duration_s"),
        ("gain = 0.3", "gain = 0.9", "add up to 1.100"),
        ('type = "tone"', 'type = "chord"', "type"),
        ("pan = -0.5", "pann = -0.5", "pann"),
    ],
)
def test_unsafe_or_malformed_programs_are_refused_by_field(
    old: str, new: str, complaint: str
) -> None:
    with pytest.raises(ProgramError) as info:
        load_program_toml(GOOD.replace(old, new), source="my.toml")
    assert str(info.value).startswith("my.toml")
    assert complaint in str(info.value)


def test_toml_syntax_errors_name_the_line() -> None:
    with pytest.raises(ProgramError, match="line 2"):
        load_program_toml('name = "x"\nsteps = [ 1,, ]\n', source="p.toml")


def test_builtin_programs_are_valid_and_named() -> None:
    assert builtin_program("demo-alpha").duration_s == 3.0
    assert all(p.name == name for name, p in BUILTIN_PROGRAMS.items())
    with pytest.raises(ProgramError, match="built-in programs: calm-tone, demo-alpha"):
        builtin_program("nope")
