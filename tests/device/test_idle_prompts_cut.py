"""A press's cut heard at once (``device/audio/cut_ahead.py``): between sessions what the safety
chain's look-ahead still holds of a cut prompt is faded out at the output, and the output comes
back for what was mixed after the cut; in a session the output drops to the program's duck at once
and the program plays on; it only ever lowers the level."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from resonera.common.profile import HearingProfile
from resonera.device.audio.cut_ahead import CutAhead
from resonera.device.audio.prompt_mixer import Clip, PromptMixer
from resonera.engine.safety.chain import ChainLimits, SafetyChain

RATE = 48000
BLOCK = 1024
#: The chain's look-ahead at 48 kHz (its ``latency_frames``), about 60 ms.
LATENCY = SafetyChain(
    sample_rate=RATE,
    limits=ChainLimits(spl_at_unit_rms=100.0, peak_ceiling=1.0),
    profile=HearingProfile(),
    ledger=None,
    wall_clock=lambda: 0.0,
).latency_frames


class Recording:
    kind = "null"

    def __init__(self) -> None:
        self.blocks: list[NDArray[np.float32]] = []

    def open(self, sample_rate: int, channels: int) -> None:
        pass

    def write(self, block: NDArray[np.float32]) -> None:
        self.blocks.append(block)

    def close(self) -> None:
        pass

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _through_a_delay(
    mixer: PromptMixer, sink: CutAhead, program: NDArray[np.float32], cut_at_block: int
) -> None:
    """Blocks of ``program`` through ``mixer``, then the chain as a plain delay line, to ``sink``;
    a press cuts the prompt before block ``cut_at_block``."""
    delay = np.zeros((LATENCY, 2), np.float32)
    for block in range(len(program) // BLOCK):
        if block == cut_at_block:
            mixer.cut()
        part = program[block * BLOCK : (block + 1) * BLOCK]
        mixed = np.concatenate([delay, mixer.process(part.copy())])
        delay, out = mixed[BLOCK:], mixed[:BLOCK]
        sink.write(out)


def test_in_a_session_the_cut_drops_the_prompt_at_once_and_the_program_plays_on() -> None:
    mixer, recording = PromptMixer(RATE), Recording()
    t = np.arange(3 * RATE) / RATE
    voice = (0.1 * np.sin(2 * np.pi * 440 * t[: 2 * RATE])).astype(np.float32)
    program = np.repeat((0.05 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[:, None], 2, 1)
    mixer.say(Clip("time_left", voice, RATE))
    duck = 10 ** (mixer.duck_db / 20)
    sink = CutAhead(recording, mixer, LATENCY, floor_gain=duck)  # type: ignore[arg-type]
    sink.open(RATE, 2)
    _through_a_delay(mixer, sink, program, cut_at_block=60)
    out = np.concatenate(recording.blocks)[:, 0]
    before = np.abs(out[59 * BLOCK : 60 * BLOCK]).max()  # the prompt over the ducked program
    held = np.abs(out[60 * BLOCK + 240 : 60 * BLOCK + LATENCY]).max()  # what the chain still held
    assert before > 0.09
    assert held <= before * duck + 1e-6  # down by the duck's depth 5 ms into the next block
    assert held > 0.0  # the program is not gapped
    assert np.abs(out[-BLOCK:]).max() > 0.045  # later: the program alone, back to its level
    assert np.abs(np.diff(out)).max() < 0.05  # faded: no click


def test_a_cut_is_heard_within_a_block_not_after_the_chains_look_ahead() -> None:
    mixer, recording = PromptMixer(RATE), Recording()
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(2 * RATE) / RATE)).astype(np.float32)
    mixer.say(Clip("max_volume", tone, RATE))
    sink = CutAhead(recording, mixer, LATENCY)  # type: ignore[arg-type]  # an AudioSink
    sink.open(RATE, 2)
    delay = np.zeros((LATENCY, 2), np.float32)  # the chain, as a plain delay line
    for block in range(60):
        if block == 30:
            mixer.cut()  # a press, 0.64 s in
        mixed = np.concatenate([delay, mixer.process(np.zeros((BLOCK, 2), np.float32))])
        delay, out = mixed[BLOCK:], mixed[:BLOCK]
        sink.write(out)
    out = np.concatenate(recording.blocks)[:, 0]
    assert np.abs(out[29 * BLOCK : 30 * BLOCK]).max() > 0.05  # speaking before the press
    assert np.abs(out[30 * BLOCK + 240 :]).max() == 0.0  # silent 5 ms into the next block
    assert np.abs(np.diff(out)).max() < 0.02  # faded: no click
    assert list(mixer.cut_off) == ["max_volume"]
