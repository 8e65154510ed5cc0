"""The whole ``resonera-device render`` process on reference program A, start-up included.

Runs the console script as a person would (``resonera-device render A.toml out.wav``, 16-bit WAV,
44.1 kHz) for 10 minutes and for 1 hour of program A, and prints wall-clock time, times real time
(target ≥ 1,000× for the hour, through the same processing chain as playback) and the peak
resident memory of each render process: it streams, so the hour must not need more than the ten
minutes (flat memory whatever the length). Printed, never asserted.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "resonera-device"

PROGRAM_A = """
name = "reference-a"
description = "Pink noise plus a 200 Hz carrier with a 10 Hz binaural beat (issue 3)."
fade_in_s = 5.0
fade_out_s = 5.0
[[steps]]
duration_s = {seconds}
[[steps.layers]]
type = "noise"
colour = "pink"
gain = 0.5
[[steps.layers]]
type = "binaural"
carrier_hz = 200
beat_hz = 10
gain = 0.4
"""


def render(folder: Path, seconds: float) -> tuple[float, int]:
    """Wall-clock seconds of one render process, and the peak RSS (KiB) of render children so far."""
    program = folder / f"a-{seconds:.0f}.toml"
    program.write_text(PROGRAM_A.format(seconds=seconds))
    out = folder / f"a-{seconds:.0f}.wav"
    start = time.perf_counter()
    subprocess.run(
        [str(BIN), "render", str(program), str(out), "--rate", "44100", "--format", "16"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - start
    size = out.stat().st_size
    out.unlink()
    assert size == 44 + int(seconds * 44100) * 4, size
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def main() -> None:
    print("render: `resonera-device render` of program A, whole process, 16-bit WAV, 44.1 kHz")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Smallest first: RUSAGE_CHILDREN keeps the largest peak seen so far.
        for seconds in (600.0, 3600.0):
            elapsed, peak_kib = render(folder, seconds)
            print(
                f"  {seconds / 60:4.0f} min: {elapsed:6.2f} s = {seconds / elapsed:6.0f}x real time"
                f"{' (target >= 1000x)' if seconds == 3600.0 else ''}; "
                f"peak RSS of render processes so far {peak_kib / 1024:6.1f} MiB"
            )


if __name__ == "__main__":
    main()
