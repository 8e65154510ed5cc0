"""What the prompt mixer (device/audio/prompt_mixer.py) adds to each audio block, against the
synthesis of the same block measured in the same run. Printed (never asserted):

- per 1,024-frame block at 48 kHz: rendering a program block alone; the mixer idle (no prompt, no
  volume change: it must cost next to nothing); the mixer while a prompt plays over a ducked
  program; each as median and 99th percentile in µs and as a share of the block's duration;
- the ratio of the speaking mixer's cost to the synthesis of the block.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from resonera.common.program import builtin_program
from resonera.device.audio.prompt_mixer import Clip, PromptMixer
from resonera.engine.audio.synth import ProgramRenderer

RATE = 48_000
BLOCK = 1024
BLOCKS = 2000


def _times(step: Callable[[], object]) -> NDArray[np.float64]:
    out = np.empty(BLOCKS)
    for i in range(BLOCKS):
        start = time.perf_counter()
        step()
        out[i] = time.perf_counter() - start
    return out


def _line(name: str, seconds: NDArray[np.float64]) -> float:
    block_s = BLOCK / RATE
    median, p99 = float(np.median(seconds)), float(np.percentile(seconds, 99))
    print(
        f"{name:<34} median {median * 1e6:8.1f} µs ({median / block_s * 100:5.2f} % of a block)"
        f"   p99 {p99 * 1e6:8.1f} µs ({p99 / block_s * 100:5.2f} %)"
    )
    return median


def main() -> None:
    renderer = ProgramRenderer(builtin_program("theta-descent"), RATE)
    synth = _line("render a block (theta-descent)", _times(lambda: renderer.render(BLOCK)))
    program = renderer.render(BLOCK)
    idle = PromptMixer(RATE)
    _line("mixer, idle", _times(lambda: idle.process(program)))
    speaking = PromptMixer(RATE)
    t = np.arange(RATE * 60) / RATE
    clip = Clip("tone", (0.05 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), RATE)
    speaking.say(clip)
    mixing = _line("mixer, prompt over ducked program", _times(lambda: speaking.process(program)))
    print(f"speaking mixer / synthesis of the block: {mixing / synth:.2f}")


if __name__ == "__main__":
    main()
