"""Synthesis speed: how many times faster than real time the renderer produces a program.

Baseline in the same run: the bare numpy cost of the same number of stereo sine samples (one
``np.sin`` per channel over precomputed phases), so the ratio shows the renderer's overhead on this
machine whatever its load.
"""

from __future__ import annotations

import time

import numpy as np

from resonera.common.program import BinauralLayer, Program, Step, ToneLayer
from resonera.device.audio.synth import ProgramRenderer

SAMPLE_RATE = 48_000
BLOCK = 1024
SECONDS = 300.0


def program() -> Program:
    return Program(
        name="bench",
        steps=[
            Step(
                duration_s=SECONDS / 2,
                layers=[
                    BinauralLayer(carrier_hz=200, beat_hz=10, gain=0.4),
                    ToneLayer(frequency_hz=432, gain=0.2),
                ],
            ),
            Step(
                duration_s=SECONDS / 2, layers=[BinauralLayer(carrier_hz=180, beat_hz=6, gain=0.5)]
            ),
        ],
    )


def time_renderer() -> float:
    renderer = ProgramRenderer(program(), SAMPLE_RATE)
    start = time.perf_counter()
    while not renderer.done:
        renderer.render(BLOCK)
    return time.perf_counter() - start


def time_baseline() -> float:
    frames = int(SECONDS * SAMPLE_RATE)
    start = time.perf_counter()
    for offset in range(0, frames, BLOCK):
        n = min(BLOCK, frames - offset)
        phase = (np.arange(offset, offset + n) * (2 * np.pi * 200 / SAMPLE_RATE)).astype(np.float64)
        out = np.empty((n, 2), dtype=np.float32)
        out[:, 0] = np.sin(phase)
        out[:, 1] = np.sin(phase * 1.05)
    return time.perf_counter() - start


def main() -> None:
    renderer_s = min(time_renderer() for _ in range(3))
    baseline_s = min(time_baseline() for _ in range(3))
    print(f"synth: {SECONDS:.0f} s of a 3-layer program at {SAMPLE_RATE} Hz, {BLOCK}-frame blocks")
    print(f"  renderer      {renderer_s * 1000:8.1f} ms  = {SECONDS / renderer_s:7.0f}x real time")
    print(f"  numpy baseline{baseline_s * 1000:8.1f} ms  = {SECONDS / baseline_s:7.0f}x real time")
    print(f"  renderer / baseline cost ratio: {renderer_s / baseline_s:.2f}")


if __name__ == "__main__":
    main()
