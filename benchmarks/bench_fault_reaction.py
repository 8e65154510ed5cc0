"""Fault reaction: from the simulator writing a FAULT frame to the first output sample ≥ 60 dB down.

The production path end to end: the firmware ``Controller`` in the simulator on a pty, the
``HardwareMonitor`` reading it with pyserial, ``play()`` gated by the monitor's consent writing
256-frame blocks into a sink that plays them in real time (a block is written, then takes its
duration to play, like a sound card with no extra buffering) and timestamps every sample it plays.

- Fault reaction: 200 over-temperature faults injected at random moments during playback. Start:
  the time the simulator's pty write of the FAULT frame returned. End: the play time of the first
  sample from which the output stays ≥ 60 dB below the tone's level. Target p99 ≤ one block + 5 ms.
  A second, shorter run with a 2 ms fault ramp shows how much of it is the player's ramp length.
- Watchdog: the MCU falls silent mid-session (``go_silent``). Start: the last frame it wrote.
  End: consent withdrawn (the software mute decision), and the first sample ≥ 60 dB down.
  Target p99 ≤ 110 ms.

Figures only (printed); nothing here asserts on time. Runs in well under a minute.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).parents[1] / "tests")]

from paced_sink import PacedSink  # noqa: E402

from resonera.common import serial_link as sl  # noqa: E402
from resonera.common.program import Program, Step, ToneLayer  # noqa: E402
from resonera.device.hwmonitor import HardwareMonitor, HardwareNotReady  # noqa: E402
from resonera.engine.audio.player import DEFAULT_FAULT_RAMP_S, play  # noqa: E402
from resonera.engine.audio.synth import ProgramRenderer  # noqa: E402
from resonera.hardware.sim import Simulator  # noqa: E402

RATE = 48_000
BLOCK = 256
FAULTS = 200
WATCHDOG_RUNS = 60
SILENT = 10 ** (-60 / 20)


def program() -> Program:
    return Program(
        name="bench-fault",
        fade_in_s=0.0,
        fade_out_s=0.0,
        steps=[Step(duration_s=30.0, layers=[ToneLayer(frequency_hz=440.0, gain=0.5)])],
    )


class FaultSink(PacedSink):
    """The paced sink, and when the output went silent."""

    def __init__(self) -> None:
        super().__init__(RATE)

    def first_silent_time(self, level: float) -> float | None:
        """Play time of the first sample from which the output stays ≥ 60 dB below ``level``."""
        if not self.writes:
            return None
        times = np.concatenate([s + np.arange(len(b)) / self.rate for s, b in self.writes])
        out = np.concatenate([np.abs(b).max(axis=1) for _, b in self.writes])
        loud = np.nonzero(out > level * SILENT)[0]
        if not loud.size:
            return float(times[0])
        last = int(loud[-1])
        if last + 1 < len(out):
            return float(times[last + 1])
        _start, block = self.writes[-1]
        return float(self.writes[-1][0] + len(block) / self.rate)  # silence after the last write


def arm(monitor: HardwareMonitor, sim: Simulator) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            monitor.arm(timeout_s=1.0)
            return
        except HardwareNotReady:
            if time.monotonic() > deadline:
                raise
            sim.reset()
            time.sleep(0.005)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def level() -> float:
    return float(np.max(np.abs(ProgramRenderer(program(), RATE).render(4800))))


def run_session(
    monitor: HardwareMonitor,
    inject: Callable[[], None],
    rng: random.Random,
    fault_ramp_s: float = DEFAULT_FAULT_RAMP_S,
) -> FaultSink:
    sink = FaultSink()
    started = time.perf_counter()
    timer = threading.Timer(rng.uniform(0.02, 0.045), inject)
    timer.start()
    play(
        ProgramRenderer(program(), RATE),
        sink,
        block_frames=BLOCK,
        gate=lambda: monitor.consent,
        reason=lambda: monitor.reason,
        should_stop=lambda: time.perf_counter() - started > 2.0,  # a missed fault ends anyway
        fault_ramp_s=fault_ramp_s,
    )
    timer.join()
    return sink


def bench_faults(
    sim: Simulator,
    monitor: HardwareMonitor,
    full: float,
    count: int = FAULTS,
    fault_ramp_s: float = DEFAULT_FAULT_RAMP_S,
) -> None:
    rng = random.Random(5)
    fault_times: list[float] = []
    withdrawn: list[float] = []
    monitor.add_listener(lambda ok, _r: None if ok else withdrawn.append(time.perf_counter()))
    sim.board.frame_listener = lambda t, ts: fault_times.append(ts) if t == sl.MSG_FAULT else None
    reaction: list[float] = []
    detect: list[float] = []
    for _ in range(count):
        sim.reset()
        arm(monitor, sim)
        fault_times.clear()
        withdrawn.clear()
        sink = run_session(monitor, sim.over_temperature, rng, fault_ramp_s)
        silent = sink.first_silent_time(full)
        if not fault_times or silent is None or not withdrawn:
            continue
        reaction.append((silent - fault_times[0]) * 1000)
        detect.append((withdrawn[0] - fault_times[0]) * 1000)
    sim.board.frame_listener = None
    block_ms = BLOCK / RATE * 1000
    print(
        f"fault reaction, FAULT frame written → first sample ≥ 60 dB down ({len(reaction)} faults,"
    )
    print(
        f"  {BLOCK}-frame blocks = {block_ms:.2f} ms, player fault ramp {fault_ramp_s * 1000:g} ms):"
    )
    print(f"  p50 {percentile(reaction, 50):6.2f} ms   p99 {percentile(reaction, 99):6.2f} ms   "
          f"max {max(reaction):6.2f} ms   (target p99 ≤ {block_ms + 5:.2f} ms)")  # fmt: skip
    print(f"  of which FAULT frame → consent withdrawn: p50 {percentile(detect, 50):.3f} ms   "
          f"p99 {percentile(detect, 99):.3f} ms   max {max(detect):.3f} ms")  # fmt: skip


def bench_watchdog(sim: Simulator, monitor: HardwareMonitor, full: float) -> None:
    rng = random.Random(7)
    frames: list[float] = []
    withdrawn: list[float] = []
    monitor.add_listener(lambda ok, _r: None if ok else withdrawn.append(time.perf_counter()))
    sim.board.frame_listener = lambda t, ts: frames.append(ts)
    to_mute: list[float] = []
    to_silent: list[float] = []
    for _ in range(WATCHDOG_RUNS):
        sim.reset()  # speaks again
        arm(monitor, sim)
        withdrawn.clear()
        sink = run_session(monitor, sim.go_silent, rng)
        silent = sink.first_silent_time(full)
        last_frame = max(frames)
        if silent is None or not withdrawn:
            continue
        to_mute.append((withdrawn[0] - last_frame) * 1000)
        to_silent.append((silent - last_frame) * 1000)
        frames.clear()
    sim.board.frame_listener = None
    print(f"watchdog, MCU's last frame → consent withdrawn ({len(to_mute)} runs, "
          f"telemetry timeout {monitor.silence_timeout_s * 1000:.0f} ms):")  # fmt: skip
    print(f"  p50 {percentile(to_mute, 50):6.2f} ms   p99 {percentile(to_mute, 99):6.2f} ms   "
          f"max {max(to_mute):6.2f} ms   (target p99 ≤ 110 ms)")  # fmt: skip
    print(f"  → first sample ≥ 60 dB down: p50 {percentile(to_silent, 50):6.2f} ms   "
          f"p99 {percentile(to_silent, 99):6.2f} ms   max {max(to_silent):6.2f} ms")  # fmt: skip


def main() -> None:
    logging.disable(logging.WARNING)  # thousands of expected fault events
    full = level()
    started = time.monotonic()
    with Simulator() as sim, HardwareMonitor(sim.port_path) as monitor:
        bench_faults(sim, monitor, full)
        # The same with a shorter fault ramp: what the player's ramp length costs (see README).
        bench_faults(sim, monitor, full, count=100, fault_ramp_s=0.002)
        bench_watchdog(sim, monitor, full)
    print(f"(fault reaction benchmark ran {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
