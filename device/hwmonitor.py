"""The device's link to the safety MCU: a serial port, one I/O thread, and ``consent``.

``HardwareMonitor`` opens the port by URL (``serial.serial_for_url``: a device path such as
``/dev/ttyACM0`` or the simulator's pty, or any pyserial URL), and runs one thread that reads bytes
into the sans-IO ``FrameDecoder`` → ``SafetyLink`` state machine and writes what it wants to send
(heartbeats, ARM/MUTE). One thread does both, every few milliseconds, so the state machine needs no
lock of its own against itself; the lock only guards it against ``arm()``/``request_mute()``.

The audio loop reads ``consent`` every block: it is a plain attribute, so the read is cheap and
never waits on the I/O thread. Listeners hear about consent changes from the I/O thread; they MUST
NOT block (set a flag, ramp down), and a listener that raises is logged, not fatal (style.md).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

import serial

from resonera.common import serial_link as sl
from resonera.common.errors import ResoneraError
from resonera.common.safety_link import HelloInfo, SafetyLink

log = logging.getLogger(__name__)

BAUDRATE = 115200
#: How long the I/O thread sleeps when there was nothing to read.
POLL_INTERVAL_S = 0.005

ConsentListener = Callable[[bool, str], None]


class HardwareNotReady(ResoneraError):
    """The safety MCU cannot give consent: port missing, no answer, incompatible, or a fault."""


class HardwareMonitor:
    """Device-side monitor of the safety MCU. Call ``start()`` (or use ``with``), then ``arm()``."""

    def __init__(
        self,
        url: str,
        clock: Callable[[], float] = time.monotonic,
        *,
        silence_timeout_s: float = 0.3,
    ) -> None:
        self.url = url
        self._clock = clock
        self._link = SafetyLink(silence_timeout_s=silence_timeout_s)
        self._decoder = sl.FrameDecoder(synced=False)
        self._cond = threading.Condition()
        self._listeners: list[ConsentListener] = []
        self._port: serial.SerialBase | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._consent = False
        self._reason = "monitor not started"
        self._flush_on_exit = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the port and start the I/O thread. Raise ``HardwareNotReady`` if it cannot open."""
        if self._thread is not None:
            raise RuntimeError("monitor already started")
        try:
            port = serial.serial_for_url(self.url, baudrate=BAUDRATE, timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareNotReady(
                f"cannot open the safety MCU's serial port {self.url}: {_why(exc)}"
            ) from None
        port.reset_input_buffer()  # stale frames from before we listened mean nothing now
        self._port = port
        self._stopping.clear()
        with self._cond:
            self._publish_locked()
        self._thread = threading.Thread(target=self._run, name="resonera-hwmonitor", daemon=True)
        self._thread.start()

    def stop(self, *, request_mute: bool = True) -> None:
        """Stop heartbeats and close the port; the MCU mutes itself when heartbeats stop.

        With ``request_mute`` (the default) a MUTE is sent first so it mutes at once."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            if request_mute:
                self._link.request_mute(sl.FAULT_DEVICE_REQUEST)
            self._flush_on_exit = request_mute
        self._stopping.set()
        thread.join(timeout=5)
        self._thread = None
        if self._port is not None:
            self._port.close()
            self._port = None
        with self._cond:
            self._link.link_lost("monitor stopped")
            notify = self._publish_locked()
        self._notify(notify)

    def __enter__(self) -> HardwareMonitor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what the player reads -------------------------------------------------------------------

    @property
    def consent(self) -> bool:
        """True only while the MCU is armed, unmuted, in limits, and the link is healthy."""
        return self._consent

    @property
    def reason(self) -> str:
        """Why there is no consent ("" while there is)."""
        return self._reason

    @property
    def hello(self) -> HelloInfo | None:
        """Board id, firmware version and hard limits, once the MCU said HELLO."""
        return self._link.hello

    @property
    def telemetry(self) -> sl.Telemetry | None:
        """The latest telemetry (may be up to one period old)."""
        return self._link.telemetry

    @property
    def last_fault(self) -> tuple[int, str] | None:
        """The last FAULT the MCU sent, as (code, text), for logs and events."""
        return self._link.last_fault

    def add_listener(self, callback: ConsentListener) -> None:
        """``callback(consent, reason)`` on every consent change, from the I/O thread."""
        with self._cond:
            self._listeners.append(callback)

    # -- what the player asks --------------------------------------------------------------------

    def arm(self, timeout_s: float = 2.0) -> HelloInfo:
        """Ask the MCU to unmute and wait for its consent; return what it said in HELLO.

        Raise ``HardwareNotReady`` with the reason when no consent comes within ``timeout_s``, or
        as soon as the MCU refuses (fault, incompatible protocol, a limit crossed)."""
        if self._thread is None:
            raise HardwareNotReady(f"the hardware monitor for {self.url} is not started")
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._link.request_arm()
            notify = self._publish_locked()
        self._notify(notify)
        with self._cond:
            while True:
                hello = self._link.hello
                if self._link.consent and hello is not None:
                    return hello
                if self._link.incompatible or self._link.problem is not None:
                    raise HardwareNotReady(self._link.reason)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.05))
            if not self._link.heard:
                raise HardwareNotReady(
                    f"no answer from the safety MCU on {self.url} within {timeout_s:.1f} s"
                )
            raise HardwareNotReady(
                f"the safety MCU on {self.url} did not arm within {timeout_s:.1f} s: "
                f"{self._link.reason}"
            )

    def request_mute(self, reason: int = sl.FAULT_DEVICE_REQUEST) -> None:
        """Withdraw consent now and ask the MCU to mute (sent within one poll interval)."""
        with self._cond:
            self._link.request_mute(reason)
            notify = self._publish_locked()
        self._notify(notify)

    # -- the I/O thread --------------------------------------------------------------------------

    def _run(self) -> None:
        port = self._port
        assert port is not None
        try:
            while not self._stopping.is_set():
                data = port.read(4096)
                now = self._clock()
                with self._cond:
                    for event in self._decoder.feed(data):
                        self._link.receive(event, now)
                    self._link.tick(now)
                    frames = self._link.outgoing(now)
                    notify = self._publish_locked()
                    self._cond.notify_all()
                for frame in frames:
                    port.write(frame)
                self._notify(notify)
                if not data:
                    self._stopping.wait(POLL_INTERVAL_S)
            if self._flush_on_exit:
                with self._cond:
                    frames = self._link.outgoing(self._clock())
                for frame in frames:
                    port.write(frame)
                port.flush()
        except (serial.SerialException, OSError) as exc:
            log.error("safety MCU link on %s failed: %s", self.url, exc)
            with self._cond:
                self._link.link_lost(f"serial port {self.url} failed: {_why(exc)}")
                notify = self._publish_locked()
                self._cond.notify_all()
            self._notify(notify)

    def _publish_locked(self) -> tuple[bool, str, list[ConsentListener]] | None:
        """Copy the link's verdict to the cheap attributes; say whom to tell if consent changed."""
        consent, reason = self._link.consent, self._link.reason
        changed = consent != self._consent
        # Reason first, then consent: a reader that sees consent False finds the reason already set.
        self._reason = reason
        self._consent = consent
        if changed:
            log.info("safety MCU consent %s%s", consent, f": {reason}" if reason else "")
            return consent, reason, list(self._listeners)
        return None

    @staticmethod
    def _notify(notify: tuple[bool, str, list[ConsentListener]] | None) -> None:
        if notify is None:
            return
        consent, reason, listeners = notify
        for listener in listeners:
            try:
                listener(consent, reason)
            except Exception:
                log.exception("consent listener %r failed", listener)


def _why(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return "no such device"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EBUSY:
        return "device busy"
    return str(exc) or type(exc).__name__
