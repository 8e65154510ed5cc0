"""The safety-MCU simulator: the real firmware ``Controller`` on CPython, behind a pseudo-terminal.

``Simulator`` opens a pty pair, runs the controller in a background thread on a ``SimBoard``
whose sensor readings and link faults a test (or a person, through ``resonera-hwsim``) scripts, and
exposes the slave side as ``port_path`` (e.g. ``/dev/pts/5``): the device opens it exactly as it
opens the real UART, so the device code under test is the production code.

Thread model: the controller and all pty I/O run in the simulator's thread. The fault-injection
methods only set attributes or queue bytes, so they are safe to call from any thread. The board
itself (sensors, faults, the pty as its UART) is ``sim_board.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import threading
import time
import tty
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from resonera.common import serial_link as sl
from resonera.hardware.firmware.bootloader import (
    DEFAULT_SLOT_SIZE,
    BootChoice,
    Bootloader,
    SignatureCheck,
    boot,
)
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.firmware.logic import Controller
from resonera.hardware.sim_board import READINGS, PowerLoss, SimBoard, SimFlash

__all__ = [
    "OLDEST_MINOR",
    "READINGS",
    "Ed25519Check",
    "Script",
    "ScriptRun",
    "SimBoard",
    "Simulator",
    "build_image",
    "public_key_hex",
    "sign_image",
]

#: The oldest protocol minor the simulator can play: v1.2, the first with the status light (what
#: an older firmware lacks beyond that, buttons and LOWER_LIMITS, it does not play).
OLDEST_MINOR = 2

log = logging.getLogger(__name__)

#: A crashed image is reset by the hardware watchdog after this long (main.py's WDT is 500 ms).
WATCHDOG_S = 0.5
#: How long a reset asked by the firmware (a commit, a rollback) or a power loss keeps it down.
RESET_BOOT_MS = 20


class Ed25519Check(SignatureCheck):
    """The bootloader's signature check on CPython, with ``cryptography``."""

    def __call__(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def build_image(version: str, body_size: int = 0) -> bytes:
    """A simulated firmware image of ``version``: the header, then a body that names the version
    and is padded to ``body_size`` bytes (if larger) with bytes that depend on the version, so two
    versions never share a SHA-256."""
    text = f"resonera safety firmware {version}\n".encode()
    pad = bytearray()
    seed = sl.crc16_ccitt_false(version.encode())
    while len(text) + len(pad) < body_size:
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        pad.append((seed >> 16) & 0xFF)
    return sl.pack_image(version, text + bytes(pad))


def sign_image(key: Ed25519PrivateKey, image: bytes) -> bytes:
    """The signed image file of ``image``: its signature by the update ``key`` first."""
    version, size = sl.unpack_image_header(image)
    if size != len(image):
        raise ValueError(f"image header says {size} bytes, the image has {len(image)}")
    digest = hashlib.sha256(image).digest()
    signature = key.sign(sl.update_signed_message(len(image), digest, version))
    return sl.pack_signed_image(signature, image)


def public_key_hex(key: Ed25519PrivateKey) -> str:
    """The board setting ``update_public_key`` that pins ``key``'s public half."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


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
    ``protocol_minor`` (2 to 4) plays a firmware of that version (BOARD only from 4);
    ``lights_shown`` and ``lights_asked`` are the light's history and the LIGHT frames the device
    sent. ``readings`` (names of ``READINGS``) are set before the firmware powers up, e.g.
    ``{"headphones": False}`` for headphones never plugged in since power-up; ``reset`` forgets
    them. The bootloader (v1.5): ``flash`` keeps both image slots and the boot record across
    ``reboot``s and power losses; each boot runs the image the boot record picks (its version is
    ``firmware_version``, what HELLO says); ``rx_bytes_per_s`` makes the UART as slow as a real one.
    """

    def __init__(
        self,
        config: BoardConfig | None = None,
        *,
        step_interval_s: float = 0.001,
        link_path: Path | str | None = None,
        protocol_minor: int = sl.PROTOCOL_MINOR,
        readings: Mapping[str, float | bool] | None = None,
        rx_bytes_per_s: float | None = None,
        slot_size: int = DEFAULT_SLOT_SIZE,
    ) -> None:
        unknown = set(readings or {}) - set(READINGS)
        if unknown:
            raise ValueError(f"no such reading {', '.join(sorted(unknown))}")
        self._first_readings = dict(readings or {})
        if not OLDEST_MINOR <= protocol_minor <= sl.PROTOCOL_MINOR:
            raise ValueError(
                f"the simulator speaks protocol v1.{OLDEST_MINOR} to v1.{sl.PROTOCOL_MINOR}, "
                f"not v1.{protocol_minor}"
            )
        self.config = config if config is not None else BoardConfig()
        #: The firmware's protocol minor: older than ``PROTOCOL_MINOR`` plays an older firmware
        #: (its HELLO says so, and it refuses the light states its version lacks).
        self.protocol_minor = protocol_minor
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
        self._rx_bytes_per_s = rx_bytes_per_s
        #: The MCU's flash: two image slots and the boot record, kept across simulated power
        #: cycles (not across simulators). It starts factory-fresh with the configuration's
        #: ``firmware_version`` in slot a.
        self.flash = SimFlash(slot_size)
        self.flash.install_factory(build_image(self.config.firmware_version))
        self._public_key = bytes.fromhex(self.config.update_public_key)
        #: What the last boot started (None before the first).
        self.running: BootChoice | None = None
        self._failing: set[str] = set()
        self._watchdog_at: float | None = None
        #: Boots that ran a trial image past its last boot, so the old one ran again.
        self.rollbacks: list[str] = []
        #: Simulated power losses (``power_loss_at_chunk``, ``power_loss_in_commit``).
        self.power_losses = 0

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
        self._board = SimBoard(
            master,
            self.config,
            rx_bytes_per_s=self._rx_bytes_per_s,
            on_reset=lambda: self.reboot(RESET_BOOT_MS),
        )
        for name, value in self._first_readings.items():
            self._board.set_reading(name, value)
        self._power_up()
        if self._watchdog_at is None:
            self.controller.start()
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
                try:
                    self._iteration()
                except PowerLoss as exc:  # the firmware was cut off mid-write: it boots again
                    log.info("simulated power loss: %s", exc)
                    self.power_losses += 1
                    board.set_mute(True)
                    self.reboot(RESET_BOOT_MS)
        except BaseException as exc:  # a crash must be visible to the test, not vanish
            self.error = exc
            log.exception("simulator thread crashed")
            board.set_mute(True)

    def _iteration(self) -> None:
        self._maybe_reboot()
        with self._lock:
            scenario = self._scenario
        if scenario is not None:
            scenario.advance(time.monotonic())
        if self._booting_until is not None:
            if time.monotonic() < self._booting_until:
                return
            self._booting_until = None
            if self._watchdog_at is None:
                self.controller.start()
        if self._watchdog_at is not None:  # a crashed image: nothing runs until the watchdog
            if time.monotonic() >= self._watchdog_at:
                self._watchdog_at = None
                self.reboot(0)
            return
        self.controller.step()
        self.board.flush()

    def _power_up(self) -> None:
        """What the boot ROM and bootloader do: pick the image (spending a trial boot), then run
        it: a fresh ``Controller`` saying that image's version, or a crash if it is failing."""
        board = self.board
        choice = boot(self.flash)
        if choice is None:
            raise RuntimeError("no slot of the simulated flash holds a whole image")
        if choice.rolled_back_from:
            self.rollbacks.append(choice.rolled_back_from)
            log.info("simulated bootloader rolled back from %s", choice.rolled_back_from)
        self.running = choice
        bootloader = Bootloader(
            self.flash, choice, self._public_key, Ed25519Check(), self.config.update_trial_boots
        )
        self._controller = Controller(board, self.config, self.protocol_minor, bootloader)
        failing = choice.version in self._failing
        self._watchdog_at = time.monotonic() + WATCHDOG_S if failing else None
        if failing:
            log.info("simulated firmware %s crashed at boot", choice.version)

    def _maybe_reboot(self) -> None:
        with self._lock:
            boot_ms, self._reboot_after_ms = self._reboot_after_ms, None
        if boot_ms is None:
            return
        board = self.board
        board.set_mute(True)  # power gone: the mute line's pull-up mutes the amplifier
        # RAM lost: lowered limits, faults, a transfer in progress; the flash stays.
        self._power_up()
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

    @property
    def lights_shown(self) -> list[tuple[float, int]]:
        """``(time.monotonic(), state)`` of every state the light was set to, oldest first: idle at
        power-up (and after each reboot), each LIGHT the firmware accepted, its own fault."""
        return self.board.lights_shown

    @property
    def lights_asked(self) -> list[tuple[float, int]]:
        """``(time.monotonic(), state)`` of every LIGHT frame the device sent (good CRC, one-byte
        body), whether the firmware accepted it or not: what the device asked the light to show."""
        return self.board.lights_asked

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

    # -- the bootloader (protocol v1.5) -------------------------------------------------------------

    def _running(self) -> BootChoice | None:
        controller = self._controller
        if controller is not None and controller.bootloader is not None:
            return controller.bootloader.running  # a CONFIRM changes it
        return self.running

    @property
    def firmware_version(self) -> str:
        """The version of the image running (what its HELLO says; a crashed one says nothing)."""
        running = self._running()
        return running.version if running is not None else ""

    @property
    def running_slot(self) -> str:
        running = self._running()
        return "ab"[running.slot] if running is not None else "?"

    @property
    def on_trial(self) -> bool:
        """The running image is on trial: not confirmed yet."""
        running = self._running()
        return running is not None and running.trial

    @property
    def updating(self) -> bool:
        """A transfer is in progress (the output is held muted)."""
        controller = self._controller
        return (
            controller is not None
            and controller.bootloader is not None
            and (controller.bootloader.updating)
        )

    @property
    def crashed(self) -> bool:
        """The running image crashed at boot and waits for the watchdog."""
        return self._watchdog_at is not None

    def power_loss_at_chunk(self, n: int = 1) -> None:
        """The power goes while the ``n``-th chunk from now is written (half of it written)."""
        self.flash.lose_power_at_chunk(max(1, n))

    def power_loss_in_commit(self) -> None:
        """The power goes while the next boot record is written (a commit): half of it written."""
        self.flash.lose_power_at_record()

    def corrupt_write(self) -> None:
        """The next chunk written lands in flash with one byte wrong (a flash bit error)."""
        self.flash.corrupt_next_write()

    def fail_image(self, version: str) -> None:
        """An image of ``version`` crashes whenever it boots: it never says HELLO, the watchdog
        resets it after ``WATCHDOG_S`` (a new image that fails its health check)."""
        self._failing.add(version)

    def reset(self) -> None:
        """Back to nominal readings and a healthy link (latched faults stay until ARM)."""
        self.board.reset()

    def run_scenario(self, scenario: Script) -> ScriptRun:
        """Play ``scenario`` from now on the simulator's thread; returns its runner."""
        runner = scenario.start(self, time.monotonic())
        with self._lock:
            self._scenario = runner
        return runner
