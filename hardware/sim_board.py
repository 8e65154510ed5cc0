"""The simulated safety-MCU board: scriptable sensors, injectable link faults, a pty as its UART.

``SimBoard`` is the firmware's ``Board`` (``firmware/logic.py``) on CPython: its sensor readings are
variables a test or a scenario sets, its UART is the master side of a pseudo-terminal, and its
faults (garbled frames, bad CRCs, a silent or stalled line) are queued from any thread and played
on the simulator's (``sim.py``).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable

from resonera.common import serial_link as sl
from resonera.hardware.firmware.bootloader import Flash
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.firmware.logic import Board

#: Bytes we hold for a reader that is not reading; beyond this, whole frames are dropped (as a UART
#: with nobody listening would lose them), never cut in half.
_TX_BACKLOG = 4096
#: Injected chunks waiting to be sent (e.g. while the MCU is silent); more are dropped.
_MAX_INJECTED = 256
#: Light changes and LIGHT frames remembered for tests (``lights_shown``, ``lights_asked``).
_LIGHT_HISTORY = 4096

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


class PowerLoss(Exception):
    """Raised by ``SimFlash`` in the middle of a write: the power is gone, the simulator reboots."""


class SimFlash(Flash):
    """The bootloader's flash, kept by the simulator across its simulated power cycles, with the
    faults of the update path: a power loss in the Nth chunk written from now, one in the next
    boot-record write (a commit), and a byte written wrong (a flash bit error). Every fault breaks
    the write off half-way, as a brown-out would. Called on the simulator's thread only, except the
    fault setters, which only set numbers."""

    def __init__(self, slot_size: int) -> None:
        super().__init__(slot_size)
        self._lose_power_at_chunk = 0
        self._lose_power_at_record = False
        self._corrupt_next_write = False
        #: Slot writes since the simulator started (every chunk is one).
        self.slot_writes = 0

    def install_factory(self, image: bytes) -> None:
        super().install_factory(image)
        self.slot_writes = 0  # the factory's write is not one of the update's

    def lose_power_at_chunk(self, n: int) -> None:
        self._lose_power_at_chunk = self.slot_writes + n

    def lose_power_at_record(self) -> None:
        self._lose_power_at_record = True

    def corrupt_next_write(self) -> None:
        self._corrupt_next_write = True

    def write_slot(self, slot: int, offset: int, data: bytes) -> None:
        self.slot_writes += 1
        if self.slot_writes == self._lose_power_at_chunk:
            self._lose_power_at_chunk = 0
            super().write_slot(slot, offset, data[: len(data) // 2])
            raise PowerLoss(f"power lost writing chunk at offset {offset}")
        if self._corrupt_next_write and data:
            self._corrupt_next_write = False
            data = bytes((data[0] ^ 0x40,)) + bytes(data[1:])
        super().write_slot(slot, offset, data)

    def write_record_copy(self, index: int, raw: bytes) -> None:
        if self._lose_power_at_record:
            self._lose_power_at_record = False
            super().write_record_copy(index, raw[: len(raw) // 2])
            raise PowerLoss("power lost writing the boot record")
        super().write_record_copy(index, raw)


class SimBoard(Board):
    """A board whose sensors are variables and whose UART is the master side of a pty.

    With ``rx_bytes_per_s`` the firmware reads no faster than a UART of that speed delivers
    (115200 baud 8N1 is 11520 bytes/s), so a transfer over the pty takes as long as over the wire.
    ``on_reset`` is what ``reset_mcu`` does (the simulator's reboot)."""

    def __init__(
        self,
        master_fd: int,
        config: BoardConfig,
        *,
        rx_bytes_per_s: float | None = None,
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        self._fd = master_fd
        self._rx_rate = rx_bytes_per_s
        self._rx_budget = 0.0
        self._rx_at = time.monotonic()
        self._on_reset = on_reset
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
        self._lights_shown: deque[tuple[float, int]] = deque(maxlen=_LIGHT_HISTORY)
        self._lights_asked: deque[tuple[float, int]] = deque(maxlen=_LIGHT_HISTORY)
        # A tap on the receive line, as a logic analyser would be: it sees every LIGHT the device
        # sends, also one the firmware rejects, without the firmware's help.
        self._rx_tap = sl.FrameDecoder(synced=False)
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
            self.headphones and self._config.headphones_pin >= 0,  # no switch: never "in"
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
        with self._lock:
            self._lights_shown.append((time.monotonic(), state))

    @property
    def lights_shown(self) -> list[tuple[float, int]]:
        """``(time.monotonic(), state)`` for every state the firmware set the light to, oldest
        first: idle at power-up, each accepted LIGHT, the MCU's own fault (the last 4096)."""
        with self._lock:
            return list(self._lights_shown)

    @property
    def lights_asked(self) -> list[tuple[float, int]]:
        """``(time.monotonic(), state byte)`` for every LIGHT frame that arrived with a good CRC and
        a one-byte body, accepted or not (a state the firmware refuses is here too); the last 4096.
        """
        with self._lock:
            return list(self._lights_asked)

    def _tap(self, data: bytes) -> None:
        now = time.monotonic()
        for event in self._rx_tap.feed(data):
            if isinstance(event, sl.Frame) and event.type == sl.MSG_LIGHT and len(event.body) == 1:
                with self._lock:
                    self._lights_asked.append((now, event.body[0]))

    def set_mute(self, muted: bool) -> None:
        if muted != self.muted:
            self.mute_changes += 1
        self.muted = muted

    def ticks_ms(self) -> int:
        return int((time.monotonic() - self._start) * 1000)

    def reset_mcu(self) -> None:
        if self._on_reset is None:
            raise NotImplementedError("this simulated board has no reset")
        self.set_mute(True)
        self._on_reset()

    def _rx_allowance(self) -> int:
        rate = self._rx_rate
        if rate is None:
            return 4096
        now = time.monotonic()
        # a UART's FIFO and the firmware's ring buffer hold at most this much between two reads
        self._rx_budget = min(1024.0, self._rx_budget + (now - self._rx_at) * rate)
        self._rx_at = now
        return int(self._rx_budget)

    def serial_read(self) -> bytes:
        if self.stalled:
            return b""
        allowance = self._rx_allowance()
        if allowance <= 0:
            return b""
        try:
            data = os.read(self._fd, allowance)
        except (BlockingIOError, InterruptedError):
            return b""
        if self._rx_rate is not None:
            self._rx_budget -= len(data)
        self._tap(data)
        return data

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
