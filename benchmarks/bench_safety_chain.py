"""The safety chain's cost per block (DC blocker, onset, true-peak limiter, A/C/Z level ceiling,
exposure meter, dose ledger), as a share of the block's duration, typical and while holding a loud
program down; against same-run baselines: the previous chain (A-weighted ceiling and sample-peak
limiter only, as before issue 22: ``PreviousChain``, kept here for this comparison alone) and a plain
gain multiply of the same blocks. Also the peak memory of playing through the chain, against numpy
alone and against the same with scipy.signal imported.

The previous chain is the yardstick of the target (its cost was within it), so it is timed as it
was: its gain smoother, delay lines and window sums in numpy, the reference versions kept in
``tests/engine/test_chain_compiled_parts.py`` (``numpy parts``). The same chain on today's compiled
parts (``compiled parts``) shows what the new stages cost beyond it.

Time is the thread's CPU time (what the chain costs the device, whatever else the machine runs) and,
for comparison, wall time, which includes waiting for the ledger's disk writes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# the numpy versions of the compiled parts, kept with the tests that hold them to each other
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))
from test_chain_compiled_parts import (  # type: ignore[import-not-found]
    NumpyLevelCeiling,
    NumpyLookAheadLimiter,
    NumpyMelMeter,
)

from resonera.common.profile import HearingProfile
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.engine.audio.player import GainRamp
from resonera.engine.safety.aweighting import AWeightingFilter, memory_frames
from resonera.engine.safety.chain import ChainLimits, SafetyChain
from resonera.engine.safety.limiter import LevelCeiling, LookAheadLimiter
from resonera.engine.safety.meter import MelMeter

RATE = 48_000
SECONDS = 30
REPEATS = 3

#: With 100 dB SPL at unit RMS: 0.02 RMS is about 64 dBA (a typical session, within every limit);
#: 0.3 RMS is about 88 dBA, above the 85 dBA default maximum, so the level ceiling works all the time.
CASES = {"typical (64 dBA)": 0.02, "held (88 dBA → 85)": 0.3}


def blocks(frames: int, rms: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    n = SECONDS * RATE // frames
    return [(rms * rng.standard_normal((frames, 2))).astype(np.float32) for _ in range(n)]


class PreviousChain:
    """The chain before issue 22, for this comparison only: session gain, A-weighted level ceiling
    (50 ms windows), sample-peak limiter, the meter on the ceiling's weighting while both pass, each
    second into the ledger."""

    def __init__(
        self, ledger: DoseLedger, wall_clock: Callable[[], float], *, numpy_parts: bool
    ) -> None:
        """``numpy_parts``: as it was timed before the chain's bookkeeping was compiled."""
        limits = ChainLimits(spl_at_unit_rms=100.0, peak_ceiling=0.9)
        self.gain = GainRamp(1.0)
        ceiling = NumpyLevelCeiling if numpy_parts else LevelCeiling
        self.level = ceiling(
            RATE,
            [limits.mean_square_for(HearingProfile().max_level_dba)],
            (AWeightingFilter(RATE).running_energy_into,),
            window_s=0.050,
        )
        limiter = NumpyLookAheadLimiter if numpy_parts else LookAheadLimiter
        self.limiter = limiter(RATE, limits.peak_ceiling)
        meter = NumpyMelMeter if numpy_parts else MelMeter
        self.meter = meter(RATE, spl_at_unit_rms=limits.spl_at_unit_rms)
        self.ledger, self.wall_clock = ledger, wall_clock
        self._memory, self._position, self._exact_until = memory_frames(RATE), 0, 0

    def __call__(self, block: np.ndarray) -> np.ndarray:
        out = self.limiter.process(self.level.process(self.gain.apply(block)))
        start = self._position
        self._position += len(out)
        if not (self.level.passed and self.limiter.passed):
            self._exact_until = self._position + self._memory
        # the delay of the reused weighting is left out: it costs a copy, not a filter
        mels = (
            self.meter.update(out)
            if start < self._exact_until
            else self.meter.update_energy(self.level.energy)
        )
        for mel in mels:
            self.ledger.add_second(self.wall_clock(), mel)
        return out


def time_chain(
    data: list[np.ndarray], folder: Path, previous: bool | None = None
) -> tuple[float, float]:
    """CPU and wall seconds per block, of the chain (or of ``PreviousChain``, on the numpy parts
    with ``previous`` true, on today's with false)."""
    frames = data[0].shape[0]
    now = [1_800_000_000.0]
    ledger = DoseLedger(folder / f"dose-{frames}-{time.monotonic_ns()}.db")
    chain: Callable[[np.ndarray], np.ndarray] = (
        PreviousChain(ledger, lambda: now[0], numpy_parts=previous)
        if previous is not None
        else SafetyChain(
            sample_rate=RATE,
            limits=ChainLimits(spl_at_unit_rms=100.0, peak_ceiling=0.9),
            profile=HearingProfile(),
            ledger=ledger,
            wall_clock=lambda: now[0],
        )
    )
    cpu, wall = time.thread_time(), time.perf_counter()
    for i, block in enumerate(data):
        now[0] = 1_800_000_000.0 + i * frames / RATE
        chain(block)
    return (time.thread_time() - cpu) / len(data), (time.perf_counter() - wall) / len(data)


def time_baseline(data: list[np.ndarray]) -> float:
    """CPU seconds per block of ``block * gain`` in float32."""
    gain = np.float32(0.5)
    cpu = time.thread_time()
    for block in data:
        _ = block * gain
    return (time.thread_time() - cpu) / len(data)


#: The playback path's imports, then one second through the safety chain (A-weighting loaded).
PLAYING = """
import numpy as np
import resonera.engine.audio.player
from resonera.common.profile import HearingProfile
from resonera.engine.safety.chain import ChainLimits, SafetyChain

chain = SafetyChain(
    sample_rate=48_000,
    limits=ChainLimits(spl_at_unit_rms=100.0, peak_ceiling=0.9),
    profile=HearingProfile(),
    ledger=None,
    wall_clock=lambda: 1_800_000_000.0,
)
for _ in range(47):
    chain(np.full((1024, 2), 0.95, np.float32))
"""


def peak_rss_mb(code: str) -> float:
    """Peak resident memory of a fresh interpreter that runs ``code``."""
    peak = "open('/proc/self/status').read().split('VmHWM:')[1].split()[0]"
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nprint({peak})"], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) / 1024


def main() -> None:
    print(
        f"safety chain: {SECONDS} s of stereo noise at {RATE} Hz (dose ledger write every second)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for case, rms in CASES.items():
            print(f"  {case}:")
            for frames in (256, 1024):
                data = blocks(frames, rms)
                # interleaved, so that a change in the machine's load falls on all of them alike
                runs, befores, todays = [], [], []
                for _ in range(REPEATS):
                    runs.append(time_chain(data, Path(tmp)))
                    befores.append(time_chain(data, Path(tmp), previous=True)[0])
                    todays.append(time_chain(data, Path(tmp), previous=False)[0])
                cpu, wall = min(r[0] for r in runs), min(r[1] for r in runs)
                before, today = min(befores), min(todays)
                baseline = min(time_baseline(data) for _ in range(REPEATS))
                duration = frames / RATE
                print(
                    f"    {frames:5d} frames: {cpu * 1e6:7.1f} µs CPU per block = "
                    f"{cpu / duration * 100:5.2f} % of the block's duration "
                    f"(wall {wall / duration * 100:5.2f} %); previous chain, numpy parts "
                    f"{before / duration * 100:5.2f} %, {before * 1e6:6.1f} µs: "
                    f"{cpu / before:4.2f}x it; compiled parts {today * 1e6:6.1f} µs: "
                    f"{cpu / today:4.2f}x it; {cpu / baseline:5.1f}x a plain gain multiply"
                )
    print(
        "  target: ≤ 0.5 % of the block's duration typical, ≤ 1 % held, at 1024 frames "
        "(the previous chain, numpy parts, measured 0.3 % / 0.7 % on a quiet machine: at most "
        "about 1.7x / 1.4x it in the same run)"
    )
    numpy_only = peak_rss_mb("import numpy")
    playing = peak_rss_mb(PLAYING)
    with_signal = peak_rss_mb(f"import scipy.signal\n{PLAYING}")
    print(
        f"memory: the playback path's imports plus one second through the chain peak at "
        f"{playing:.1f} MB RSS (numpy alone {numpy_only:.1f} MB; with scipy.signal imported "
        f"{with_signal:.1f} MB)"
    )


if __name__ == "__main__":
    main()
