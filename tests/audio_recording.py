"""Recording what the device plays: ``parec`` from the PulseAudio null sink's monitor (the
``pulse_null_sink`` fixture) into a raw file, read back as it grows."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from support import real_clock_env, require_tool

RATE = 48000


@contextmanager
def monitor_recording(sink: str, path: Path, rate: int = RATE) -> Iterator[Path]:
    """``parec`` from ``sink``'s monitor into ``path`` (raw stereo float32) while in the block."""
    with path.open("wb") as out:
        process = subprocess.Popen(
            [require_tool("parec"), "-d", f"{sink}.monitor", "--raw", "--format=float32le",
             "--channels=2", f"--rate={rate}", "--latency-msec=20"],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=real_clock_env(),  # a recorder needs no date, and faketime stalls its timers
        )  # fmt: skip
        try:
            yield path
        finally:
            process.terminate()
            process.wait(timeout=10)


def recorded(path: Path) -> NDArray[np.float32]:
    """What ``monitor_recording`` wrote to ``path`` so far: frames × 2."""
    data = path.read_bytes()
    return np.frombuffer(data[: len(data) - len(data) % 8], "<f4").reshape(-1, 2)
