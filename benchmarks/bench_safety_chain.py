"""The safety chain's cost per block (A-weighted level ceiling, peak limiter, exposure meter),
as a share of the block's duration, against a same-run baseline: one A-weighting filter pass alone."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from resonera.common.profile import HearingProfile
from resonera.device.safety.aweighting import AWeightingFilter
from resonera.device.safety.chain import ChainLimits, SafetyChain
from resonera.device.safety.dose_ledger import DoseLedger

RATE = 48_000
SECONDS = 60


def blocks(frames: int, rms: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    n = SECONDS * RATE // frames
    return [(rms * rng.standard_normal((frames, 2))).astype(np.float32) for _ in range(n)]


#: With 100 dB SPL at unit RMS: 0.02 RMS is about 64 dBA (a typical session, within every limit);
#: 0.3 RMS is about 88 dBA, above the 85 dBA default maximum, so the level ceiling works all the time.
CASES = {"typical (64 dBA)": 0.02, "held (88 dBA → 85)": 0.3}


def time_chain(frames: int, folder: Path, rms: float) -> float:
    data = blocks(frames, rms)
    now = [1_800_000_000.0]
    chain = SafetyChain(
        sample_rate=RATE,
        limits=ChainLimits(spl_at_unit_rms=100.0, peak_ceiling=0.9),
        profile=HearingProfile(),
        ledger=DoseLedger(folder / f"dose-{frames}.db"),
        wall_clock=lambda: now[0],
    )
    start = time.perf_counter()
    for i, block in enumerate(data):
        now[0] = 1_800_000_000.0 + i * frames / RATE
        chain(block)
    return (time.perf_counter() - start) / len(data)


def time_filter(frames: int) -> float:
    data = blocks(frames, 0.02)
    f = AWeightingFilter(RATE)
    start = time.perf_counter()
    for block in data:
        f(block)
    return (time.perf_counter() - start) / len(data)


def main() -> None:
    print(
        f"safety chain: {SECONDS} s of stereo noise at {RATE} Hz (dose ledger write every second)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for case, rms in CASES.items():
            print(f"  {case}:")
            for frames in (256, 1024, 4096):
                per_block = min(time_chain(frames, Path(tmp), rms) for _ in range(3))
                baseline = min(time_filter(frames) for _ in range(3))
                share = per_block / (frames / RATE) * 100
                print(
                    f"    {frames:5d} frames: {per_block * 1e6:8.1f} µs per block = {share:5.2f} % of "
                    f"the block's duration; {per_block / baseline:4.1f}x one A-filter pass"
                )
        print("  target: ≤ 1 % of the block's duration at 1024 frames")


if __name__ == "__main__":
    main()
