"""The whole ``resonera-device render`` process on reference program A, start-up included.

Runs the console script as a person would (``resonera-device render A.toml out.wav``, 16-bit WAV,
44.1 kHz). Every render goes through the safety chain (level ceiling, look-ahead limiter, exposure
meter, as in playback; without ``--calibration`` it is held to the packaged reference headphones).
Prints, never asserts:

- the hour of program A: wall clock of the whole process, times real time (target >= 1,000x), and
  the CPU seconds it used (synthesis, chain, encoding and writing run on threads of their own); the
  fastest of three runs, with the median (a shared machine's neighbours come and go);
- the peak resident memory of each render process (its ``VmHWM``, sampled while it runs) for 10
  minutes and for 1 hour of program A: it streams, so the hour needs no more than the ten minutes;
- the safety chain alone on two minutes of program A in this process, its meter reusing the level
  ceiling's A-weighting (the default) and weighting every block itself, as times real time;
- the synthesis alone in this process (the renderer over the hour, construction included) and a
  naive block-wise numpy renderer (``bench_synth``) measured in the same run, with the ratios.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from bench_synth import HOUR, NAIVE_S, program_a, time_naive, time_whole_hour

from resonera.device.audio.chain import session_processors
from resonera.engine.audio.calibration import packaged_calibration
from resonera.engine.audio.synth import ProgramRenderer
from resonera.engine.safety.aweighting import AWeightingFilter, design_a_weighting
from resonera.engine.safety.chain import SafetyChain

BIN = Path(sys.executable).parent / "resonera-device"
#: The block ``render`` asks for by default.
RENDER_BLOCK = 65536
#: Renders of each length; the fastest is reported (with the median).
RUNS = 3

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


def _peak_rss_kib(pid: int) -> int:
    """VmHWM of a running process (0 once it has exited). Not ``wait4``'s ``ru_maxrss``: Linux
    carries the spawning process's peak across fork and exec, and this process is far larger."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def render(folder: Path, seconds: float) -> tuple[float, float, float]:
    """Wall-clock seconds of one render process, its CPU seconds and its own peak RSS in MiB."""
    program = folder / f"a-{seconds:.0f}.toml"
    program.write_text(PROGRAM_A.format(seconds=seconds))
    out = folder / f"a-{seconds:.0f}.wav"
    command = [str(BIN), "render", str(program), str(out), "--rate", "44100", "--format", "16"]
    command += ["--calibration", str(packaged_calibration())]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    peak_kib = 0
    while process.poll() is None:
        peak_kib = max(peak_kib, _peak_rss_kib(process.pid))
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if process.returncode != 0:
        raise SystemExit(f"render failed with exit code {process.returncode}")
    size = out.stat().st_size
    out.unlink()  # before the next render: a 635 MB file left behind slows the page cache down
    assert size == 44 + int(seconds * 44100) * 4, size
    return elapsed, cpu, peak_kib / 1024


def time_chain(shortcut: bool, seconds: float = 120.0) -> float:
    """Seconds of CPU the safety chain alone takes over ``seconds`` of program A (65,536-frame
    blocks, synthesised beforehand)."""
    renderer = ProgramRenderer(program_a(seconds), 44100)
    blocks = [
        renderer.render(min(RENDER_BLOCK, renderer.remaining_frames))
        for _ in range(0, renderer.total_frames, RENDER_BLOCK)
    ]
    [chain] = session_processors(None, 44100)
    assert isinstance(chain, SafetyChain)
    chain.meter_shortcut = shortcut
    start = time.process_time()
    for block in blocks:
        chain(block)
    return time.process_time() - start


def time_weighting(seconds: float = 120.0) -> tuple[float, float]:
    """CPU seconds the A-weighting filter takes over ``seconds`` of stereo noise in render-sized
    blocks: the compiled cascade (both ears at once, the float32 block as it comes) and scipy's
    ``sosfilt`` (ear after ear, on a float64 copy), with the same output (checked here)."""
    from scipy.signal import sosfilt

    rate = 44100
    rng = np.random.default_rng(1)
    blocks = [
        rng.standard_normal((RENDER_BLOCK, 2)).astype(np.float32)
        for _ in range(int(seconds * rate) // RENDER_BLOCK)
    ]
    compiled = AWeightingFilter(rate)
    start = time.process_time()
    ours = [compiled.filter_channels(block) for block in blocks]
    ours_s = time.process_time() - start
    sos = design_a_weighting(rate)
    zi = np.zeros((sos.shape[0], 2, 2))
    start = time.process_time()
    theirs = []
    for block in blocks:
        out, zi = sosfilt(sos, block.astype(np.float64), axis=0, zi=zi)
        theirs.append(out.T)
    theirs_s = time.process_time() - start
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    return ours_s, theirs_s


def main() -> None:
    print("render: `resonera-device render` of program A, whole process, 16-bit WAV, 44.1 kHz")
    print(f"  (this machine: {len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f})")
    figures: dict[float, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (600.0, HOUR):
            # the best of RUNS (fastest wall clock; the median too): the machine is shared
            runs = sorted(render(Path(tmp), seconds) for _ in range(RUNS))
            elapsed, cpu, _ = runs[0]
            peak = max(run[2] for run in runs)
            figures[seconds] = elapsed, cpu, peak
            median = runs[len(runs) // 2][0]
            print(
                f"  {seconds / 60:4.0f} min through the safety chain: {elapsed:6.2f} s = "
                f"{seconds / elapsed:6.0f}x real time{' (target >= 1000x)' if seconds == HOUR else ''}"
                f" (best of {RUNS}; median {seconds / median:.0f}x); {cpu:5.2f} s of CPU; "
                f"peak RSS {peak:6.1f} MiB"
            )
    print(
        f"  peak RSS, 1 h / 10 min: {figures[HOUR][2] / figures[600.0][2]:.2f} (flat: it streams)"
    )
    for shortcut in (True, False):
        cpu = time_chain(shortcut)
        how = "reusing the ceiling's A-weighting" if shortcut else "weighting every block itself"
        print(f"  the safety chain alone, its meter {how}: {120.0 / cpu:6.0f}x real time (CPU)")
    ours, scipys = time_weighting()
    print(
        f"  A-weighting alone, 2 min of stereo: the compiled cascade {120.0 / ours:6.0f}x real time, "
        f"scipy's sosfilt {120.0 / scipys:6.0f}x (CPU; the same output, bit for bit): "
        f"{scipys / ours:.1f}x as fast"
    )
    synth = time_whole_hour(RENDER_BLOCK)
    naive = time_naive()
    naive_speed = NAIVE_S / naive
    chained = HOUR / figures[HOUR][0]
    print(
        f"  synthesis alone (no chain), whole hour incl. construction: {HOUR / synth:6.0f}x real time"
    )
    print(f"  naive renderer (np.sin + lfilter pink), synthesis only: {naive_speed:6.0f}x")
    print(
        f"  against the naive synthesis: the whole render process through the chain "
        f"{chained / naive_speed:.1f}x; synthesis alone {HOUR / synth / naive_speed:.1f}x"
    )


if __name__ == "__main__":
    main()
