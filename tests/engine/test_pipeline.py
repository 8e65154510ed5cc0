"""The pipeline, built in one place (``resonera.engine.pipeline``): the renderer, the stages before the
chain in order, the chain held to the calibration, the profile and the MCU's limits; what it plays is
what the player plays with that chain; and the engine works without the device, the server and
PyAudio (the server's previews)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from resonera.common.profile import HearingProfile
from resonera.common.program import Program, Step, ToneLayer
from resonera.common.safety_link import HardLimits
from resonera.engine.audio.calibration import (
    DEFAULT_CALIBRATION,
    default_calibration,
    load_calibration_file,
    packaged_calibration,
)
from resonera.engine.audio.player import play
from resonera.engine.audio.sinks import WavSink
from resonera.engine.audio.synth import ProgramRenderer
from resonera.engine.pipeline import build_chain, build_pipeline, render_calibration

RATE = 44100
TONE = Program(
    name="tone",
    fade_in_s=0.2,
    fade_out_s=0.2,
    steps=[Step(duration_s=2.0, layers=[ToneLayer(frequency_hz=440.0, gain=0.5)])],
)
HARD = HardLimits(
    max_output_vrms=0.05,
    max_amp_temp_c=85,
    max_supply_current_a=1.0,
    max_dc_offset_mv=50,
    max_ear_spl_db=80.0,
)


def test_the_stages_come_first_and_the_chain_holds_to_the_mcu_limits() -> None:
    seen: list[int] = []

    def stage(block: NDArray[np.float32]) -> NDArray[np.float32]:
        seen.append(len(block))
        return block

    calibration = default_calibration()
    pipeline = build_pipeline(
        TONE,
        sample_rate=RATE,
        calibration=calibration,
        profile=HearingProfile(max_level_dba=85.0),
        hard=HARD,
        before_chain=[stage],
    )
    assert pipeline.processors == (stage, pipeline.chain)
    assert pipeline.sample_rate == RATE and pipeline.renderer.total_frames == 2 * RATE
    # the MCU's ear limit lowers the profile; its voltage limit is the peak ceiling
    assert pipeline.chain.profile.max_level_dba == 80.0
    assert pipeline.chain.limits.peak_ceiling < 1.0
    assert pipeline.chain.ledger is None
    free = build_chain(sample_rate=RATE, calibration=calibration, profile=HearingProfile())
    assert free.limits.peak_ceiling == 1.0 and free.profile == HearingProfile()


def test_the_default_calibration_is_the_packaged_one_and_only_when_none_is_given(
    tmp_path: Path,
) -> None:
    packaged = load_calibration_file(packaged_calibration(DEFAULT_CALIBRATION))
    assert render_calibration() == (packaged, True)
    own = tmp_path / "own.toml"
    own.write_text(
        'name = "own"\noutput = "headphones"\ndac_full_scale_vrms = 1.0\n'
        "sensitivity_db_spl_per_v = 100.0\n"
    )
    from_file, default = render_calibration(None, own)
    assert from_file.name == "own" and not default
    assert render_calibration(packaged, own) == (packaged, False)


def test_it_plays_what_the_player_plays_with_that_chain_read_ahead_or_not(tmp_path: Path) -> None:
    profile = HearingProfile(max_level_dba=70.0, fallback_level_dba=65.0)
    calibration = default_calibration()
    by_hand = tmp_path / "by-hand.wav"
    play(
        ProgramRenderer(TONE, RATE),
        WavSink(by_hand),
        block_frames=1000,
        processors=[build_chain(sample_rate=RATE, calibration=calibration, profile=profile)],
        compensate_latency=True,
    )
    for read_ahead in (False, True):
        out = tmp_path / f"pipeline-{read_ahead}.wav"
        result = build_pipeline(
            TONE, sample_rate=RATE, calibration=calibration, profile=profile
        ).play(WavSink(out), block_frames=1000, read_ahead=read_ahead, compensate_latency=True)
        assert result.outcome == "completed" and result.played_s == 2.0
        assert out.read_bytes() == by_hand.read_bytes()


WITHOUT_PYAUDIO = """
import sys
from pathlib import Path
sys.modules["pyaudio"] = None  # not installed: the server extra has no PyAudio
from resonera.common.profile import HearingProfile
from resonera.common.program import builtin_program
from resonera.engine.audio.calibration import default_calibration
from resonera.engine.audio.sinks import WavSink
from resonera.engine.pipeline import build_pipeline

pipeline = build_pipeline(
    builtin_program("demo-alpha"), sample_rate=44100, calibration=default_calibration(),
    profile=HearingProfile(),
)
result = pipeline.play(
    WavSink(Path(sys.argv[1])), block_frames=4096,
    should_stop=lambda: pipeline.renderer.position_s >= 1.0, compensate_latency=True,
)
print(result.outcome, sorted({name.split(".")[1] for name in sys.modules
                              if name.startswith("resonera.")}))
"""


def test_the_engine_plays_without_pyaudio_the_device_or_the_server(tmp_path: Path) -> None:
    out = tmp_path / "preview.wav"
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYAUDIO, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 1) == ["stopped", "['common', 'engine']\n"]
    assert out.stat().st_size > 44
