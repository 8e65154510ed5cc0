"""The device side of the safety-MCU link as a pure state machine: no I/O, no threads, no clock.

The caller (``resonera.device.hwmonitor``) feeds it decoded events with ``receive(event, now)``,
calls ``tick(now)`` regularly, and writes whatever ``outgoing(now)`` returns. ``now`` is a float in
seconds from any monotonic clock the caller owns, so tests drive every timeout without sleeping.

The one output that matters is ``consent``: the device may play only while it is true. Contract:

- No consent until a HELLO with protocol major ``PROTOCOL_MAJOR`` arrived (another major: never,
  and ``reason`` says which versions disagree).
- Consent needs the device's intent (``request_arm()``) and then a STATE or TELEMETRY, received
  after that request, showing the MCU armed and not muted.
- Consent is withdrawn, with ``reason`` set, on FAULT, on telemetry over any HELLO limit, on a
  garbled frame, on the MCU reporting itself muted, and when no valid frame arrived for
  ``silence_timeout_s``. Withdrawal is latched: consent returns only after ``request_arm()`` again
  and a fresh armed report. When consent is withdrawn while the MCU is armed, a MUTE is queued so
  the MCU mutes too (defence in depth, architecture.md §3).
- ``outgoing`` yields HEARTBEAT every ``heartbeat_period_s`` (always, so the MCU can arm),
  HELLO_REQUEST while no HELLO is known, and the queued ARM/MUTE requests (ARM once HELLO is known).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from resonera.common import serial_link as sl

SILENCE_TIMEOUT_S = 0.3
HEARTBEAT_PERIOD_S = 0.1
HELLO_REQUEST_PERIOD_S = 0.25
#: Message types from 0x10 up travel device → MCU; the device never counts them as the MCU's.
_FIRST_DEVICE_TYPE = 0x10


class LinkState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    HELLO_RECEIVED = "hello_received"
    ARMED = "armed"


@dataclass(frozen=True)
class HardLimits:
    """The MCU's hard limits. ``max_ear_spl_db == 0`` means the board has no ear-cup microphone."""

    max_output_vrms: float
    max_amp_temp_c: float
    max_supply_current_a: float
    max_dc_offset_mv: float
    max_ear_spl_db: float


@dataclass(frozen=True)
class HelloInfo:
    """What the MCU said about itself in HELLO."""

    protocol_major: int
    protocol_minor: int
    firmware_version: str
    board_id: str
    limits: HardLimits

    @classmethod
    def from_message(cls, hello: sl.Hello) -> HelloInfo:
        return cls(
            hello.protocol_major,
            hello.protocol_minor,
            hello.firmware_version,
            hello.board_id,
            HardLimits(*hello.limits.values()),
        )


class SafetyLink:
    """Device-side link state machine. Not thread-safe: the caller serialises calls."""

    def __init__(
        self,
        *,
        silence_timeout_s: float = SILENCE_TIMEOUT_S,
        heartbeat_period_s: float = HEARTBEAT_PERIOD_S,
        hello_request_period_s: float = HELLO_REQUEST_PERIOD_S,
    ) -> None:
        self.silence_timeout_s = silence_timeout_s
        self.heartbeat_period_s = heartbeat_period_s
        self.hello_request_period_s = hello_request_period_s
        self.hello: HelloInfo | None = None
        self.telemetry: sl.Telemetry | None = None
        #: Count of FAULT frames received, and the last one as (code, text).
        self.faults_seen = 0
        self.last_fault: tuple[int, str] | None = None
        #: Count of garbled frames received.
        self.errors_seen = 0
        self._limits: sl.Limits | None = None
        self._incompatible: str | None = None
        self._last_frame: float | None = None
        self._intent = False
        self._mute_reason = "arm not requested yet"
        self._problem: str | None = None
        self._fresh_armed = False
        self._mcu_armed = False
        self._pending: list[tuple[int, bytes]] = []
        self._seq = 0
        self._next_heartbeat: float | None = None
        self._next_hello_request: float | None = None

    # -- what the device reads -------------------------------------------------------------------

    @property
    def consent(self) -> bool:
        return (
            self._incompatible is None
            and self._problem is None
            and self.hello is not None
            and self._intent
            and self._fresh_armed
        )

    @property
    def reason(self) -> str:
        """Why there is no consent ("" when there is)."""
        if self._incompatible is not None:
            return self._incompatible
        if self._problem is not None:
            return self._problem
        if self.hello is None:
            return "waiting for HELLO from the safety MCU"
        if not self._intent:
            return self._mute_reason
        if not self._fresh_armed:
            return "waiting for the safety MCU to report armed"
        return ""

    @property
    def state(self) -> LinkState:
        if self.hello is None:
            return LinkState.DISCONNECTED
        return LinkState.ARMED if self.consent else LinkState.HELLO_RECEIVED

    @property
    def problem(self) -> str | None:
        """The latched reason consent was withdrawn, until ``request_arm()`` clears it."""
        return self._problem

    @property
    def incompatible(self) -> bool:
        return self._incompatible is not None

    @property
    def heard(self) -> bool:
        """True once any valid MCU → device frame arrived."""
        return self._last_frame is not None

    # -- what the device asks --------------------------------------------------------------------

    def request_arm(self) -> None:
        """Ask to play: clears a latched withdrawal and queues ARM (sent once HELLO is known)."""
        self._intent = True
        self._problem = None
        self._fresh_armed = False
        if (sl.MSG_ARM, b"") not in self._pending:
            self._pending.append((sl.MSG_ARM, b""))

    def request_mute(self, reason: int = sl.FAULT_DEVICE_REQUEST) -> None:
        """Stop playing: withdraw consent at once and queue MUTE with ``reason`` (a fault code)."""
        self._intent = False
        self._fresh_armed = False
        self._mute_reason = f"muted on request: {sl.describe_fault(reason)}"
        self._pending = [p for p in self._pending if p[0] != sl.MSG_ARM]
        self._pending.append((sl.MSG_MUTE, sl.pack_mute(reason)))

    def link_lost(self, reason: str) -> None:
        """The transport failed (port closed, I/O error): withdraw and forget the HELLO."""
        self._withdraw(reason, sl.FAULT_LINK_GARBLED)
        self.hello = None

    # -- events and time -------------------------------------------------------------------------

    def receive(self, event: sl.Frame | sl.FrameError, now: float) -> None:
        if isinstance(event, sl.FrameError):
            self.errors_seen += 1
            self._withdraw(f"link garbled: {event.reason}", sl.FAULT_LINK_GARBLED)
            return
        if event.type >= _FIRST_DEVICE_TYPE:
            # Our own kind of message coming back (a loopback, TX wired to RX) is not the MCU.
            return
        self._last_frame = now
        try:
            self._handle(event)
        except sl.LinkProtocolError as exc:
            self.errors_seen += 1
            self._withdraw(f"link garbled: {exc}", sl.FAULT_LINK_GARBLED)

    def tick(self, now: float) -> None:
        """Check the silence timeout. Call at least every few tens of milliseconds."""
        if self._last_frame is None or self.hello is None:
            return
        if now - self._last_frame > self.silence_timeout_s:
            self._withdraw(
                f"no frames from the safety MCU for over {self.silence_timeout_s:.1f} s",
                sl.FAULT_LINK_GARBLED,
            )
            self.hello = None  # it may have rebooted: ask who it is again

    def outgoing(self, now: float) -> list[bytes]:
        """Frames to write now. Call at least every ``heartbeat_period_s / 2``."""
        frames: list[bytes] = []
        if self._next_heartbeat is None or now >= self._next_heartbeat:
            frames.append(self._frame(sl.MSG_HEARTBEAT, sl.pack_heartbeat(int(now * 1000))))
            self._next_heartbeat = _next_time(self._next_heartbeat, now, self.heartbeat_period_s)
        asking = self.hello is None and self._incompatible is None
        if asking and (self._next_hello_request is None or now >= self._next_hello_request):
            frames.append(self._frame(sl.MSG_HELLO_REQUEST, b""))
            self._next_hello_request = now + self.hello_request_period_s
        ready = self.hello is not None
        kept: list[tuple[int, bytes]] = []
        for msg_type, body in self._pending:
            if msg_type == sl.MSG_ARM and not ready:
                kept.append((msg_type, body))
            else:
                frames.append(self._frame(msg_type, body))
        self._pending = kept
        return frames

    # -- internals -------------------------------------------------------------------------------

    def _handle(self, frame: sl.Frame) -> None:
        if frame.type == sl.MSG_HELLO:
            self._on_hello(sl.unpack_hello(frame.body))
        elif frame.type == sl.MSG_TELEMETRY:
            self._on_telemetry(sl.unpack_telemetry(frame.body))
        elif frame.type == sl.MSG_STATE:
            state = sl.unpack_state(frame.body)
            self._on_mcu_state(state.muted, state.armed, state.reason)
        elif frame.type == sl.MSG_FAULT:
            code, text = sl.unpack_fault(frame.body)
            self.faults_seen += 1
            self.last_fault = (code, text)
            self._withdraw(f"MCU fault: {text or sl.describe_fault(code)}", code)
        # Other types: a newer minor version may add messages; the frame was valid, ignore it.

    def _on_hello(self, hello: sl.Hello) -> None:
        if hello.protocol_major != sl.PROTOCOL_MAJOR:
            self._incompatible = (
                f"firmware speaks protocol v{hello.protocol_major}, "
                f"this device speaks v{sl.PROTOCOL_MAJOR}"
            )
            self.hello = None
            return
        self._incompatible = None
        self.hello = HelloInfo.from_message(hello)
        self._limits = hello.limits

    def _on_telemetry(self, telemetry: sl.Telemetry) -> None:
        self.telemetry = telemetry
        if self.hello is not None and self._limits is not None:
            code, detail = sl.check_limits(telemetry, self._limits)
            if code != sl.FAULT_NONE:
                self._withdraw(
                    f"telemetry over limit: {sl.describe_fault(code)} ({detail})",
                    code,
                )
                return
        reason = telemetry.fault if telemetry.fault != sl.FAULT_NONE else sl.FAULT_POWER_UP
        self._on_mcu_state(telemetry.muted, telemetry.armed, reason)

    def _on_mcu_state(self, muted: bool, armed: bool, reason: int) -> None:
        self._mcu_armed = armed and not muted
        if self._mcu_armed:
            if self.hello is not None and self._intent and self._problem is None:
                self._fresh_armed = True
        elif self._fresh_armed:
            self._withdraw(f"MCU muted: {sl.describe_fault(reason)}", reason)
        else:
            self._fresh_armed = False

    def _withdraw(self, reason: str, code: int) -> None:
        """Latch ``reason`` (the first one wins until ``request_arm``); ask the MCU to mute too."""
        if self._problem is None:
            self._problem = reason
        self._fresh_armed = False
        if self._mcu_armed and not any(p[0] == sl.MSG_MUTE for p in self._pending):
            self._pending = [p for p in self._pending if p[0] != sl.MSG_ARM]
            self._pending.append((sl.MSG_MUTE, sl.pack_mute(code)))
            self._mcu_armed = False

    def _frame(self, msg_type: int, body: bytes) -> bytes:
        frame = sl.encode_frame(msg_type, self._seq, body)
        self._seq = (self._seq + 1) & 0xFF
        return frame


def _next_time(previous: float | None, now: float, period: float) -> float:
    """Keep a steady cadence, but never schedule in the past (no burst after a stall)."""
    if previous is None:
        return now + period
    following = previous + period
    return following if following > now else now + period
