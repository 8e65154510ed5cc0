"""Synthesis speed on reference program A, against a naive renderer measured in the same run.

Reference program A (issue 3, "Speed"): pink noise plus a 200 Hz carrier with a 10 Hz binaural beat,
1 hour, 44.1 kHz stereo. Printed (never asserted):

- the renderer alone, times real time: the whole hour including construction (noise tables), and
  the steady state (best of 3 over 5 minutes) at 16,384- (``render``), 8,192- and 4,096-frame
  blocks; target ≥ 2,500×;
- a naive block-wise numpy renderer (per-sample ``np.sin`` of the absolute phase per ear, Gaussian
  noise through a 3-pole pink filter, ``scipy.signal.lfilter`` with carried state) over 60 s, and
  the ratio between the two;
- per-block synthesis cost at 256 and 1,024 frames at 48 kHz, as a share of the block's duration
  (median and 99th percentile over many blocks); targets ≤ 2 % and ≤ 0.5 %.
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy.signal import lfilter, lfilter_zi

from resonera.common.program import BinauralLayer, NoiseLayer, Program, Step
from resonera.engine.audio.synth import ProgramRenderer

RATE = 44_100
HOUR = 3600.0
STEADY_S = 300.0
NAIVE_S = 60.0


def program_a(seconds: float = HOUR) -> Program:
    return Program(
        name="reference-a",
        description="Pink noise plus a 200 Hz carrier with a 10 Hz binaural beat (issue 3).",
        fade_in_s=5.0,
        fade_out_s=5.0,
        steps=[
            Step(
                duration_s=seconds,
                layers=[
                    NoiseLayer(colour="pink", gain=0.5),
                    BinauralLayer(carrier_hz=200.0, beat_hz=10.0, gain=0.4),
                ],
            )
        ],
    )


def time_whole_hour(block: int) -> float:
    start = time.perf_counter()
    renderer = ProgramRenderer(program_a(), RATE)
    while not renderer.done:
        renderer.render(block)
    return time.perf_counter() - start


def time_steady(block: int, seconds: float = STEADY_S, rate: int = RATE) -> float:
    renderer = ProgramRenderer(program_a(), rate)
    renderer.render(block)
    blocks = int(seconds * rate / block)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(blocks):
            renderer.render(block)
        best = min(best, time.perf_counter() - start)
    return best * rate * seconds / (blocks * block)  # seconds per `seconds` of audio


# Paul Kellet's economy pink filter, as a 3-pole IIR (b, a) run by lfilter.
PINK_B = np.array([0.049922035, -0.095993537, 0.050612699, -0.004408786])
PINK_A = np.array([1.0, -2.494956002, 2.017265875, -0.522189400])


def time_naive(seconds: float = NAIVE_S, block: int = 4096) -> float:
    """The naive renderer: what a first numpy attempt does, block by block."""
    rng = np.random.default_rng(0)
    zi = [lfilter_zi(PINK_B, PINK_A) * 0.0 for _ in range(2)]
    frames = int(seconds * RATE)
    start = time.perf_counter()
    for offset in range(0, frames, block):
        n = min(block, frames - offset)
        t = np.arange(offset, offset + n) / RATE
        out = np.empty((n, 2), np.float32)
        for channel, hz in enumerate((195.0, 205.0)):
            pink, zi[channel] = lfilter(PINK_B, PINK_A, rng.standard_normal(n), zi=zi[channel])
            out[:, channel] = 0.4 * np.sin(2 * np.pi * hz * t) + 0.1 * pink
    return time.perf_counter() - start


def per_block_cost(block: int, rate: int = 48_000, count: int = 4000) -> tuple[float, float]:
    """Median and 99th-percentile synthesis time of one block, as % of the block's duration."""
    renderer = ProgramRenderer(program_a(), rate)
    for _ in range(50):
        renderer.render(block)  # warm up: tables, caches
    times = np.empty(count)
    for i in range(count):
        start = time.perf_counter()
        renderer.render(block)
        times[i] = time.perf_counter() - start
    duration = block / rate
    return (
        float(np.median(times) / duration * 100),
        float(np.percentile(times, 99) / duration * 100),
    )


def main() -> None:
    print("synth: reference program A (pink noise + 200 Hz carrier, 10 Hz binaural), 44.1 kHz")
    for block in (16384, 8192):  # 16,384: what ``render`` asks for
        whole = time_whole_hour(block)
        print(
            f"  whole hour incl. construction, {block}-frame blocks: {whole:6.2f} s = "
            f"{HOUR / whole:6.0f}x"
        )
    steady = {block: time_steady(block) for block in (16384, 8192, 4096)}
    for block, seconds in steady.items():
        print(
            f"  steady state, {block}-frame blocks: {STEADY_S / seconds:6.0f}x real time "
            "(target >= 2500x)"
        )
    naive = time_naive()
    print(f"  naive renderer (np.sin + lfilter pink), 4096-frame blocks: {NAIVE_S / naive:6.0f}x")
    print(
        f"  renderer / naive speed (4096 frames): {naive / NAIVE_S / (steady[4096] / STEADY_S):.1f}x"
    )
    for block, target in ((256, 2.0), (1024, 0.5)):
        median, p99 = per_block_cost(block)
        print(
            f"  one {block}-frame block at 48 kHz: median {median:.3f} %, p99 {p99:.3f} % of its "
            f"duration (target <= {target} %)"
        )


if __name__ == "__main__":
    main()
