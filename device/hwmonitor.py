"""The device's link to the safety MCU: a serial port, one I/O thread, and ``consent``.

It stays one module (over 450 lines): the port, its one I/O thread, the link's state machine, the
claims on consent and the listeners share one lock and one order of events, and are read together.

``HardwareMonitor`` opens the port by URL (``serial.serial_for_url``: a device path such as
``/dev/ttyACM0``, the simulator's pty or a stable symlink to it, or any pyserial URL), and runs one
thread that reads bytes into the sans-IO ``FrameDecoder`` → ``SafetyLink`` state machine and writes
what it wants to send (heartbeats, ARM/MUTE/LOWER_LIMITS). One thread does both, so the state
machine needs no lock against itself; the lock only guards it against the public methods.

Latency: the thread waits in the port's ``read`` for at most ``IO_WAIT_S`` and wakes as soon as a
byte arrives, so a FAULT frame reaches ``consent`` within a fraction of a millisecond of reaching
the port; the audio loop reads ``consent`` (a plain attribute: cheap, never waits on the I/O
thread) before every block, so output mutes within one block (``engine/audio/player.py``).

When the port fails (unplugged, the simulator's pty closed) consent is withdrawn at once and the
thread tries to open the same URL again every ``reconnect_interval_s``; once it is back, the MCU is
asked who it is (HELLO) and the device must arm again.

Events (consent changes, warnings, faults, link up/down, restarts, limits) go, with the readings
and limits of that moment, to ``events`` (a ``SafetyEventSink``, normally a
``SafetyEventRecorder``: store + outbox, written off this thread, the routine hand-overs only
counted, docs/safety-events.md) and to event listeners (the safety state machine). Listeners run
on the I/O thread; they MUST NOT block, and a listener that raises is logged, not fatal
(docs/architecture.md §8).

Buttons and the status light (protocol v1.2): presses the MCU reports go to button listeners (on
the I/O thread, in order; ``device/controls.py`` decides what they mean), and ``set_light`` says
what the status light should show (re-sent after an MCU restart, confirmed by LIGHT_SHOWN). A
monitor serving a ``panel`` (the device's ``ControlPanel``, ``device/panel.py``; given to the
constructor or ``attach_panel``) also hands it every press and link event and shows the light it
asks for.

One monitor per process holds the port for the process's life (the device service's, or a
standalone ``resonera-device play``'s). Whoever wants sound asks it with ``claim(holder)``: the
MCU is armed for that holder, whose ``ConsentClaim.consent`` is the gate of its audio; ``release``
mutes the MCU again. One holder at a time: a session pre-empts a prompt spoken between sessions
(the prompt's claim goes silent at once, and its release no longer mutes what the session armed),
and a prompt is refused while a session holds the MCU. Started with ``wait_for_port``, a port
that is not there yet is tried again as a lost one is; meanwhile there is no consent.

Warnings (a reading nearing its limit) do not withdraw consent: ``attenuation_db`` (≤ 0) says how
far to turn the level down, and ``WarningAttenuator`` is a ready-made block processor that ramps to
it smoothly.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

import numpy as np
import serial
from numpy.typing import NDArray

from resonera.common import serial_link as sl
from resonera.common.errors import ResoneraError
from resonera.common.routine_events import MONITOR_STOPPED_CAUSE
from resonera.common.safety_link import (
    CRC_BURST_COUNT,
    CRC_BURST_WINDOW_S,
    SILENCE_TIMEOUT_S,
    HardLimits,
    HelloInfo,
    LinkEvent,
    SafetyLink,
    WarningPolicy,
)
from resonera.device.safety_events import SafetyEventSink, limits_record, readings_from_telemetry

log = logging.getLogger(__name__)

BAUDRATE = 115200
#: Longest wait for bytes in one I/O-thread iteration (the thread wakes at once when bytes come).
IO_WAIT_S = 0.002
RECONNECT_INTERVAL_S = 0.2

ConsentListener = Callable[[bool, str], None]
WarningListener = Callable[[float, str], None]
EventListener = Callable[[LinkEvent], None]
ButtonListener = Callable[[sl.ButtonPress], None]


class ControlPanel(Protocol):
    """The buttons' and light's owner (``device.panel.Panel``). Called on the I/O thread:
    every method MUST return at once (queue the work, return a cached value)."""

    def on_press(self, press: sl.ButtonPress) -> None: ...

    def on_event(self, event: LinkEvent) -> None: ...

    def light(self, consent: bool, attenuated: bool) -> int | None:
        """The light to show now (``serial_link.LIGHT_*``), or None to leave it."""
        ...


class HardwareNotReady(ResoneraError):
    """The safety MCU cannot give consent: port missing, no answer, incompatible, or a fault."""


class ConsentClaim:
    """One holder's hold on the MCU's consent (``HardwareMonitor.claim``). ``consent`` is true
    only while this claim is the monitor's current one and the MCU consents: a pre-empted claim
    is silent at once. Read from the audio thread before every block: cheap, never waits."""

    def __init__(self, monitor: HardwareMonitor, holder: str, token: int, hello: HelloInfo):
        self.monitor = monitor
        self.holder = holder
        self.token = token
        #: What the MCU said in its HELLO when the claim was armed (board, firmware, hard limits).
        self.hello = hello

    @property
    def current(self) -> bool:
        """Still the monitor's holder (not pre-empted, not released)."""
        return self.monitor.claim_token == self.token

    @property
    def consent(self) -> bool:
        return self.current and self.monitor.consent

    @property
    def reason(self) -> str:
        """Why this claim has no consent ("" while it has)."""
        if not self.current:
            holder = self.monitor.holder
            return f"the safety MCU was handed to {holder}" if holder else "consent released"
        return self.monitor.reason

    @property
    def board(self) -> str:
        return f"{self.hello.board_id} fw {self.hello.firmware_version}"

    def release(self) -> None:
        """Give the MCU back: muted again, unless another holder has it now."""
        self.monitor.release(self)


class HardwareMonitor:
    """Device-side monitor of the safety MCU. Call ``start()`` (or use ``with``), then ``arm()``."""

    def __init__(
        self,
        url: str,
        clock: Callable[[], float] = time.monotonic,
        *,
        silence_timeout_s: float = SILENCE_TIMEOUT_S,
        events: SafetyEventSink | None = None,
        warning_policy: WarningPolicy | None = None,
        reconnect_interval_s: float = RECONNECT_INTERVAL_S,
        crc_burst_count: int = CRC_BURST_COUNT,
        crc_burst_window_s: float = CRC_BURST_WINDOW_S,
        panel: ControlPanel | None = None,
    ) -> None:
        self.url = url
        self.panel = panel
        self._clock = clock
        self._link = SafetyLink(
            silence_timeout_s=silence_timeout_s,
            warning_policy=warning_policy,
            crc_burst_count=crc_burst_count,
            crc_burst_window_s=crc_burst_window_s,
        )
        self._events = events
        self.reconnect_interval_s = reconnect_interval_s
        self._decoder = sl.FrameDecoder(synced=False)
        self._cond = threading.Condition()
        self._listeners: list[ConsentListener] = []
        self._warning_listeners: list[WarningListener] = []
        self._event_listeners: list[EventListener] = []
        self._button_listeners: list[ButtonListener] = []
        self._port: serial.SerialBase | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._consent = False
        self._reason = "monitor not started"
        self._attenuation_db = 0.0
        self._warning = ""
        self._flush_on_exit = False
        #: Why the port is not open ("" while it is, or before the first try).
        self._port_problem = ""
        #: Who holds the MCU's consent (``claim``), and the number of the latest claim.
        self._holder: str | None = None
        self._claim_token = 0
        #: A release sent MUTE: claims wait to hear the MCU muted before arming, until it is heard
        #: (a session taking over a prompt still waiting must not arm before that MUTE lands).
        self._mute_pending = False
        #: How many times the port was reopened after a failure.
        self.reconnects = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, *, wait_for_port: bool = False) -> None:
        """Open the port and start the I/O thread. Raise ``HardwareNotReady`` if it cannot open,
        unless ``wait_for_port``: then the I/O thread tries again every ``reconnect_interval_s``
        (no consent meanwhile; ``reason`` says why)."""
        if self._thread is not None:
            raise RuntimeError("monitor already started")
        try:
            self._port = self._open()
        except HardwareNotReady as exc:
            if not wait_for_port:
                raise
            log.warning("%s; trying again every %.1f s", exc, self.reconnect_interval_s)
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
            self._holder = None
            self._link.link_lost(MONITOR_STOPPED_CAUSE)
            events = self._take_locked()
            notify = self._publish_locked()
        self._notify(notify, events)

    def attach_panel(self, panel: ControlPanel) -> None:
        """Serve ``panel`` (presses, link events, the light) from now on; before ``start``."""
        if self._thread is not None:
            raise RuntimeError("attach the panel before the monitor starts")
        self.panel = panel

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
        if self._port is None and self._port_problem:
            return self._port_problem
        return self._reason

    @property
    def holder(self) -> str | None:
        """Who holds the MCU's consent now (``claim``), or None."""
        return self._holder

    @property
    def claim_token(self) -> int:
        """The number of the current claim (a released or pre-empted claim's no longer matches)."""
        return self._claim_token if self._holder is not None else -1

    @property
    def attenuation_db(self) -> float:
        """How far warnings ask to turn the level down (0 without a warning, ≤ 0 dB)."""
        return self._attenuation_db

    @property
    def warning(self) -> str:
        """The active warnings as text ("" when none)."""
        return self._warning

    @property
    def silence_timeout_s(self) -> float:
        """No TELEMETRY for this long withdraws consent."""
        return self._link.silence_timeout_s

    @property
    def connected(self) -> bool:
        """True while the port is open and the MCU has said HELLO."""
        return self._port is not None and self._link.hello is not None

    @property
    def hello(self) -> HelloInfo | None:
        """Board id, firmware version and hard limits, once the MCU said HELLO."""
        return self._link.hello

    @property
    def board_info(self) -> sl.BoardInfo | None:
        """What the board says it is (protocol v1.4: whether it requires headphones, whether it
        has a switch to see them), once its BOARD followed its HELLO; None before, and always
        with an MCU older than v1.4."""
        return self._link.board

    @property
    def limits(self) -> HardLimits | None:
        """The ceiling for the software chain: the MCU's limits, lowered by ``lower_limits``."""
        with self._cond:
            return self._link.limits

    @property
    def telemetry(self) -> sl.Telemetry | None:
        """The latest telemetry (may be up to one period old)."""
        return self._link.telemetry

    def limit_crossed(self) -> int:
        """The fault code of a limit the latest telemetry crosses (the MCU would refuse an ARM
        for it now), ``FAULT_NONE`` when none or nothing heard yet. A latched fault whose cause
        is gone is none: the next ARM clears it."""
        telemetry, limits = self._link.telemetry, self.limits
        if telemetry is None or limits is None:
            return sl.FAULT_NONE
        return sl.check_limits(telemetry, sl.Limits(*limits.values()))[0]

    @property
    def last_fault(self) -> tuple[int, str] | None:
        """The last FAULT the MCU sent, as (code, text), for logs and events."""
        return self._link.last_fault

    @property
    def board(self) -> str:
        """``"<board id> fw <version>"`` once HELLO is known, else ""."""
        hello = self._link.hello
        return f"{hello.board_id} fw {hello.firmware_version}" if hello is not None else ""

    def add_listener(self, callback: ConsentListener) -> None:
        """``callback(consent, reason)`` on every consent change, from the I/O thread (or the
        thread that changed it: a release, a requested mute)."""
        with self._cond:
            self._listeners.append(callback)

    def remove_listener(self, callback: ConsentListener) -> None:
        """Stop calling ``callback`` (added with ``add_listener``): a change another thread is
        announcing at this moment no longer reaches it either (``_notify`` asks again)."""
        with self._cond:
            self._listeners.remove(callback)

    def remove_warning_listener(self, callback: WarningListener) -> None:
        """Stop calling ``callback`` (added with ``add_warning_listener``)."""
        with self._cond:
            self._warning_listeners.remove(callback)

    def add_warning_listener(self, callback: WarningListener) -> None:
        """``callback(attenuation_db, warning_text)`` whenever either changes, from the I/O thread."""
        with self._cond:
            self._warning_listeners.append(callback)

    def add_event_listener(self, callback: EventListener) -> None:
        """``callback(LinkEvent)`` for every event of the link, from the I/O thread."""
        with self._cond:
            self._event_listeners.append(callback)

    def remove_event_listener(self, callback: EventListener) -> None:
        """Stop calling ``callback`` (added with ``add_event_listener``)."""
        with self._cond:
            self._event_listeners.remove(callback)

    def add_button_listener(self, callback: ButtonListener) -> None:
        """``callback(ButtonPress)`` for every button press the MCU reports, from the I/O thread."""
        with self._cond:
            self._button_listeners.append(callback)

    def set_light(self, state: int) -> None:
        """Ask the status light to show ``state`` (``serial_link.LIGHT_*``); sent within one I/O
        iteration once the MCU said HELLO. ``ValueError`` for a state that does not exist."""
        with self._cond:
            self._link.set_light(state)

    @property
    def light_shown(self) -> int | None:
        """What the MCU says its status light shows (None until it said so)."""
        return self._link.light_shown

    # -- what the player asks --------------------------------------------------------------------

    def arm(self, timeout_s: float = 2.0) -> HelloInfo:
        """Ask the MCU to unmute and wait for its consent; return what it said in HELLO.

        Raise ``HardwareNotReady`` with the reason when no consent comes within ``timeout_s``, or
        as soon as the MCU refuses (fault, incompatible protocol, a limit crossed)."""
        if self._thread is None:
            raise HardwareNotReady(f"the hardware monitor for {self.url} is not started")
        if self._port is None and self._port_problem:
            raise HardwareNotReady(self._port_problem)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._link.request_arm()
            notify = self._publish_locked()
        self._notify(notify, [])
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

    def claim(self, holder: str, timeout_s: float = 2.0, *, preempt: bool = False) -> ConsentClaim:
        """Arm the MCU for ``holder`` and return its claim once the MCU consents.

        With ``preempt`` (a session) another holder's claim (a prompt between sessions) is taken
        over: it is silent from its next block. Without it, ``HardwareNotReady`` names the holder.
        After a release the MCU is first heard muted (its MUTE done), so a report sent before that
        MUTE cannot pass for consent to this claim. ``HardwareNotReady`` as ``arm`` when the MCU
        does not consent; the MCU is then asked to mute. While the telemetry shows a limit
        crossed no ARM is sent: the MCU would refuse it, and its refusal would be recorded as a
        second fault of the same cause."""
        crossed = self.limit_crossed()
        if crossed != sl.FAULT_NONE:
            raise HardwareNotReady(f"the safety MCU would refuse: {sl.describe_fault(crossed)}")
        with self._cond:
            if self._holder is not None and not preempt:
                raise HardwareNotReady(f"the safety MCU is in use by {self._holder}")
            self._claim_token += 1
            self._holder, token = holder, self._claim_token
            waiting_for_mute = self._mute_pending
        log.info("safety MCU claimed by %s", holder)
        try:
            if waiting_for_mute:
                self._wait_muted(timeout_s)
            hello = self.arm(timeout_s)
        except BaseException:
            self._release(token)
            raise
        return ConsentClaim(self, holder, token, hello)

    def release(self, claim: ConsentClaim) -> None:
        """End ``claim``: the MCU is asked to mute, unless another claim has taken over."""
        self._release(claim.token)

    def _release(self, token: int) -> None:
        with self._cond:
            if self._holder is None or self._claim_token != token:
                return  # pre-empted: what the next holder armed is not ours to mute
            log.info("safety MCU released by %s", self._holder)
            self._holder = None
            self._mute_pending = True
            # under the same lock as the check: a claim cannot arm between the two
            self._link.request_mute(sl.FAULT_DEVICE_REQUEST)
            events = self._take_locked()
            notify = self._publish_locked()
        self._notify(notify, events)

    def _wait_muted(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until the MCU reports itself muted or disarmed: the
        release's MUTE has landed, so a later report of armed is an answer to this claim's ARM."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                telemetry = self._link.telemetry
                if telemetry is None or telemetry.muted or not telemetry.armed:
                    self._mute_pending = False
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._port is None:
                    return  # arming then says why there is no consent
                self._cond.wait(min(remaining, 0.05))

    def request_mute(self, reason: int = sl.FAULT_DEVICE_REQUEST) -> None:
        """Withdraw consent now and ask the MCU to mute (sent within one I/O iteration)."""
        with self._cond:
            self._link.request_mute(reason)
            events = self._take_locked()
            notify = self._publish_locked()
        self._notify(notify, events)

    def lower_limits(self, limits: HardLimits, timeout_s: float = 2.0) -> HardLimits:
        """Lower the MCU's limits (never raise: each is capped at what the MCU reports; 0 keeps a
        limit as it is). Enforced in software at once; return the limits the MCU then reports.

        Raise ``HardwareNotReady`` if the MCU refuses or does not answer within ``timeout_s``."""
        if self._thread is None:
            raise HardwareNotReady(f"the hardware monitor for {self.url} is not started")
        deadline = time.monotonic() + timeout_s
        answer: list[LinkEvent] = []

        def on_event(event: LinkEvent) -> None:
            if event.kind in ("limits_lowered", "limits_refused"):
                answer.append(event)

        with self._cond:
            self._event_listeners.append(on_event)
            self._link.request_lower_limits(limits)
        try:
            with self._cond:
                while True:
                    wanted = self._link.limits
                    hello = self._link.hello
                    if answer:
                        if answer[-1].kind == "limits_refused":
                            raise HardwareNotReady(f"the safety MCU {answer[-1].cause}")
                        if hello is not None:
                            return hello.limits
                    if hello is not None and wanted == hello.limits:
                        return hello.limits  # nothing to lower: already in force
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise HardwareNotReady(
                            f"the safety MCU on {self.url} did not answer LOWER_LIMITS "
                            f"within {timeout_s:.1f} s"
                        )
                    self._cond.wait(min(remaining, 0.05))
        finally:
            with self._cond:
                self._event_listeners.remove(on_event)

    # -- the MCU's bootloader (protocol v1.5, ``device/mcu_update.py``) ---------------------------

    def send_update(self, msg_type: int, body: bytes = b"") -> None:
        """Send one UPDATE_* frame within one I/O iteration (only to an MCU of minor >= 5)."""
        with self._cond:
            self._link.send_update(msg_type, body)

    def wait_update_status(self, timeout_s: float) -> sl.UpdateStatus | None:
        """The oldest UPDATE_STATUS not taken yet, waiting at most ``timeout_s`` for one."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                status = self._link.take_update_status()
                remaining = deadline - time.monotonic()
                if status is not None or remaining <= 0:
                    return status
                self._cond.wait(min(remaining, 0.05))

    # -- the I/O thread --------------------------------------------------------------------------

    def _open(self) -> serial.SerialBase:
        try:
            port = serial.serial_for_url(self.url, baudrate=BAUDRATE, timeout=IO_WAIT_S)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._port_problem = f"cannot open the safety MCU's serial port {self.url}: {_why(exc)}"
            raise HardwareNotReady(self._port_problem) from None
        port.reset_input_buffer()  # stale frames from before we listened mean nothing now
        self._port_problem = ""
        return port

    def _run(self) -> None:
        while not self._stopping.is_set():
            port = self._port
            if port is None:
                self._reconnect()
                continue
            try:
                self._serve(port)
            except (serial.SerialException, OSError) as exc:
                log.error("safety MCU link on %s failed: %s", self.url, exc)
                with self._cond:
                    self._link.link_lost(f"serial port {self.url} failed: {_why(exc)}")
                    events = self._take_locked()
                    notify = self._publish_locked()
                    self._cond.notify_all()
                self._notify(notify, events)
                with contextlib.suppress(serial.SerialException, OSError):
                    port.close()
                self._port = None

    def _serve(self, port: serial.SerialBase) -> None:
        """Pump bytes both ways until stopped; raise when the port fails."""
        while not self._stopping.is_set():
            data = port.read(max(1, _waiting(port)))  # wakes on the first byte, or IO_WAIT_S
            waiting = _waiting(port)
            if waiting:
                data += port.read(waiting)
            now = self._clock()
            with self._cond:
                for event in self._decoder.feed(data):
                    self._link.receive(event, now)
                self._link.tick(now)
                panel = self.panel
                if panel is not None:
                    self._show_panel_light(panel)
                frames = self._link.outgoing(now)
                events = self._take_locked()
                notify = self._publish_locked()
                presses = self._link.take_buttons()
                button_listeners = list(self._button_listeners) if presses else []
                self._cond.notify_all()
            for frame in frames:
                port.write(frame)
            self._notify(notify, events)
            for press in presses:
                log.info("button %s (%s press)", press.name, "long" if press.long else "short")
                for button_listener in button_listeners:
                    _call(button_listener, press)
                if panel is not None:
                    _call(panel.on_press, press)
            if panel is not None:
                for link_event in events:
                    _call(panel.on_event, link_event)
        if self._flush_on_exit:
            with self._cond:
                frames = self._link.outgoing(self._clock())
            for frame in frames:
                port.write(frame)
            port.flush()

    def _show_panel_light(self, panel: ControlPanel) -> None:
        try:
            light = panel.light(self._link.consent, self._link.attenuation_db < 0)
            if light is not None:
                self._link.set_light(light)
        except Exception:  # the panel's bug must not take the safety link down
            log.exception("control panel %r failed to give its light", panel)

    def _reconnect(self) -> None:
        if self._stopping.wait(self.reconnect_interval_s):
            return
        try:
            port = self._open()
        except HardwareNotReady:
            return
        self._decoder = sl.FrameDecoder(synced=False)
        self._port = port
        self.reconnects += 1
        log.info("safety MCU port %s is back; asking for HELLO", self.url)

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

    def _take_locked(self) -> list[LinkEvent]:
        """Take the link's new events and hand them to ``events`` with the readings, limits and
        board of this moment. Under the lock, before consent is published: whoever sees consent
        withdrawn can be sure its event is already queued for the store."""
        events = self._link.take_events()
        if not events or self._events is None:
            return events
        hello = self._link.last_hello  # kept when the link is lost: the board it was
        board = f"{hello.board_id} fw {hello.firmware_version}" if hello is not None else ""
        readings = readings_from_telemetry(self._link.telemetry)
        limits = limits_record(self._link.last_limits)
        for event in events:
            code = event.code
            if event.kind == "link_down" and not self._consent:
                # Nothing was consented (published consent is still the one before this
                # change): a drop between sessions mutes nothing, no fault code applies, and
                # the record is a routine hand-over (common/routine_events.py).
                code = sl.FAULT_NONE
            try:
                self._events.event(
                    event.kind,
                    event.cause,
                    code=code,
                    readings=readings,
                    limits=limits,
                    attenuation_db=self._link.attenuation_db,
                    hardware_board=board,
                )
            except Exception:
                log.exception("safety event %s could not be recorded", event.kind)
        return events

    def _notify(
        self, notify: tuple[bool, str, list[ConsentListener]] | None, events: list[LinkEvent]
    ) -> None:
        if notify is not None:
            consent, reason, listeners = notify
            for listener in listeners:
                # The copy was taken under the lock; one removed since (a session that has
                # ended) must not hear of a change that is no longer its own.
                with self._cond:
                    registered = listener in self._listeners
                if registered:
                    _call(listener, consent, reason)
        attenuation, warning = self._link.attenuation_db, self._link.warning
        if abs(attenuation - self._attenuation_db) >= 0.05 or warning != self._warning:
            self._attenuation_db, self._warning = attenuation, warning
            with self._cond:
                warning_listeners = list(self._warning_listeners)
            for warning_listener in warning_listeners:
                _call(warning_listener, attenuation, warning)
        if not events:
            return
        with self._cond:
            event_listeners = list(self._event_listeners)
        for event in events:
            # a release's own MUTE is a routine hand-over, not worth a warning in the journal
            own_mute = event.kind == "consent_withdrawn" and event.code == sl.FAULT_DEVICE_REQUEST
            warn = event.kind in ("fault", "consent_withdrawn") and not own_mute
            level = logging.WARNING if warn else logging.INFO
            log.log(level, "safety event %s: %s", event.kind, event.cause)
            for event_listener in event_listeners:
                _call(event_listener, event)


def _waiting(port: serial.SerialBase) -> int:
    """Bytes ready to read (every pyserial transport has ``in_waiting``; the stubs' base lacks it)."""
    return int(getattr(port, "in_waiting", 0))


def _call(listener: Callable[..., None], *args: object) -> None:
    try:
        listener(*args)
    except Exception:
        log.exception("listener %r failed", listener)


class WarningAttenuator:
    """A block processor (``play(..., processors=[...])``) that follows ``attenuation_db()``
    smoothly: the gain moves at most ``ramp_db_per_s`` per second, per sample, never jumps.

    ``attenuation_db`` is a callable (usually ``lambda: monitor.attenuation_db``) read once per
    block; it MUST NOT block."""

    def __init__(
        self, attenuation_db: Callable[[], float], sample_rate: int, ramp_db_per_s: float = 20.0
    ) -> None:
        if ramp_db_per_s <= 0:
            raise ValueError("ramp_db_per_s must be > 0")
        self._source = attenuation_db
        self._rate = sample_rate
        self._step_db = ramp_db_per_s / sample_rate
        self.current_db = 0.0

    def __call__(self, block: NDArray[np.float32]) -> NDArray[np.float32]:
        target = min(0.0, self._source())
        frames = len(block)
        if frames == 0:
            return block
        if target == self.current_db == 0.0:
            return block
        steps = np.arange(1, frames + 1, dtype=np.float64) * self._step_db
        if target < self.current_db:
            db = np.maximum(self.current_db - steps, target)
        else:
            db = np.minimum(self.current_db + steps, target)
        self.current_db = float(db[-1])
        gains = np.power(10.0, db / 20.0)
        return (block * gains[:, None]).astype(np.float32)


def _why(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return "no such device"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EBUSY:
        return "device busy"
    return str(exc) or type(exc).__name__
