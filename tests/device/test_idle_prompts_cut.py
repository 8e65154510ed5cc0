"""A press's cut heard at once between sessions (``idle_prompts.CutAhead``): what the safety
chain's look-ahead still holds of a cut prompt is faded out at the output, and the output comes
back for what was mixed after the cut; it only ever lowers the level."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from resonera.device.audio.prompt_mixer import Clip, PromptMixer
from resonera.device.idle_prompts import CutAhead

RATE = 48000
BLOCK = 1024
LATENCY = 5280  # the chain's look-ahead at 48 kHz: 110 ms


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
