"""A spoken prompt through the real audio path: the player (given the prompt mixer) into
PyAudio, the PulseAudio null sink, recorded from its monitor. The prompt is audible at the level it
was built for, and the program ducks 15 dB under it and comes back after."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from audio_recording import monitor_recording, recorded
from numpy.typing import NDArray
from scipy.signal import filtfilt, iirnotch
from support import require_tool, wait_until

from resonera.common.program import Program, Step, ToneLayer
from resonera.device.audio import prompt_mixer
from resonera.device.prompts import PromptLibrary, active_level_dbfs, build_prompts
from resonera.engine.audio.calibration import load_calibration_file, packaged_calibration
from resonera.engine.audio.player import play
from resonera.engine.audio.sinks import PyAudioSink
from resonera.engine.audio.synth import ProgramRenderer

# Times the safety MCU's watchdogs or measures recorded sound against real time: the main pass
# only (the dates of their sessions are checked under faketime by the sessions' other tests).
pytestmark = pytest.mark.realtime

RATE = 48000
#: Above most of the speech's energy, so the program is measured apart from the prompt.
TONE_HZ = 7500.0
PROMPT_AT_S = 1.0


def tone_program(seconds: float) -> Program:
    layer = ToneLayer(frequency_hz=TONE_HZ, gain=0.25)
    return Program(
        name="tone",
        fade_in_s=0.05,
        fade_out_s=0.05,
        steps=[Step(duration_s=seconds, layers=[layer])],
    )


def tone_level_db(audio: NDArray[np.float64], start: int, stop: int) -> float:
    """The tone's amplitude in dB over ``audio[start:stop]`` (lock-in: speech hardly reaches it)."""
    t = np.arange(start, stop) / RATE
    segment = audio[start:stop]
    i = float(np.mean(segment * np.cos(2 * np.pi * TONE_HZ * t)))
    q = float(np.mean(segment * np.sin(2 * np.pi * TONE_HZ * t)))
    return 20 * math.log10(2 * math.hypot(i, q))


def test_a_prompt_is_heard_at_its_level_over_the_ducked_program(
    pulse_null_sink: str, tmp_path: Path
) -> None:
    require_tool("espeak-ng")
    calibration = load_calibration_file(packaged_calibration())
    build_prompts(tmp_path, calibration, sample_rate=RATE, keys=["session_start"])
    [clip] = PromptLibrary(tmp_path, RATE).clips("session_start")
    built_level = active_level_dbfs(clip.samples, RATE)

    mixer = prompt_mixer.PromptMixer(RATE)
    renderer = ProgramRenderer(tone_program(PROMPT_AT_S + clip.duration_s + 2.0), RATE)

    def on_block(_block: NDArray[np.float32], renderer: ProgramRenderer) -> None:
        if renderer.position_s >= PROMPT_AT_S and not mixer.speaking and not mixer.spoken:
            mixer.say(clip)

    total = renderer.total_frames
    with monitor_recording(pulse_null_sink, tmp_path / "monitor.raw") as raw:
        wait_until(lambda: len(recorded(raw)) > 0, what="parec to deliver audio")
        result = play(
            renderer, PyAudioSink("pulse"), block_frames=1024, on_block=on_block, mixer=mixer
        )
        assert result.outcome == "completed"
        assert list(mixer.spoken) == ["session_start"]

        def recorded_all() -> bool:
            loud = np.flatnonzero(np.abs(recorded(raw)[:, 0]) > 1e-3)
            return len(loud) > 0 and len(recorded(raw)) - loud[0] >= total + RATE // 5

        wait_until(recorded_all, timeout=30, what="the session to come back from the monitor")
    left = recorded(raw)[:, 0].astype(np.float64)
    start = int(np.flatnonzero(np.abs(left) > 1e-3)[0])
    audio = left[start : start + total]

    # the prompt begins after the duck ramp (0.15 s), one block after it was queued at most
    speech_from = round((PROMPT_AT_S + 0.15) * RATE)
    speech_to = speech_from + len(clip.samples)
    before = tone_level_db(audio, round(0.3 * RATE), round(0.9 * RATE))
    during = tone_level_db(audio, speech_from + 2048, speech_to - 2048)
    after = tone_level_db(audio, speech_to + round(0.5 * RATE), total - round(0.3 * RATE))
    assert during - before == pytest.approx(-15.0, abs=1.0)
    assert after == pytest.approx(before, abs=0.5)

    b, a = iirnotch(TONE_HZ, 10.0, RATE)  # the prompt alone: take the program's tone out
    voice = filtfilt(b, a, audio[speech_from - 2048 : speech_to + 4096])
    assert active_level_dbfs(voice, RATE) == pytest.approx(built_level, abs=1.0)
    assert calibration.spl_at_dbfs(active_level_dbfs(voice, RATE)) == pytest.approx(60.0, abs=1.0)
