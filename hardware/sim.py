"""The safety-MCU simulator: the real firmware ``Controller`` on CPython, behind a pseudo-terminal.

``Simulator`` opens a pty pair, runs the controller in a background thread on a ``SimBoard``
whose sensor readings and link faults a test (or a person, through ``resonera-hwsim``) scripts, and
exposes the slave side as ``port_path`` (e.g. ``/dev/pts/5``): the device opens it exactly as it
opens the real UART, so the device code under test is the production code.

Thread model: the controller and all pty I/O run in the simulator's thread. The fault-injection
methods only set attributes or queue bytes, so they are safe to call from any thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol

from resonera.common import serial_link as sl
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.firmware.logic import Board, Controller

log = logging.getLogger(__name__)

#: Bytes we hold for a reader that is not reading; beyond this, whole frames are dropped (as a UART
#: with nobody listening would lose them), never cut in half.
_TX_BACKLOG = 4096
#: Injected chunks waiting to be sent (e.g. while the MCU is silent); more are dropped.
_MAX_INJECTED = 256

#: Readings a test, a scenario or ``set`` may script, with their types (``SimBoard.READINGS``).
READINGS: dict[str, type] = {
    "amp_temp_c": float,
    "supply_current_a": float,
    "output_vrms": float,
    "dc_offset_mv": float,
    "ear_spl_db": float,
    "clip": bool,
    "headphones": bool,
}

NOMINAL = {
    "amp_temp_c": 40.0,
    "supply_current_a": 0.3,
    "output_vrms": 0.5,
    "dc_offset_mv": 2.0,
    "ear_spl_db": 0.0,
}


class SimBoard(Board):
    """A board whose sensors are variables and whose UART is the master side of a pty."""

    def __init__(self, master_fd: int, config: BoardConfig) -> None:
        self._fd = master_fd
        self._config = config
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._tx = bytearray()
        self._injected: list[bytes] = []
        self._corrupt_next = 0
        self._silent = False
        self._stalled_until: float | None = None
        #: Called as ``frame_listener(message type, time.perf_counter())`` right after each frame
        #: the firmware sends reaches the pty (benchmarks time reactions from it). Sim thread.
        self.frame_listener: Callable[[int, float], None] | None = None
        #: The amplifier's mute line as the firmware drives it (True at power-up).
        self.muted = True
        self.mute_changes = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        #: What the status light shows, as the firmware drives it (``serial_link.LIGHT_*``).
        self.light = sl.LIGHT_IDLE
        self._release_at: dict[int, float] = {}
        self.reset()

    # -- scripting sensors -----------------------------------------------------------------------

    def reset(self) -> None:
        """Nominal readings, headphones in, no clipping, link healthy."""
        self.amp_temp_c = NOMINAL["amp_temp_c"]
        self.supply_current_a = NOMINAL["supply_current_a"]
        self.output_vrms = NOMINAL["output_vrms"]
        self.dc_offset_mv = NOMINAL["dc_offset_mv"]
        self.ear_spl_db = NOMINAL["ear_spl_db"] if self._config.max_ear_spl_db <= 0 else 70.0
        self.clip = False
        self.headphones = True
        with self._lock:
            self._corrupt_next = 0
            self._silent = False
            self._stalled_until = None

    #: Readings ``set_reading`` (and scenarios) may script, with their types.
    READINGS = READINGS

    def set_reading(self, name: str, value: float | bool) -> None:
        """Set one reading by name (see ``READINGS``); raise ``ValueError`` for an unknown one."""
        kind = self.READINGS.get(name)
        if kind is None:
            raise ValueError(f"no such reading {name!r} (one of {', '.join(self.READINGS)})")
        setattr(self, name, kind(value))

    def set_temperature(self, celsius: float) -> None:
        self.amp_temp_c = celsius

    def set_current(self, amps: float) -> None:
        self.supply_current_a = amps

    def set_output_vrms(self, vrms: float) -> None:
        self.output_vrms = vrms

    def set_dc_offset(self, millivolts: float) -> None:
        self.dc_offset_mv = millivolts

    def set_ear_spl(self, db: float) -> None:
        self.ear_spl_db = db

    def set_headphones(self, present: bool) -> None:
        self.headphones = present

    def set_clip(self, clipping: bool) -> None:
        self.clip = clipping

    # -- fault injection -------------------------------------------------------------------------

    def over_temperature(self) -> None:
        self.amp_temp_c = self._config.max_amp_temp_c + 10.0

    def over_current(self) -> None:
        self.supply_current_a = self._config.max_supply_current_a * 1.5

    def dc_offset(self) -> None:
        self.dc_offset_mv = self._config.max_dc_offset_mv * 2.0

    def over_voltage(self) -> None:
        self.output_vrms = self._config.max_output_vrms * 1.5

    def ear_spl_over(self) -> None:
        """Over the ear-cup limit (a fault only on a board with the sensor, max_ear_spl_db > 0)."""
        self.ear_spl_db = (self._config.max_ear_spl_db or 100.0) + 10.0

    def clip_storm(self) -> None:
        self.clip = True

    def press(self, button: int, hold_s: float) -> None:
        """Hold ``button`` (``serial_link.BUTTON_*``) down for ``hold_s`` seconds from now."""
        with self._lock:
            self._release_at[button] = time.monotonic() + hold_s

    def unplug_headphones(self) -> None:
        self.headphones = False

    def send_garbage(self, frames: int = 3, n: int = 32) -> None:
        """Queue ``frames`` runs of ``n`` random non-zero bytes, each with a delimiter: that many
        garbled frames at the device (3, the default, is a burst that withdraws consent)."""
        rng = random.Random(n * 1000 + frames)
        for _ in range(frames):
            junk = bytes(rng.randrange(1, 256) for _ in range(n)) + b"\x00"
            self._inject(junk)

    def crc_errors(self, frames: int = 3) -> None:
        """Queue ``frames`` well-formed frames with a bad CRC now (3, the default, is a burst)."""
        good = sl.encode_frame(sl.MSG_HEARTBEAT, 0, sl.pack_heartbeat(0))
        for _ in range(frames):
            self._inject(_flip_crc(good))

    def _inject(self, chunk: bytes) -> None:
        with self._lock:
            if len(self._injected) >= _MAX_INJECTED:  # bounded, like every buffer here
                self.frames_dropped += 1
                return
            self._injected.append(chunk)

    def corrupt_crc(self, next_n: int = 3) -> None:
        """Flip a CRC bit in the next ``next_n`` frames the firmware sends."""
        with self._lock:
            self._corrupt_next += next_n

    def go_silent(self) -> None:
        """The MCU's transmit line goes dead (it still listens and still mutes on its own)."""
        with self._lock:
            self._silent = True

    def speak_again(self) -> None:
        with self._lock:
            self._silent = False

    def stall(self, seconds: float | None = None) -> None:
        """The link stops moving both ways (for ``seconds``, or until ``unstall``): what the
        device sends waits in the pty, what the firmware sends waits in its buffer (frames beyond
        the buffer are lost). The firmware keeps running, so it mutes when heartbeats stop."""
        with self._lock:
            self._stalled_until = float("inf") if seconds is None else time.monotonic() + seconds

    def unstall(self) -> None:
        with self._lock:
            self._stalled_until = None

    @property
    def stalled(self) -> bool:
        with self._lock:
            until = self._stalled_until
            if until is not None and time.monotonic() >= until:
                self._stalled_until = until = None
        return until is not None

    # -- Board ------------------------------------------------------------------------------------

    def read_sensors(self) -> tuple[float, float, float, float, float, bool, bool]:
        return (
            self.amp_temp_c,
            self.supply_current_a,
            self.output_vrms,
            self.dc_offset_mv,
            self.ear_spl_db,
            self.clip,
            self.headphones,
        )

    def read_buttons(self) -> int:
        now = time.monotonic()
        levels = 0
        with self._lock:
            for button, release_at in list(self._release_at.items()):
                if now >= release_at:
                    del self._release_at[button]
                else:
                    levels |= 1 << (button - 1)
        return levels

    def set_light(self, state: int) -> None:
        self.light = state

    def set_mute(self, muted: bool) -> None:
        if muted != self.muted:
            self.mute_changes += 1
        self.muted = muted

    def ticks_ms(self) -> int:
        return int((time.monotonic() - self._start) * 1000)

    def serial_read(self) -> bytes:
        if self.stalled:
            return b""
        try:
            return os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return b""

    def serial_write(self, data: bytes) -> None:
        with self._lock:
            if self._silent:
                self.frames_dropped += 1
                return
            if self._corrupt_next > 0:
                self._corrupt_next -= 1
                data = _flip_crc(data)
            chunks = [*self._injected, data]
            self._injected.clear()
        for chunk in chunks:
            if len(self._tx) + len(chunk) > _TX_BACKLOG:
                self.frames_dropped += 1
                continue
            self._tx.extend(chunk)
            self.frames_sent += 1
        self.flush()
        listener = self.frame_listener
        if listener is not None and not self._tx:
            listener(data[1] if data[0] > 1 else -1, time.perf_counter())

    def flush(self) -> None:
        """Write what the pty takes now; keep the rest for later (called by every step)."""
        if self.stalled:
            return
        with self._lock:
            if self._injected and not self._silent:
                for chunk in self._injected:
                    self._tx.extend(chunk)
                self._injected.clear()
        if not self._tx:
            return
        try:
            written = os.write(self._fd, self._tx)
        except (BlockingIOError, InterruptedError):
            return
        del self._tx[:written]


def _flip_crc(frame: bytes) -> bytes:
    raw = bytearray(sl.cobs_decode(frame[:-1]))
    raw[-1] ^= 0x01
    return sl.cobs_encode(bytes(raw)) + b"\x00"


class ScriptRun(Protocol):
    """A script being played on the simulator's thread (``scenario.ScenarioRunner``)."""

    def advance(self, now: float) -> None:
        """Apply what is due at ``now`` (``time.monotonic()``)."""

    @property
    def done(self) -> bool:
        """Every step applied and every ramp finished."""


class Script(Protocol):
    """A timed script the simulator can play (``scenario.Scenario``): it starts a run of itself.

    A protocol, so the simulator plays scenarios without importing them (``scenario.py`` drives a
    ``Simulator``, never the other way round).
    """

    def start(self, sim: Simulator, started: float) -> ScriptRun: ...


class Simulator:
    """The firmware on a pty, in a background thread. Use as a context manager.

    ``port_path`` is the device-side path once started. With ``link_path`` a symlink at that path
    points to the pty while the simulator runs (like ``/dev/serial/by-id/...``): a restarted
    simulator gets a new pty but the same ``link_path``, which is how a device finds it again.
    Sensor scripting and fault injection are delegated to ``board`` (a ``SimBoard``); every fault
    is repeated here, and ``run_scenario`` plays a scripted ``Scenario`` on the sim's clock.
    """

    def __init__(
        self,
        config: BoardConfig | None = None,
        *,
        step_interval_s: float = 0.001,
        link_path: Path | str | None = None,
    ) -> None:
        self.config = config if config is not None else BoardConfig()
        self._step_interval_s = step_interval_s
        self.link_path = Path(link_path) if link_path is not None else None
        self._master: int | None = None
        self._slave: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._board: SimBoard | None = None
        self._controller: Controller | None = None
        self._port_path: str | None = None
        self._lock = threading.Lock()
        self._reboot_after_ms: int | None = None
        self._booting_until: float | None = None
        self._scenario: ScriptRun | None = None
        #: How many times the firmware was restarted by ``reboot()``.
        self.reboots = 0
        self.error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        master, slave = os.openpty()
        # Raw mode: no echo, no CR/LF translation, no signals; the link carries binary frames.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._port_path = os.ttyname(slave)
        self._board = SimBoard(master, self.config)
        self._controller = Controller(self._board, self.config)
        self._controller.start()
        if self.link_path is not None:
            tmp = self.link_path.with_name(f".{self.link_path.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(self._port_path, tmp)
            os.replace(tmp, self.link_path)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="resonera-hwsim", daemon=True)
        self._thread.start()
        log.info("simulated safety MCU %s on %s", self.config.board_id, self._port_path)

    def stop(self) -> None:
        """Stop the firmware and close the pty (a device on it sees its port fail)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.link_path is not None and self._port_path is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self.link_path) == self._port_path:
                    self.link_path.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        board, master = self.board, self._master
        assert master is not None
        try:
            while not self._stop.is_set():
                select.select([master], [], [], self._step_interval_s)
                self._maybe_reboot()
                with self._lock:
                    scenario = self._scenario
                if scenario is not None:
                    scenario.advance(time.monotonic())
                if self._booting_until is not None:
                    if time.monotonic() < self._booting_until:
                        continue
                    self._booting_until = None
                    self.controller.start()
                self.controller.step()
                board.flush()
        except BaseException as exc:  # a crash must be visible to the test, not vanish
            self.error = exc
            log.exception("simulator thread crashed")
            board.set_mute(True)

    def _maybe_reboot(self) -> None:
        with self._lock:
            boot_ms, self._reboot_after_ms = self._reboot_after_ms, None
        if boot_ms is None:
            return
        board = self.board
        board.set_mute(True)  # power gone: the mute line's pull-up mutes the amplifier
        self._controller = Controller(board, self.config)  # RAM lost: lowered limits, faults
        self.reboots += 1
        log.info("simulated safety MCU rebooting (%d ms)", boot_ms)
        self._booting_until = time.monotonic() + boot_ms / 1000
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            os.read(self._master or -1, 65536)  # what the UART received before the reset is gone

    # -- what tests look at ----------------------------------------------------------------------

    @property
    def port_path(self) -> str:
        if self._port_path is None:
            raise RuntimeError("simulator not started")
        return self._port_path

    @property
    def board(self) -> SimBoard:
        if self._board is None:
            raise RuntimeError("simulator not started")
        return self._board

    @property
    def controller(self) -> Controller:
        if self._controller is None:
            raise RuntimeError("simulator not started")
        return self._controller

    @property
    def muted(self) -> bool:
        """The amplifier's mute line as the firmware drives it."""
        return self.board.muted

    @property
    def fault(self) -> int:
        """The firmware's latched fault code (``serial_link.FAULT_*``)."""
        return self.controller.fault

    @property
    def light(self) -> int:
        """What the status light shows (``serial_link.LIGHT_*``)."""
        return self.board.light

    def press(self, button: int, *, long: bool = False) -> None:
        """Press ``button`` (``serial_link.BUTTON_*``) as a person would: a short press is held
        100 ms, a long one 200 ms past the board's long-press time. Returns at once."""
        hold_ms = self.config.long_press_ms + 200 if long else 100
        self.board.press(button, hold_ms / 1000)

    # -- fault injection, delegated to the board --------------------------------------------------

    def over_temperature(self) -> None:
        self.board.over_temperature()

    def over_current(self) -> None:
        self.board.over_current()

    def over_voltage(self) -> None:
        self.board.over_voltage()

    def dc_offset(self) -> None:
        self.board.dc_offset()

    def ear_spl_over(self) -> None:
        self.board.ear_spl_over()

    def clip_storm(self) -> None:
        self.board.clip_storm()

    def unplug_headphones(self) -> None:
        self.board.unplug_headphones()

    def send_garbage(self, frames: int = 3, n: int = 32) -> None:
        self.board.send_garbage(frames, n)

    def crc_errors(self, frames: int = 3) -> None:
        self.board.crc_errors(frames)

    def corrupt_crc(self, next_n: int = 3) -> None:
        self.board.corrupt_crc(next_n)

    def go_silent(self) -> None:
        self.board.go_silent()

    def speak_again(self) -> None:
        self.board.speak_again()

    def stall(self, seconds: float | None = None) -> None:
        self.board.stall(seconds)

    def unstall(self) -> None:
        self.board.unstall()

    def reboot(self, boot_ms: int = 20) -> None:
        """Restart the firmware mid-session: mute line high at once, ``boot_ms`` of nothing, then
        a fresh ``Controller`` (muted, fault cleared, lowered limits forgotten) says HELLO again."""
        with self._lock:
            self._reboot_after_ms = max(0, boot_ms)

    def reset(self) -> None:
        """Back to nominal readings and a healthy link (latched faults stay until ARM)."""
        self.board.reset()

    def run_scenario(self, scenario: Script) -> ScriptRun:
        """Play ``scenario`` from now on the simulator's thread; returns its runner."""
        runner = scenario.start(self, time.monotonic())
        with self._lock:
            self._scenario = runner
        return runner
