"""What a device accepts as a prescribed program and what it refuses, in the words the clinician
then reads on the dashboard (issue 20: deliver)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest

from resonera.common.prescription import (
    PRESCRIPTION_SCHEMA,
    BackgroundFile,
    ContentMissing,
    EngineCapabilities,
    PrescriptionRefused,
    check_prescribed,
    content_path,
    definition_sha256,
    order_is_unique,
    parse_prescribed,
    prescribe,
    resolve_content_paths,
)
from resonera.common.profile import FrequencyRange, HearingProfile
from resonera.common.program import builtin_program, parse_program

LIBRARY_ID = "01939a5e-0000-7000-8000-000000000001"
ENGINE = EngineCapabilities(
    engine_version="test",
    program_schemas=(PRESCRIPTION_SCHEMA,),
    layer_types=("tone", "binaural", "monaural", "isochronic", "noise", "background"),
    sample_rates=(48000,),
)
WAVE = hashlib.sha256(b"rain").hexdigest()


def with_background(path: str) -> dict[str, object]:
    definition = builtin_program("calm-tone").model_dump(mode="json")
    definition["name"] = "rain and tone"
    definition["steps"][0]["layers"].append({"type": "background", "path": path, "gain": 0.1})
    return definition


def test_a_prescribed_program_plays_as_the_library_stored_it() -> None:
    program = builtin_program("alpha-relax")
    entry = prescribe(LIBRARY_ID, 3, program)
    assert entry.sha256 == definition_sha256(program.model_dump(mode="json"))
    assert (entry.library_id, entry.version, entry.name) == (LIBRARY_ID, 3, "alpha-relax")
    received = parse_prescribed(entry.model_dump(mode="json"), "programs[0]")
    assert check_prescribed(received, HearingProfile(), ENGINE) == program


def test_the_hash_is_over_the_sorted_compact_json_of_the_definition() -> None:
    definition = {"name": "x", "steps": [{"a": 1}], "b": "é"}
    assert (
        definition_sha256(definition)
        == hashlib.sha256('{"b":"é","name":"x","steps":[{"a":1}]}'.encode()).hexdigest()
    )


def test_a_definition_altered_on_the_way_is_refused_by_its_hash() -> None:
    entry = prescribe(LIBRARY_ID, 1, builtin_program("calm-tone")).model_dump(mode="json")
    entry["definition"]["steps"][0]["layers"][0]["gain"] = 0.9
    with pytest.raises(
        PrescriptionRefused, match=r"'calm-tone' \(library .* v1\): the definition's SHA-256"
    ):
        check_prescribed(parse_prescribed(entry, "programs[0]"), HearingProfile(), ENGINE)


def test_a_definition_the_model_refuses_is_refused_even_with_a_matching_hash() -> None:
    entry = prescribe(LIBRARY_ID, 1, builtin_program("calm-tone")).model_dump(mode="json")
    entry["definition"]["steps"][0]["layers"][0]["frequency_hz"] = 50_000.0
    entry["sha256"] = definition_sha256(entry["definition"])
    with pytest.raises(PrescriptionRefused, match=r"calm-tone.*frequency_hz"):
        check_prescribed(parse_prescribed(entry, "programs[0]"), HearingProfile(), ENGINE)


def test_a_program_outside_this_persons_limits_is_refused_naming_the_range() -> None:
    narrow = HearingProfile(beat_hz=FrequencyRange(low=0.5, high=4.0))
    entry = prescribe(LIBRARY_ID, 2, builtin_program("alpha-relax"))
    with pytest.raises(
        PrescriptionRefused, match=r"alpha-relax.*v2.*beat_hz .* outside .* 0.5–4 Hz"
    ):
        check_prescribed(entry, narrow, ENGINE)
    short = HearingProfile(max_session_s=600.0)
    with pytest.raises(PrescriptionRefused, match="may last at most 600 s"):
        check_prescribed(entry, short, ENGINE)


def test_a_program_needing_a_layer_the_engine_lacks_is_refused() -> None:
    old_engine = ENGINE.model_copy(update={"layer_types": ("tone", "binaural")})
    entry = prescribe(LIBRARY_ID, 1, builtin_program("focus-isochronic"))
    with pytest.raises(PrescriptionRefused, match=r"lacks layer type\(s\) isochronic, noise"):
        check_prescribed(entry, HearingProfile(), old_engine)


def test_an_unknown_schema_is_refused_not_guessed() -> None:
    entry = prescribe(LIBRARY_ID, 1, builtin_program("calm-tone"))
    newer = entry.model_copy(update={"schema_version": PRESCRIPTION_SCHEMA + 1})
    with pytest.raises(PrescriptionRefused, match="schema 2 is not one this device knows"):
        check_prescribed(newer, HearingProfile(), ENGINE)


def test_a_background_travels_by_content_and_its_file_must_be_listed() -> None:
    program = parse_program(with_background(content_path(WAVE)))
    listed = BackgroundFile(sha256=WAVE, size=4)
    entry = prescribe(LIBRARY_ID, 1, program, [listed])
    assert check_prescribed(entry, HearingProfile(), ENGINE) == program
    with pytest.raises(PrescriptionRefused, match="name 1 file"):
        prescribe(LIBRARY_ID, 1, program)
    unlisted = entry.model_copy(update={"backgrounds": ()})
    with pytest.raises(PrescriptionRefused, match="disagree"):
        check_prescribed(unlisted, HearingProfile(), ENGINE)
    cannot_fetch = ENGINE.model_copy(update={"fetches_backgrounds": False})
    with pytest.raises(PrescriptionRefused, match=r"background file.*cannot fetch"):
        check_prescribed(entry, HearingProfile(), cannot_fetch)
    holds_it = cannot_fetch.model_copy(update={"backgrounds": (WAVE,)})
    assert check_prescribed(entry, HearingProfile(), holds_it) == program


def test_a_background_by_plain_path_is_not_prescribable() -> None:
    program = parse_program(with_background("/home/someone/rain.wav"))
    with pytest.raises(
        PrescriptionRefused, match=r"by content .*not by the path '/home/someone/rain.wav'"
    ):
        prescribe(LIBRARY_ID, 1, program)


def test_malformed_entries_are_refused_with_the_field() -> None:
    entry = prescribe(LIBRARY_ID, 1, builtin_program("calm-tone")).model_dump(mode="json")
    broken = copy.deepcopy(entry)
    broken["sha256"] = "not-a-hash"
    with pytest.raises(PrescriptionRefused, match=r"programs\[4\]: .*sha256"):
        parse_prescribed(broken, "programs[4]")
    with pytest.raises(PrescriptionRefused, match=r"programs\[0\]"):
        parse_prescribed({"name": "calm-tone"}, "programs[0]")


def test_a_prescription_names_each_program_once() -> None:
    tone = prescribe(LIBRARY_ID, 1, builtin_program("calm-tone"))
    alpha = prescribe("01939a5e-0000-7000-8000-000000000002", 1, builtin_program("alpha-relax"))
    assert order_is_unique([tone, alpha]) is None
    assert "prescribed twice" in (order_is_unique([tone, tone]) or "")
    renamed = alpha.model_copy(update={"name": "Calm-Tone"})
    assert "share a name" in (order_is_unique([tone, renamed]) or "")


def test_content_paths_resolve_to_the_held_file_or_name_the_missing_one(tmp_path: Path) -> None:
    program = parse_program(with_background(content_path(WAVE)))
    held = tmp_path / WAVE
    resolved = resolve_content_paths(program, lambda digest: held if digest == WAVE else None)
    assert resolved.steps[0].layers[-1].path == str(held)  # type: ignore[union-attr]
    assert program.steps[0].layers[-1].path == content_path(WAVE)  # type: ignore[union-attr]
    with pytest.raises(ContentMissing, match=f"'rain and tone': its background file {WAVE[:12]}"):
        resolve_content_paths(program, lambda _digest: None)
    plain = builtin_program("calm-tone")
    assert resolve_content_paths(plain, lambda _digest: None) is plain
