"""Button reaction (issue 21): from the simulated MCU writing a BUTTON frame to the output changing,
while a prompt speaks, between sessions and in a session.

The production path end to end: the firmware ``Controller`` in the simulator on a pty (its
debounce, a short press sent on release), the ``HardwareMonitor`` reading it with pyserial and
handing the press to the ``Panel`` (``device/panel.py``), whose thread cuts what is being said
(``PromptMixer.cut``); the prompt plays through ``IdlePrompts`` (the MCU claimed, the engine's
pipeline and safety chain, the device's 1,024-frame blocks) into a sink that plays each block in
real time from when it is written (a sound card with no extra buffering) and timestamps every
sample. Each round: volume up at the ceiling ("maximum volume", here a steady tone so a change is
exact), a random wait into the prompt, then stop. Start: the time the simulator's pty write of the
stop's BUTTON frame returned. End: the play time of the first sample from which the prompt's level
(its peak over 2.5 ms) is below half of what it was. Target p99 ≤ 100 ms.

In a session (``Session.run`` on the same monitor, mixer and sink; a silent program so the
prompt's level is exact): a prompt is said, a random wait into it, then volume down; the output
drops by the mixer's duck at once (``device/audio/cut_ahead.py``) while the program plays on.

Figures only (printed); nothing here asserts on time. Runs in about a minute.
"""

from __future__ import annotations

import logging
import random
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).parents[1] / "tests")]

from paced_sink import PacedSink  # noqa: E402

from resonera.common import serial_link as sl  # noqa: E402
from resonera.common.profile import CheckInQuestion, HearingProfile  # noqa: E402
from resonera.common.program import Program, Step  # noqa: E402
from resonera.device.audio.prompt_mixer import Clip, PromptMixer  # noqa: E402
from resonera.device.controls import Answered, Controls  # noqa: E402
from resonera.device.hwmonitor import HardwareMonitor  # noqa: E402
from resonera.device.idle_prompts import IdlePrompts  # noqa: E402
from resonera.device.panel import Panel  # noqa: E402
from resonera.device.refusals import Refusal  # noqa: E402
from resonera.device.safety.dose_ledger import DoseLedger  # noqa: E402
from resonera.device.safety_events import SafetyEventRecorder  # noqa: E402
from resonera.device.session import Session, SessionParts  # noqa: E402
from resonera.device.settings import DeviceSettings  # noqa: E402
from resonera.device.trusted_time import DoseClock  # noqa: E402
from resonera.engine.audio.calibration import packaged_calibration  # noqa: E402
from resonera.hardware.sim import Simulator  # noqa: E402

RATE = 48_000
PRESSES = 60
TONE_HZ = 440.0
PROMPT_S = 1.2
WINDOW = 120  # 2.5 ms: more than one period of the tone


class PromptSink(PacedSink):
    """The paced sink, and when a prompt was heard cut."""

    def __init__(self) -> None:
        super().__init__(RATE)

    def reaction(self, since: float) -> float | None:
        """Play time of the first sample after ``since`` from which the level is under half of
        the level just before ``since`` (None: no prompt was sounding then, or it never fell)."""
        writes = [(s, b) for s, b in self.writes if s + len(b) / self.rate >= since - 0.05]
        if not writes:
            return None
        times = np.concatenate([s + np.arange(len(b)) / self.rate for s, b in writes])
        out = np.concatenate([np.abs(b[:, 0]) for _, b in writes])
        count = len(out) // WINDOW
        peaks = out[: count * WINDOW].reshape(count, WINDOW).max(axis=1)
        starts = times[: count * WINDOW : WINDOW]
        before = peaks[(starts < since) & (starts >= since - 0.02)]
        if not len(before) or before.min() < 1e-3:
            return None  # the press came before the prompt was heard (the duck ramp)
        steady = float(before.min())
        after = np.flatnonzero((starts >= since - WINDOW / self.rate) & (peaks < steady / 2))
        return float(starts[after[0]]) if len(after) else None


class ToneLibrary:
    """Every prompt a steady tone of ``PROMPT_S``: its cut is unmistakable in the output."""

    def clips(self, *keys: str) -> list[Clip]:
        t = np.arange(int(PROMPT_S * RATE)) / RATE
        tone = (0.05 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
        return [Clip(key, tone, RATE) for key in keys]

    def time_left(self, minutes: int) -> list[Clip]:
        return self.clips("time_left")

    def has(self, key: str) -> bool:
        return True

    def question_key(self, question: CheckInQuestion) -> str:
        return question.id

    def program_key(self, name: str) -> str:
        return name


class IdleHost:
    """A device with nothing playing (unless ``playing`` is set), nothing refused, no check-ins."""

    playing: str | None = None

    def play_from_panel(self, program: str) -> None:
        raise AssertionError("no session is started in this benchmark")

    def stop_playing(self) -> None:
        pass

    def playing_program(self) -> str | None:
        return self.playing

    def assigned_programs(self) -> tuple[str, ...]:
        return ("calm",)

    def program_length_s(self, program: str) -> float | None:
        return None

    def dose_fraction(self) -> float:
        return 0.0

    def syncing(self) -> bool:
        return False

    def profile_in_force(self) -> HearingProfile:
        return HearingProfile()

    def checkin_answered(self, answer: Answered, at: datetime) -> None:
        pass

    def why_cannot_play(self, spec: str | None = None) -> Refusal | None:
        return None

    def ended_why(self) -> tuple[Refusal | None, bool] | None:
        return None

    def sessions_waiting(self) -> int:
        return 0


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def bench(sim: Simulator, panel: Panel, sink: PromptSink) -> list[float]:
    rng = random.Random(21)
    buttons: list[float] = []
    sim.board.frame_listener = lambda t, ts: buttons.append(ts) if t == sl.MSG_BUTTON else None
    reactions: list[float] = []
    for _ in range(PRESSES):
        count = len(buttons)
        sim.press(sl.BUTTON_VOLUME_UP)  # at the ceiling: "maximum volume" between sessions
        deadline = time.monotonic() + 10
        while not panel.mixer.speaking and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.35 + rng.uniform(0.0, 0.5))  # arming, the duck ramp, into the prompt
        sim.press(sl.BUTTON_STOP)
        while len(buttons) < count + 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.25)  # the reaction played out
        if len(buttons) >= count + 2 and (end := sink.reaction(buttons[count + 1])) is not None:
            reactions.append((end - buttons[count + 1]) * 1000)
    sim.board.frame_listener = None
    return reactions


def bench_in_session(
    sim: Simulator, panel: Panel, sink: PromptSink, parts: SessionParts, host: IdleHost
) -> list[float]:
    """Presses during prompts in a session: volume down cuts the prompt and turns the program down."""
    rng = random.Random(24)
    buttons: list[float] = []
    sim.board.frame_listener = lambda t, ts: buttons.append(ts) if t == sl.MSG_BUTTON else None
    silence = Program(name="calm", fade_in_s=0.0, fade_out_s=0.0, steps=[Step(duration_s=600)])
    session = Session(parts)
    player = threading.Thread(target=session.run, args=(silence, sink), daemon=True)
    host.playing = "calm"
    player.start()
    time.sleep(1.0)  # armed and playing
    reactions: list[float] = []
    library = ToneLibrary()
    for _ in range(PRESSES):
        count = len(buttons)
        panel.mixer.say(*library.clips("time_left"))
        time.sleep(0.35 + rng.uniform(0.0, 0.5))  # the duck ramp, into the prompt
        sim.press(sl.BUTTON_VOLUME_DOWN)
        deadline = time.monotonic() + 10
        while len(buttons) < count + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.4)  # the reaction played out, the program un-ducked
        if len(buttons) >= count + 1 and (end := sink.reaction(buttons[count])) is not None:
            reactions.append((end - buttons[count]) * 1000)
    session.stop()
    player.join(timeout=10)
    host.playing = None
    sim.board.frame_listener = None
    return reactions


def report(what: str, reactions: list[float], block_frames: int) -> None:
    block_ms = block_frames / RATE * 1000
    print(f"button reaction {what}, BUTTON frame written → the prompt audibly cut "
          f"({len(reactions)} of {PRESSES} presses; "
          f"{block_frames}-frame blocks = {block_ms:.1f} ms):")  # fmt: skip
    print(f"  p50 {percentile(reactions, 50):6.1f} ms   p95 {percentile(reactions, 95):6.1f} ms   "
          f"p99 {percentile(reactions, 99):6.1f} ms   max {max(reactions):6.1f} ms   "
          f"(target p99 ≤ 100 ms)")  # fmt: skip


def main() -> None:
    logging.disable(logging.WARNING)
    started = time.monotonic()
    sink = PromptSink()
    with tempfile.TemporaryDirectory(prefix="bench-buttons-") as tmp, Simulator() as sim:
        settings = DeviceSettings(
            device_id="bench-buttons",
            data_dir=Path(tmp),
            calibration_file=packaged_calibration(),
            serial_url=sim.port_path,
            sample_rate=RATE,
        )
        monitor = HardwareMonitor(sim.port_path)
        ledger = DoseLedger.for_settings(settings)
        speaker = IdlePrompts(
            settings, monitor, DoseClock(ledger), HearingProfile, sink=lambda _s: sink
        )
        host = IdleHost()
        panel = Panel(Controls(), PromptMixer(RATE), ToneLibrary(), host, speak_idle=speaker.speak)
        monitor.attach_panel(panel)
        monitor.start()
        panel.start()
        store = settings.open_store()
        recorder = SafetyEventRecorder(store, settings.device_id, simulation=False)
        parts = SessionParts(settings, store, monitor, ledger, recorder, mixer=panel.mixer)
        try:
            between = bench(sim, panel, sink)
            during = bench_in_session(sim, panel, sink, parts, host)
        finally:
            panel.close()
            monitor.stop()
            recorder.close()
            ledger.close()
            store.close()
    report("between sessions", between, settings.block_frames)
    report("in a session", during, settings.block_frames)
    print(f"(button reaction benchmark ran {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
