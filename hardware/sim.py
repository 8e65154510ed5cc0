"""The safety-MCU simulator: the real firmware ``Controller`` on CPython, behind a pseudo-terminal.

``Simulator`` opens a pty pair, runs the controller in a background thread on a ``SimBoard``
whose sensor readings and link faults a test (or a person, through ``resonera-hwsim``) scripts, and
exposes the slave side as ``port_path`` (e.g. ``/dev/pts/5``): the device opens it exactly as it
opens the real UART, so the device code under test is the production code.

Thread model: the controller and all pty I/O run in the simulator's thread. The fault-injection
methods only set attributes or queue bytes, so they are safe to call from any thread.
"""

from __future__ import annotations

import logging
import os
import random
import select
import threading
import time
import tty
from types import TracebackType

from resonera.common import serial_link as sl
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.firmware.logic import Board, Controller

log = logging.getLogger(__name__)

#: Bytes we hold for a reader that is not reading; beyond this, whole frames are dropped (as a UART
#: with nobody listening would lose them), never cut in half.
_TX_BACKLOG = 4096

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
        #: The amplifier's mute line as the firmware drives it (True at power-up).
        self.muted = True
        self.mute_changes = 0
        self.frames_sent = 0
        self.frames_dropped = 0
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

    def clip_storm(self) -> None:
        self.clip = True

    def unplug_headphones(self) -> None:
        self.headphones = False

    def send_garbage(self, n: int = 32) -> None:
        """Queue ``n`` random non-zero bytes and a delimiter: one garbled frame at the device."""
        rng = random.Random(n)
        junk = bytes(rng.randrange(1, 256) for _ in range(n)) + b"\x00"
        with self._lock:
            self._injected.append(junk)

    def corrupt_crc(self, next_n: int = 1) -> None:
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

    def set_mute(self, muted: bool) -> None:
        if muted != self.muted:
            self.mute_changes += 1
        self.muted = muted

    def ticks_ms(self) -> int:
        return int((time.monotonic() - self._start) * 1000)

    def serial_read(self) -> bytes:
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

    def flush(self) -> None:
        """Write what the pty takes now; keep the rest for later (called by every step)."""
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


class Simulator:
    """The firmware on a pty, in a background thread. Use as a context manager.

    ``port_path`` is the device-side path once started. Sensor scripting and fault injection are
    delegated to ``board`` (a ``SimBoard``); the common ones are repeated here for brevity.
    """

    def __init__(
        self, config: BoardConfig | None = None, *, step_interval_s: float = 0.001
    ) -> None:
        self.config = config if config is not None else BoardConfig()
        self._step_interval_s = step_interval_s
        self._master: int | None = None
        self._slave: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._board: SimBoard | None = None
        self._controller: Controller | None = None
        self._port_path: str | None = None
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
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="resonera-hwsim", daemon=True)
        self._thread.start()
        log.info("simulated safety MCU %s on %s", self.config.board_id, self._port_path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
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
        board, controller, master = self.board, self.controller, self._master
        assert master is not None
        try:
            while not self._stop.is_set():
                select.select([master], [], [], self._step_interval_s)
                controller.step()
                board.flush()
        except BaseException as exc:  # a crash must be visible to the test, not vanish
            self.error = exc
            log.exception("simulator thread crashed")
            board.set_mute(True)

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

    # -- fault injection, delegated to the board --------------------------------------------------

    def over_temperature(self) -> None:
        self.board.over_temperature()

    def over_current(self) -> None:
        self.board.over_current()

    def dc_offset(self) -> None:
        self.board.dc_offset()

    def clip_storm(self) -> None:
        self.board.clip_storm()

    def unplug_headphones(self) -> None:
        self.board.unplug_headphones()

    def send_garbage(self, n: int = 32) -> None:
        self.board.send_garbage(n)

    def corrupt_crc(self, next_n: int = 1) -> None:
        self.board.corrupt_crc(next_n)

    def go_silent(self) -> None:
        self.board.go_silent()

    def reset(self) -> None:
        """Back to nominal readings and a healthy link (latched faults stay until ARM)."""
        self.board.reset()
