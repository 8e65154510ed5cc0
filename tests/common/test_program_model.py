from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from resonera.common.errors import ProgramError
from resonera.common.program import (
    BUILTIN_PROGRAMS,
    builtin_program,
    load_builtin_programs,
    load_program_file,
    load_program_toml,
    parse_program,
)

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
    with pytest.raises(
        ProgramError, match="built-in programs: alpha-relax, calm-tone, delta-sleep, demo-alpha"
    ):
        builtin_program("nope")


#: SHA-256 of each built-in program's canonical JSON (``Program.digest``) when they were written as
#: Python in program.py, before they moved to program-<name>.toml files: the files hold exactly them.
BUILTIN_DIGESTS = {
    "alpha-relax": "f1c09ed14b8b4fed505d42bacbe068fe8a203488ce662aa7a047fa9f7d7fa3a7",
    "calm-tone": "72c7d6889e9f1be906da8cd43ec2fe77dc43efae9aedb3dbaa26c8d030c9efa3",
    "delta-sleep": "d40d836f983d59108ad874ed4e2b095210547356ac12052b5765e261eca9ccfd",
    "demo-alpha": "d7c3f2235ae6210ecc024e1cc64dae567e0935e06194e53d8f332e6690692fab",
    "focus-isochronic": "ca68bc02f945c3f540e527292a97dbe2b64ee6eaf68142bf7664b6ac0ab76365",
    "theta-descent": "e39ca32c86b858cb4769a6bf4b7e97d3c8cc878b5aca785d4bc34c2667f726fe",
}


def test_builtin_program_files_hold_exactly_the_programs_once_written_in_python() -> None:
    # the digests were of pydantic's own JSON dump (field order), taken when the programs were code
    held = {
        n: hashlib.sha256(p.model_dump_json().encode()).hexdigest()
        for n, p in BUILTIN_PROGRAMS.items()
    }
    assert held == BUILTIN_DIGESTS


def test_a_builtin_program_file_must_carry_its_own_name(tmp_path: Path) -> None:
    (tmp_path / "program-calm.toml").write_text(
        'name = "other"\n[[steps]]\nduration_s = 60\n', encoding="utf-8"
    )
    (tmp_path / "README.md").write_text("not a program", encoding="utf-8")
    with pytest.raises(ProgramError, match=r"program-calm\.toml: names the program 'other'"):
        load_builtin_programs(tmp_path)
    (tmp_path / "program-calm.toml").write_text(
        'name = "calm"\n[[steps]]\nduration_s = 60\n', encoding="utf-8"
    )
    assert list(load_builtin_programs(tmp_path)) == ["calm"]


# --- Program model v2 ---------------------------------------------------------------------------

V2 = """
name = "v2"
seed = 7
crossfade_s = 0.5

[[steps]]
duration_s = 30
[[steps.layers]]
type = "noise"
mix = { pink = 0.7, brown = 0.3 }
gain = 0.4
slide = { mix = "ease", gain = "linear" }
[[steps.layers]]
type = "binaural"
carrier_hz = 200
beat_hz = 10
gain = 0.3
slide = { beat_hz = "exponential", gain = "linear" }
[[steps.layers]]
type = "isochronic"
carrier_hz = 300
pulse_hz = 12
duty = 0.4
edge = 0.1
gain = 0.1
pan = 0.5

[[steps]]
duration_s = 30
[[steps.layers]]
type = "noise"
colour = "white"
gain = 0.3
[[steps.layers]]
type = "binaural"
carrier_hz = 200
beat_hz = 4
gain = 0.4
[[steps.layers]]
type = "monaural"
carrier_hz = 300
beat_hz = 6
gain = 0.2
"""


def test_v2_program_with_every_sounding_layer_and_slides_loads() -> None:
    program = load_program_toml(V2)
    first = program.steps[0].layers
    assert [layer.type for layer in first] == ["noise", "binaural", "isochronic"]
    assert first[1].curve("beat_hz") == "exponential"
    assert first[1].curve("carrier_hz") == "hold"
    assert first[0].curve("mix") == "ease"
    assert program.seed == 7
    assert program.needs_headphones


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ('colour = "white"', 'colour = "blue"', "colour"),
        ('colour = "white"', "", "either colour or mix"),
        ("duty = 0.4", "duty = 0.1", "do not fit"),
        ("pulse_hz = 12", "pulse_hz = 50", "pulse_hz"),
        ("pan = 0.5", "pan = -1.5", "pan"),
        (
            'slide = { mix = "ease", gain = "linear" }',
            'slide = { gain = "exponential" }',
            "exponentially",
        ),
        (
            'slide = { mix = "ease", gain = "linear" }',
            'slide = { colour = "linear" }',
            "cannot slide",
        ),
        (
            'slide = { mix = "ease", gain = "linear" }',
            'slide = { gain = "ease" }',
            "share one curve",
        ),
        ('type = "monaural"', 'type = "drone"', "type"),
        ("seed = 7", "seed = -1", "seed"),
        ("crossfade_s = 0.5", "crossfade_s = nan", "crossfade_s"),
    ],
)
def test_v2_bad_programs_are_refused_by_field(old: str, new: str, complaint: str) -> None:
    assert old in V2
    with pytest.raises(ProgramError) as info:
        load_program_toml(V2.replace(old, new, 1), source="v2.toml")
    assert complaint in str(info.value)


def test_a_slide_needs_a_layer_of_the_same_kind_in_the_next_step() -> None:
    text = V2.replace('type = "isochronic"', 'type = "isochronic"\nslide = "linear"')
    with pytest.raises(ProgramError, match=r"steps\.0\.layers\.2\.slide: .*holds a monaural layer"):
        load_program_toml(text)
    last = (
        V2
        + '\n[[steps]]\nduration_s = 5\n[[steps.layers]]\ntype = "tone"\n'
        + 'frequency_hz = 100\ngain = 0.1\nslide = "ease"\n'
    )
    with pytest.raises(ProgramError, match="no next step"):
        load_program_toml(last)


def test_overlapping_or_gapped_absolute_times_are_refused() -> None:
    steps = [
        {"duration_s": 10, "at_s": 0, "layers": []},
        {"duration_s": 10, "at_s": 10, "layers": []},
    ]
    assert parse_program({"name": "t", "fade_in_s": 0, "fade_out_s": 0, "steps": steps})
    steps[1]["at_s"] = 8
    with pytest.raises(
        ProgramError, match=r"steps\.1\.at_s: .*overlapping the previous step .* by 2 s"
    ):
        parse_program({"name": "t", "fade_in_s": 0, "fade_out_s": 0, "steps": steps})
    steps[1]["at_s"] = 12
    with pytest.raises(ProgramError, match=r"steps\.1\.at_s: .*gap of 2 s"):
        parse_program({"name": "t", "fade_in_s": 0, "fade_out_s": 0, "steps": steps})


def test_program_file_resolves_and_checks_background_files(tmp_path: Path) -> None:
    text = (
        'name = "bg"\n[[steps]]\nduration_s = 10\n[[steps.layers]]\n'
        'type = "background"\npath = "rain.wav"\ngain = 0.5\n'
    )
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(
        ProgramError, match=r"steps\.0\.layers\.0\.path: background file .*rain\.wav does not exist"
    ):
        load_program_file(tmp_path / "p.toml")
    (tmp_path / "rain.wav").write_bytes(b"")
    program = load_program_file(tmp_path / "p.toml")
    assert program.background_paths() == [("steps.0.layers.0.path", str(tmp_path / "rain.wav"))]


def test_every_preset_is_valid_and_every_therapeutic_one_fades() -> None:
    assert len(BUILTIN_PROGRAMS) >= 5
    for name, program in BUILTIN_PROGRAMS.items():
        assert program.name == name
        assert program.description
        assert program.fade_in_s > 0 and program.fade_out_s > 0


def test_gains_at_the_end_of_slides_must_stay_within_full_scale() -> None:
    text = V2.replace("beat_hz = 4\ngain = 0.4", "beat_hz = 4\ngain = 0.65").replace(
        "beat_hz = 6\ngain = 0.2", "beat_hz = 6\ngain = 0.05"
    )
    with pytest.raises(ProgramError, match=r"steps\.0: .*1\.050 at the end of the step's slides"):
        load_program_toml(text)
