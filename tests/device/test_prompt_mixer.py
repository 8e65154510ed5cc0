"""The prompt mixer: ducking depth and shape, prompt level, no clicks, volume, pause on numpy
blocks, and the player playing through the mixer it is given (the null-sink test plays it for
real: test_prompts_audio.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
from numpy.typing import NDArray

from resonera.common.program import Program, Step, ToneLayer, builtin_program
from resonera.device.audio.prompt_mixer import Clip, PromptMixer
from resonera.engine.audio.player import play
from resonera.engine.audio.sinks import WavSink
from resonera.engine.audio.synth import ProgramRenderer

RATE = 8000
PROGRAM_LEVEL = 0.25


def tone_clip(seconds: float = 0.5, amplitude: float = 0.1, key: str = "tone") -> Clip:
    t = np.arange(round(seconds * RATE)) / RATE
    samples = (amplitude * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    return Clip(key, samples, RATE)


def run(mixer: PromptMixer, frames: int, block: int, program: float) -> NDArray[np.float32]:
    out = []
    for start in range(0, frames, block):
        n = min(block, frames - start)
        out.append(mixer.process(np.full((n, 2), program, dtype=np.float32)))
    return np.concatenate(out)


def split(block: int = 1000) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(program gain, voice) per sample, for a 0.5 s prompt queued at 0.1 s into 1.5 s."""

    def once(program: float) -> NDArray[np.float32]:
        mixer = PromptMixer(RATE)
        head = run(mixer, round(0.1 * RATE), block, program)
        mixer.say(tone_clip())
        return np.concatenate([head, run(mixer, round(1.4 * RATE), block, program)])

    voice = once(0.0)[:, 0].astype(np.float64)
    gain = (once(PROGRAM_LEVEL)[:, 0] - voice) / PROGRAM_LEVEL
    return gain, voice


def test_the_program_ducks_15_db_while_the_prompt_plays_and_comes_back() -> None:
    gain, voice = split()
    speaking = np.flatnonzero(np.abs(voice) > 0)
    first, last = speaking[0], speaking[-1]
    assert gain[: round(0.1 * RATE)] == pytest.approx(1.0)
    assert 20 * np.log10(gain[first:last]) == pytest.approx(-15.0, abs=0.01)
    # the prompt starts once the program is down: the ramp (0.15 s) comes first
    assert first == pytest.approx(0.1 * RATE + 0.15 * RATE, abs=2)
    assert gain[-round(0.2 * RATE) :] == pytest.approx(1.0)


def test_no_jumps_the_gain_ramps_smoothly_and_the_prompt_edges_fade() -> None:
    gain, voice = split()
    step_db = np.abs(np.diff(20 * np.log10(gain)))
    assert step_db.max() <= 15.0 / (0.15 * RATE) + 1e-6  # per sample: a 150 ms ramp, never a jump
    speaking = np.flatnonzero(np.abs(voice) > 0)
    assert abs(voice[speaking[0]]) < 0.01 and abs(voice[speaking[-1]]) < 0.01
    assert np.abs(np.diff(voice)).max() < 0.1 * 2 * np.pi * 440 / RATE * 1.05  # no step


def test_the_prompt_plays_at_its_own_level_whatever_the_volume() -> None:
    clip = tone_clip(amplitude=0.1)
    mixer = PromptMixer(RATE)
    mixer.set_volume(-12.0, 0.05)
    mixer.say(clip)
    voice = run(mixer, RATE, 512, 0.0)[:, 0]
    rms = np.sqrt(np.mean(voice[np.abs(voice) > 0] ** 2))
    assert 20 * np.log10(rms) == pytest.approx(20 * np.log10(0.1 / np.sqrt(2)), abs=0.2)
    assert list(mixer.spoken) == ["tone"]


def test_the_same_output_whatever_the_block_size() -> None:
    small, large = split(block=97), split(block=4096)
    assert np.allclose(small[0], large[0], atol=1e-6)
    assert np.allclose(small[1], large[1], atol=1e-6)


def test_volume_ramps_to_its_target_and_never_above_0_db() -> None:
    mixer = PromptMixer(RATE)
    mixer.set_volume(-6.0, 0.1)
    out = run(mixer, round(0.2 * RATE), 256, PROGRAM_LEVEL)[:, 0] / PROGRAM_LEVEL
    db = 20 * np.log10(out)
    assert np.all(np.diff(db) <= 1e-9)
    assert db[round(0.1 * RATE)] == pytest.approx(-6.0, abs=1e-6)
    mixer.set_volume(6.0, 0.1)  # the ceiling is 0 dB: asking for more gets 0 dB
    assert mixer.volume_db == 0.0
    with pytest.raises(ValueError, match="finite"):
        mixer.set_volume(float("nan"), 0.1)


def test_back_to_back_prompts_keep_the_program_down_and_old_ones_expire() -> None:
    now = [0.0]
    mixer = PromptMixer(RATE, clock=lambda: now[0], max_wait_s=10.0)
    mixer.say(tone_clip(key="a"))
    mixer.say(tone_clip(key="b"), tone_clip(key="c"))
    now[0] = 20.0
    mixer.say(tone_clip(key="late"))
    run(mixer, 3 * RATE, 1024, PROGRAM_LEVEL)
    assert list(mixer.spoken) == ["late"]
    assert mixer.dropped == 2
    mixer.say(tone_clip(key="fault"), keep=True)
    now[0] = 100.0
    run(mixer, RATE, 1024, PROGRAM_LEVEL)
    assert list(mixer.spoken)[-1] == "fault"
    with pytest.raises(ValueError, match="rebuild the prompts for this rate"):
        mixer.say(Clip("x", np.zeros(10, np.float32), 44100))


def test_pause_fades_out_holds_the_program_and_resume_continues_where_it_was() -> None:
    renderer = ProgramRenderer(builtin_program("calm-tone"), RATE)
    mixer = PromptMixer(RATE)
    for _ in range(20):
        mixer.render(renderer, 400)
    mixer.pause()
    faded = np.concatenate([mixer.render(renderer, 100) for _ in range(4)])[:, 0]
    assert np.abs(faded[-1]) == 0.0
    held = renderer.position_frames
    silence = np.concatenate([mixer.render(renderer, 400) for _ in range(10)])
    assert renderer.position_frames == held
    assert not silence.any()
    mixer.resume()
    mixer.render(renderer, 400)
    assert renderer.position_frames == held + 400


def played(tmp_path: Path, mixer: PromptMixer | None) -> NDArray[np.float64]:
    """The left channel of a 1 s tone played by the player, with ``mixer``, into a WAV file."""
    layer = ToneLayer(frequency_hz=440.0, gain=PROGRAM_LEVEL)
    program = Program(
        name="tone", fade_in_s=0.05, fade_out_s=0.05, steps=[Step(duration_s=1.0, layers=[layer])]
    )
    path = tmp_path / "out.wav"
    result = play(ProgramRenderer(program, RATE), WavSink(path, sample_format="float"), mixer=mixer)
    assert result.outcome == "completed"
    samples, _rate = soundfile.read(path, dtype="float64", always_2d=True)
    return np.asarray(samples[:, 0])


def test_the_player_plays_through_the_mixer_it_is_given_and_only_at_its_rate(
    tmp_path: Path,
) -> None:
    def level_db(samples: NDArray[np.float64]) -> float:
        middle = samples[RATE // 4 : 3 * RATE // 4]  # away from the fades and the volume ramp
        return 20 * float(np.log10(np.sqrt(np.mean(middle**2))))

    plain = level_db(played(tmp_path, None))
    quieter = PromptMixer(RATE)
    quieter.set_volume(-12.0, ramp_s=0.05)
    assert level_db(played(tmp_path, quieter)) == pytest.approx(plain - 12.0, abs=0.1)
    other = PromptMixer(RATE * 2)
    other.set_volume(-12.0, ramp_s=0.05)
    assert level_db(played(tmp_path, other)) == pytest.approx(plain, abs=0.1)  # not applied
    assert other.rate_warned


def test_a_cut_fades_the_prompt_out_within_a_block_drops_the_queue_and_keeps_what_is_kept() -> None:
    mixer = PromptMixer(RATE)
    mixer.say(tone_clip(1.0, key="speaking"))
    mixer.say(tone_clip(key="queued"))
    before = run(mixer, RATE // 2, 200, 0.0)  # the duck ramp, then "speaking"
    mixer.cut()
    after = run(mixer, 200, 200, 0.0)  # one block of 25 ms
    assert np.abs(before[-200:]).max() > 0.05
    assert np.abs(after[round(0.011 * RATE) :, 0]).max() == 0.0  # silent 11 ms after the press
    assert np.abs(np.diff(np.concatenate([before, after])[:, 0])).max() < 0.05  # no click
    run(mixer, RATE * 2, 200, 0.0)
    assert list(mixer.cut_off) == ["speaking"] and not mixer.spoken  # "queued" dropped too

    mixer.say(tone_clip(key="queued"))
    mixer.say(tone_clip(key="kept"), keep=True)  # a fault's reason: for the next session
    mixer.cut()
    run(mixer, RATE * 2, 200, 0.0)
    assert list(mixer.spoken) == ["kept"]


def test_a_number_said_with_replace_takes_the_place_of_one_not_yet_said() -> None:
    mixer = PromptMixer(RATE)
    for key in ("n6", "n7", "n8"):
        mixer.say(tone_clip(0.2, key=key), replace=True)
    run(mixer, RATE, 200, 0.0)
    assert list(mixer.spoken) == ["n8"]
    mixer.cut(everything=True)  # kept ones too (a session that never played)
    mixer.say(tone_clip(0.2, key="kept"), keep=True)
    mixer.cut(everything=True)
    assert not mixer.speaking
