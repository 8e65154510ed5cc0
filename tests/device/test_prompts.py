"""Spoken prompts built with the real espeak-ng: cached WAVs at a fixed level through the
calibration, a manifest that avoids re-speaking, the language fallback, and the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import require_tool

from resonera.device.prompts import (
    CATALOGUE,
    PromptLibrary,
    PromptsError,
    active_level_dbfs,
    build_prompts,
    choose_language,
    time_left_keys,
)
from resonera.engine.audio.calibration import load_calibration_file, packaged_calibration

RATE = 44100
KEYS = ["session_start", "max_volume", "time_left", "n5", "minutes"]
CALIBRATION = load_calibration_file(packaged_calibration())
BIN = Path(sys.executable).parent / "resonera-device"


@pytest.fixture(autouse=True)
def _espeak() -> None:
    require_tool("espeak-ng")


def test_prompts_are_spoken_at_the_fixed_level_and_cached(tmp_path: Path) -> None:
    report = build_prompts(tmp_path, CALIBRATION, sample_rate=RATE, level_dba=55.0, keys=KEYS)
    assert (report.built, report.reused, report.language, report.fallback) == (5, 0, "en", "")
    assert report.level_dbfs == pytest.approx(CALIBRATION.dbfs_for_spl(55.0))
    library = PromptLibrary(tmp_path, RATE)
    assert library.keys == sorted(KEYS)
    for clip in library.clips(*KEYS):
        level_dba = CALIBRATION.spl_at_dbfs(active_level_dbfs(clip.samples, RATE))
        assert level_dba == pytest.approx(55.0, abs=0.3), clip.key
        assert np.abs(clip.samples).max() <= 10 ** (-1 / 20) + 1e-3
        assert 0.2 < clip.duration_s < 5.0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["prompts"]["max_volume"]["text"] == CATALOGUE["en"]["max_volume"]
    assert (manifest["language"], manifest["sample_rate"], manifest["level_dba"]) == (
        "en",
        RATE,
        55,
    )
    again = build_prompts(tmp_path, CALIBRATION, sample_rate=RATE, level_dba=55.0, keys=KEYS)
    assert (again.built, again.reused) == (0, 5)
    louder = build_prompts(tmp_path, CALIBRATION, sample_rate=RATE, level_dba=58.0, keys=KEYS[:1])
    assert (louder.built, louder.reused) == (1, 0)  # a new level is a new prompt


def test_the_person_s_language_when_there_is_a_voice_and_texts_else_english() -> None:
    assert choose_language("de_DE", {"de", "en"}) == ("de", "")
    assert choose_language("en-GB", {"en-gb", "en"}) == ("en", "")
    language, why = choose_language("fr", {"fr", "en"})
    assert (language, why) == ("en", "no prompt texts in 'fr' (have: de, en): using English")
    language, why = choose_language("de", {"en"})
    assert (language, why) == ("en", "espeak-ng has no voice for 'de': using English")


def test_a_german_build_speaks_german_and_says_so(tmp_path: Path) -> None:
    report = build_prompts(tmp_path, CALIBRATION, language="de", sample_rate=RATE, keys=KEYS[:2])
    assert report.language == "de"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["prompts"]["max_volume"]["text"] == "Maximale Lautstärke."


def test_bad_requests_and_a_missing_or_mismatched_cache_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PromptsError, match="no such prompt"):
        build_prompts(tmp_path, CALIBRATION, sample_rate=RATE, keys=["shout"])
    with pytest.raises(PromptsError, match="run 'resonera-device prompts build' first"):
        PromptLibrary(tmp_path / "none", RATE)
    build_prompts(tmp_path, CALIBRATION, sample_rate=RATE, keys=KEYS[:1])
    with pytest.raises(PromptsError, match="are at 44100 Hz, the device plays at 48000 Hz"):
        PromptLibrary(tmp_path, 48000)
    assert PromptLibrary(tmp_path, RATE).clips("session_start", "not-built") != []


def test_a_prompt_file_damaged_after_start_is_skipped_and_refused_at_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build_prompts(tmp_path, CALIBRATION, sample_rate=RATE, keys=KEYS[:2])
    library = PromptLibrary(tmp_path, RATE)
    (tmp_path / "session_start.wav").write_bytes(b"RIFF, but not a prompt")
    assert [clip.key for clip in library.clips(*KEYS[:2])] == ["max_volume"]
    assert "prompt 'session_start' cannot be read from" in caplog.text
    with pytest.raises(PromptsError, match="prompt 'session_start' cannot be read from"):
        PromptLibrary(tmp_path, RATE)


def test_time_left_is_composed_from_cached_clips() -> None:
    assert time_left_keys(1) == ["time_left", "n1", "minute"]
    assert time_left_keys(0) == ["time_left", "n0", "minutes"]
    assert time_left_keys(75) == ["time_left", "n1", "hour", "n15", "minutes"]
    assert time_left_keys(120) == ["time_left", "n2", "hours"]


def test_the_build_command_reports_the_language_it_used(tmp_path: Path) -> None:
    out = tmp_path / "prompts"
    args = ["prompts", "build", "--dir", out, "--calibration", packaged_calibration()]
    result = subprocess.run(
        [str(BIN), *map(str, [*args, "--rate", "44100", "--lang", "sv"])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "no prompt texts in 'sv'" in result.stdout
    assert "language en" in result.stdout
    assert len(PromptLibrary(out, 44100).keys) == len(CATALOGUE["en"]) + 60
    bad = subprocess.run(
        [str(BIN), *map(str, [*args, "--rate", "44100", "--level-dba", "90"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert "prompt level 90 dBA is outside 45…75 dBA" in bad.stderr
    assert "Traceback" not in bad.stderr
