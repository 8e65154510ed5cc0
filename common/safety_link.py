"""The device side of the safety-MCU link as a pure state machine: no I/O, no threads, no clock.

Long on purpose: one state machine, whose every way to consent and out of it is read together
(the values it deals in are ``safety_link_types.py``).

The caller (``resonera.device.hwmonitor``) feeds it decoded events with ``receive(event, now)``,
calls ``tick(now)`` regularly, and writes whatever ``outgoing(now)`` returns. ``now`` is a float in
seconds from any monotonic clock the caller owns, so tests drive every timeout without sleeping.

The one output that matters is ``consent``: the device may play only while it is true. Contract:

- No consent until a HELLO with protocol major ``PROTOCOL_MAJOR`` arrived (another major: never,
  ``reason`` says which versions disagree, and no ARM is ever sent).
- Consent needs the device's intent (``request_arm()``) and then a STATE or TELEMETRY, received
  after that request, showing the MCU armed and not muted.
- Consent is withdrawn, with ``reason`` set, on: a FAULT; telemetry over any limit (the MCU's, or
  a lower one the device asked for); the MCU reporting its mute line active; a burst of garbled
  frames (``crc_burst_count`` within ``crc_burst_window_s``; one stray bad frame is counted, not
  fatal); a frame that passes its CRC but breaks the protocol (the peer is wrong, not the line);
  no TELEMETRY for ``silence_timeout_s`` (100 ms: two telemetry periods); an unexpected HELLO (the
  MCU restarted, so it is muted and has forgotten any lowered limit). Withdrawal is latched:
  consent returns only after ``request_arm()`` and a fresh armed report. When consent is withdrawn
  while the MCU is armed, a MUTE is queued so the MCU mutes too (defence in depth, docs/safety.md §7).
- Warnings: a reading within its ``WarningPolicy`` margin of a limit is not a fault; it sets
  ``warning`` and ``attenuation_db`` (0 at the margin, down to ``max_attenuation_db`` at the limit)
  so the player can ramp the level down smoothly. Consent is not affected.
- Limits: ``request_lower_limits`` asks the MCU to lower its limits (LOWER_LIMITS, answered with
  LIMITS). The device enforces the lower of what it asked and what the MCU reports, at once, and
  asks again after a restart. It never asks for more than the MCU reported.
- ``outgoing`` yields HEARTBEAT every ``heartbeat_period_s`` (always, so the MCU can arm),
  HELLO_REQUEST while no HELLO is known, and the queued ARM/MUTE/LOWER_LIMITS (once HELLO is known).
- Buttons and the status light (v1.2): BUTTON presses queue for ``take_buttons()`` (they never
  touch consent); ``set_light`` sends LIGHT once HELLO is known, and again after a restart of the
  MCU and every ``LIGHT_RESEND_S`` until LIGHT_SHOWN says the light shows it (to an MCU of an
  older minor, the nearest state it knows: ``serial_link.light_for_peer``); playing and
  attenuated only while there is consent (so it never overrides the MCU's own fault light).
- What the board is (v1.4): ``board`` is what the BOARD after the current HELLO said (whether it
  requires headphones and has a switch to see them); None until it is said, always None with an
  MCU older than v1.4, and forgotten with the HELLO (a lost link, a restart).
- Everything that happens is also an entry of ``take_events()`` (a ``LinkEvent``), for the log,
  the store and the outbox.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from resonera.common import serial_link as sl
from resonera.common.safety_link_types import (
    EVENT_KINDS,
    LIMIT_FIELDS,
    HardLimits,
    HelloInfo,
    LinkEvent,
    LinkEventKind,
    LinkState,
    WarningPolicy,
)

__all__ = [
    "CRC_BURST_COUNT",
    "CRC_BURST_WINDOW_S",
    "EVENT_KINDS",
    "HEARTBEAT_PERIOD_S",
    "HELLO_ANSWER_WINDOW_S",
    "HELLO_REQUEST_PERIOD_S",
    "LIGHT_RESEND_S",
    "LIMIT_FIELDS",
    "MAX_BUTTONS",
    "MAX_EVENTS",
    "MAX_UPDATE_STATUSES",
    "SILENCE_TIMEOUT_S",
    "HardLimits",
    "HelloInfo",
    "LinkEvent",
    "LinkEventKind",
    "LinkState",
    "SafetyLink",
    "WarningPolicy",
]


#: No TELEMETRY for this long withdraws consent (the MCU sends it every 50 ms).
SILENCE_TIMEOUT_S = 0.1
HEARTBEAT_PERIOD_S = 0.1
HELLO_REQUEST_PERIOD_S = 0.25
#: This many garbled frames within the window withdraw consent.
CRC_BURST_COUNT = 3
CRC_BURST_WINDOW_S = 1.0
#: A HELLO this soon after our HELLO_REQUEST is its answer; later ones mean the MCU restarted.
HELLO_ANSWER_WINDOW_S = 1.0
#: LIGHT is sent again this often until LIGHT_SHOWN confirms it (a lost frame, an older MCU).
LIGHT_RESEND_S = 1.0
#: Button presses kept for ``take_buttons`` (a caller that does not take them loses the oldest).
MAX_BUTTONS = 32
#: Message types from 0x10 up travel device → MCU; the device never counts them as the MCU's.
_FIRST_DEVICE_TYPE = 0x10


#: Events kept for ``take_events`` (a caller that never takes them loses the oldest, never memory).
MAX_EVENTS = 256
#: UPDATE_STATUS answers kept for ``take_update_status`` (v1.5; an updater reads them at once).
MAX_UPDATE_STATUSES = 64


class SafetyLink:
    """Device-side link state machine. Not thread-safe: the caller serialises calls."""

    def __init__(
        self,
        *,
        silence_timeout_s: float = SILENCE_TIMEOUT_S,
        heartbeat_period_s: float = HEARTBEAT_PERIOD_S,
        hello_request_period_s: float = HELLO_REQUEST_PERIOD_S,
        crc_burst_count: int = CRC_BURST_COUNT,
        crc_burst_window_s: float = CRC_BURST_WINDOW_S,
        warning_policy: WarningPolicy | None = None,
    ) -> None:
        if crc_burst_count < 1:
            raise ValueError("crc_burst_count must be ≥ 1")
        self.silence_timeout_s = silence_timeout_s
        self.heartbeat_period_s = heartbeat_period_s
        self.hello_request_period_s = hello_request_period_s
        self.crc_burst_count = crc_burst_count
        self.crc_burst_window_s = crc_burst_window_s
        self.warning_policy = warning_policy if warning_policy is not None else WarningPolicy()
        self.hello: HelloInfo | None = None
        #: What the BOARD that followed ``hello`` said (v1.4); None until said, or from older MCUs.
        self.board: sl.BoardInfo | None = None
        self.telemetry: sl.Telemetry | None = None
        #: Count of FAULT frames received, and the last one as (code, text).
        self.faults_seen = 0
        self.last_fault: tuple[int, str] | None = None
        #: Count of garbled frames received.
        self.errors_seen = 0
        #: Text of the active warnings ("" when none) and the attenuation they ask for (≤ 0 dB).
        self.warning = ""
        self.attenuation_db = 0.0
        self._warning_fields: set[str] = set()
        self._desired_limits: HardLimits | None = None
        self._incompatible: str | None = None
        self._last_frame: float | None = None
        self._last_telemetry: float | None = None
        #: When our unanswered HELLO_REQUESTs went out (each HELLO answers the oldest one).
        self._hello_requests: deque[float] = deque(maxlen=16)
        #: The last HELLO ever received (kept when the link is lost, for event records).
        self.last_hello: HelloInfo | None = None
        self._error_times: deque[float] = deque(maxlen=crc_burst_count)
        self._intent = False
        self._mute_reason = "arm not requested yet"
        self._problem: str | None = None
        self._problem_code = sl.FAULT_NONE
        self._fresh_armed = False
        self._mcu_armed = False
        self._pending: list[tuple[int, bytes]] = []
        self._seq = 0
        self._next_heartbeat: float | None = None
        self._next_hello_request: float | None = None
        self._events: deque[LinkEvent] = deque(maxlen=MAX_EVENTS)
        self._consent_was = False
        #: What the MCU says its status light shows (``sl.LIGHT_*``; None: not heard yet).
        self.light_shown: int | None = None
        #: Presses the MCU numbered but we never got (lost to line noise).
        self.buttons_lost = 0
        self._light_wanted: int | None = None
        self._light_next: float | None = None
        self._buttons: deque[sl.ButtonPress] = deque(maxlen=MAX_BUTTONS)
        self._last_press: int | None = None
        self._update_statuses: deque[sl.UpdateStatus] = deque(maxlen=MAX_UPDATE_STATUSES)

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
    def reason_code(self) -> int:
        """The fault code behind ``problem`` (``FAULT_NONE`` when none applies)."""
        return self._problem_code if self._problem is not None else sl.FAULT_NONE

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

    @property
    def limits(self) -> HardLimits | None:
        """The ceiling for the software chain: the MCU's limits, lowered by what the device asked."""
        if self.hello is None:
            return None
        if self._desired_limits is None:
            return self.hello.limits
        return self.hello.limits.lowered_to(self._desired_limits)

    @property
    def last_limits(self) -> HardLimits | None:
        """``limits`` as of the last HELLO, kept when the link is lost (for event records)."""
        hello = self.last_hello
        if hello is None:
            return None
        if self._desired_limits is None:
            return hello.limits
        return hello.limits.lowered_to(self._desired_limits)

    def take_buttons(self) -> list[sl.ButtonPress]:
        """Button presses since the last call, oldest first."""
        presses = list(self._buttons)
        self._buttons.clear()
        return presses

    def send_update(self, msg_type: int, body: bytes = b"") -> None:
        """Queue one bootloader frame (v1.5: UPDATE_*, ``device/mcu_update.py``) for the next
        ``outgoing``. The caller knows the MCU's minor; the link itself never sends these."""
        self._pending.append((msg_type, body))

    def take_update_status(self) -> sl.UpdateStatus | None:
        """The oldest UPDATE_STATUS not taken yet (v1.5), or None."""
        return self._update_statuses.popleft() if self._update_statuses else None

    def take_events(self) -> list[LinkEvent]:
        """Events since the last call, oldest first."""
        events = list(self._events)
        self._events.clear()
        return events

    # -- what the device asks --------------------------------------------------------------------

    def request_arm(self) -> None:
        """Ask to play: clears a latched withdrawal and queues ARM (sent once HELLO is known)."""
        self._intent = True
        self._problem = None
        self._fresh_armed = False
        self._error_times.clear()
        if (sl.MSG_ARM, b"") not in self._pending:
            self._pending.append((sl.MSG_ARM, b""))

    def request_mute(self, reason: int = sl.FAULT_DEVICE_REQUEST) -> None:
        """Stop playing: withdraw consent at once and queue MUTE with ``reason`` (a fault code)."""
        self._intent = False
        self._fresh_armed = False
        self._mute_reason = f"muted on request: {sl.describe_fault(reason)}"
        self._pending = [p for p in self._pending if p[0] != sl.MSG_ARM]
        self._pending.append((sl.MSG_MUTE, sl.pack_mute(reason)))
        self._note_consent(self._mute_reason, reason)

    def request_lower_limits(self, limits: HardLimits) -> None:
        """Lower the limits to ``limits`` (never above what the MCU reports; 0 = leave as is).

        Enforced in software at once; sent as LOWER_LIMITS once HELLO is known, and again after
        every restart of the MCU."""
        self._desired_limits = (
            limits if self._desired_limits is None else self._desired_limits.lowered_to(limits)
        )
        self._queue_lower_limits()

    def set_light(self, state: int) -> None:
        """Show ``state`` (``sl.LIGHT_*``) on the status light: sent at once if it changed."""
        if state not in sl.LIGHT_NAMES:
            raise ValueError(f"no such light state {state}")
        if state != self._light_wanted:
            self._light_wanted = state
            self._light_next = None

    @property
    def light_wanted(self) -> int | None:
        return self._light_wanted

    def link_lost(self, reason: str) -> None:
        """The transport failed (port closed, I/O error): withdraw and forget the HELLO."""
        had_hello = self.hello is not None
        self._withdraw(reason, sl.FAULT_LINK_GARBLED)
        self._forget_hello()
        if had_hello:
            self._event("link_down", reason, sl.FAULT_LINK_GARBLED)
        self._note_consent(reason, sl.FAULT_LINK_GARBLED)

    # -- events and time -------------------------------------------------------------------------

    def receive(self, event: sl.Frame | sl.FrameError, now: float) -> None:
        if isinstance(event, sl.FrameError):
            self._garbled(event.reason, now)
        elif event.type < _FIRST_DEVICE_TYPE:
            # (Our own kind of message coming back, a loopback with TX wired to RX, is not the MCU.)
            self._last_frame = now
            try:
                self._handle(event, now)
            except sl.LinkProtocolError as exc:
                # The CRC was right, so this is what the MCU meant to send: its bug, not noise.
                self.errors_seen += 1
                self._withdraw(f"link garbled: {exc}", sl.FAULT_LINK_GARBLED)
        self._note_consent(self.reason, self.reason_code)

    def tick(self, now: float) -> None:
        """Check the telemetry timeout. Call at least every few milliseconds."""
        if self.hello is None or self._last_telemetry is None:
            return
        if now - self._last_telemetry > self.silence_timeout_s:
            cause = (
                f"no TELEMETRY from the safety MCU for over {self.silence_timeout_s * 1000:.0f} ms"
            )
            self._withdraw(cause, sl.FAULT_LINK_GARBLED)
            self._forget_hello()  # it may have rebooted: ask who it is again
            self._event("link_down", cause, sl.FAULT_LINK_GARBLED)
            self._note_consent(cause, sl.FAULT_LINK_GARBLED)

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
            self._hello_requests.append(now)
        ready = self.hello is not None
        kept: list[tuple[int, bytes]] = []
        for msg_type, body in self._pending:
            if msg_type in (sl.MSG_ARM, sl.MSG_LOWER_LIMITS) and not ready:
                kept.append((msg_type, body))
            else:
                frames.append(self._frame(msg_type, body))
        self._pending = kept
        wanted = self._light_wanted
        due = self._light_next is None or now >= self._light_next
        # Never claim "playing" without consent: the MCU's own fault light stays until we have it.
        sounding = wanted in (sl.LIGHT_PLAYING, sl.LIGHT_ATTENUATED)
        allowed = self.consent or not sounding
        hello = self.hello
        if hello is not None and wanted is not None:
            # an MCU of an older minor knows fewer states: it is sent the nearest it knows
            wanted = sl.light_for_peer(wanted, hello.protocol_minor)
        if ready and wanted is not None and self.light_shown != wanted and due and allowed:
            frames.append(self._frame(sl.MSG_LIGHT, sl.pack_light(wanted)))
            self._light_next = now + LIGHT_RESEND_S
        return frames

    # -- internals -------------------------------------------------------------------------------

    def _handle(self, frame: sl.Frame, now: float) -> None:
        if frame.type == sl.MSG_HELLO:
            self._on_hello(sl.unpack_hello(frame.body), now)
        elif frame.type == sl.MSG_TELEMETRY:
            telemetry = sl.unpack_telemetry(frame.body)
            if self.hello is not None:
                self._last_telemetry = now
            self._on_telemetry(telemetry)
        elif frame.type == sl.MSG_STATE:
            state = sl.unpack_state(frame.body)
            self._on_mcu_state(state.muted, state.armed, state.reason)
        elif frame.type == sl.MSG_FAULT:
            code, text = sl.unpack_fault(frame.body)
            self.faults_seen += 1
            self.last_fault = (code, text)
            cause = f"MCU fault: {text or sl.describe_fault(code)}"
            self._event("fault", cause, code)
            self._withdraw(cause, code)
        elif frame.type == sl.MSG_LIMITS:
            self._on_limits(*sl.unpack_limits(frame.body))
        elif frame.type == sl.MSG_BUTTON:
            self._on_button(sl.unpack_button(frame.body))
        elif frame.type == sl.MSG_LIGHT_SHOWN:
            self.light_shown = sl.unpack_light("LIGHT_SHOWN", frame.body)
        elif frame.type == sl.MSG_UPDATE_STATUS:
            self._update_statuses.append(sl.unpack_update_status(frame.body))
        elif frame.type == sl.MSG_BOARD:
            board = sl.unpack_board_info(frame.body)
            if self.hello is not None:  # before HELLO: the HELLO we ask for brings another
                self.board = board
        # Other types: a newer minor version may add messages; the frame was valid, ignore it.

    def _garbled(self, why: str, now: float) -> None:
        self.errors_seen += 1
        times = self._error_times
        times.append(now)
        while times and now - times[0] > self.crc_burst_window_s:
            times.popleft()
        if len(times) >= self.crc_burst_count:
            self._withdraw(
                f"link garbled: {len(times)} bad frames within "
                f"{self.crc_burst_window_s:.1f} s (last: {why})",
                sl.FAULT_LINK_GARBLED,
            )

    def _on_hello(self, hello: sl.Hello, now: float) -> None:
        if hello.protocol_major != sl.PROTOCOL_MAJOR:
            cause = (
                f"firmware speaks protocol v{hello.protocol_major}, "
                f"this device speaks v{sl.PROTOCOL_MAJOR}"
            )
            if self._incompatible is None:
                self._event("incompatible", cause)
            self._incompatible = cause
            self._forget_hello()
            self._pending = [p for p in self._pending if p[0] != sl.MSG_ARM]
            return
        info = HelloInfo.from_message(hello)
        requests = self._hello_requests
        while requests and now - requests[0] > HELLO_ANSWER_WINDOW_S:
            requests.popleft()  # never answered (lost): no excuse for a later HELLO
        answer = bool(requests)
        if answer:
            requests.popleft()
        if self.hello is not None and not answer:
            cause = f"safety MCU {info.board_id} restarted (unexpected HELLO): it is muted"
            self._event("mcu_restarted", cause, sl.FAULT_POWER_UP)
            self._withdraw(cause, sl.FAULT_POWER_UP)
            self._mcu_armed = False
            self._restarted()
        elif self.hello is None:
            self._event(
                "link_up",
                f"safety MCU {info.board_id} firmware {info.firmware_version} "
                f"protocol v{info.protocol_major}.{info.protocol_minor}",
            )
        self._incompatible = None
        self.board = None  # what this HELLO's board is comes next, in its BOARD (from v1.4)
        self.hello = self.last_hello = info
        self._last_telemetry = now
        self._queue_lower_limits()

    def _restarted(self) -> None:
        """The MCU forgot what its light shows and restarted its press numbers."""
        self.light_shown = None
        self._light_next = None
        self._last_press = None

    def _on_button(self, press: sl.ButtonPress) -> None:
        last = self._last_press
        if last is not None:
            self.buttons_lost += (press.number - last - 1) & 0xFF
        self._last_press = press.number
        self._buttons.append(press)

    def _on_limits(self, status: int, limits: sl.Limits) -> None:
        if self.hello is None:
            return
        reported = HardLimits.from_wire(limits)
        self.hello = self.last_hello = replace(self.hello, limits=reported)
        text = sl.LIMITS_STATUS_TEXT.get(status, f"unknown status {status}")
        summary = ", ".join(f"{v:g}" for v in reported.values())
        kind: LinkEventKind = "limits_lowered" if status == sl.LIMITS_ACCEPTED else "limits_refused"
        self._event(kind, f"LOWER_LIMITS {text}; limits in force: {summary}")

    def _queue_lower_limits(self) -> None:
        desired = self._desired_limits
        if desired is None:
            return
        self._pending = [p for p in self._pending if p[0] != sl.MSG_LOWER_LIMITS]
        if self.hello is not None:
            target = self.hello.limits.lowered_to(desired)
            if target == self.hello.limits:
                return  # already in force
            body = sl.pack_lower_limits(target.to_wire())
        else:
            body = sl.pack_lower_limits(desired.to_wire())  # recomputed when HELLO arrives
        self._pending.append((sl.MSG_LOWER_LIMITS, body))

    def _on_telemetry(self, telemetry: sl.Telemetry) -> None:
        self.telemetry = telemetry
        limits = self.limits
        if limits is not None:
            wire = limits.to_wire()
            code, detail = sl.check_limits(telemetry, wire)
            self._update_warnings(telemetry, limits)
            if code != sl.FAULT_NONE:
                self._withdraw(f"telemetry over limit: {sl.describe_fault(code)} ({detail})", code)
                return
        reason = telemetry.fault if telemetry.fault != sl.FAULT_NONE else sl.FAULT_POWER_UP
        self._on_mcu_state(telemetry.muted, telemetry.armed, reason)

    def _update_warnings(self, telemetry: sl.Telemetry, limits: HardLimits) -> None:
        policy = self.warning_policy
        active: set[str] = set()
        texts: list[str] = []
        depth = 0.0
        for (name, _limit_field, label, unit, _code), limit in zip(
            sl.LIMIT_CHECKS, limits.values(), strict=True
        ):
            if limit <= 0:
                continue
            margin = policy.margin(name, limit)
            if margin <= 0:
                continue
            start = limit - margin
            value = abs(getattr(telemetry, name))
            was = name in self._warning_fields
            if value > start or (was and value > start - policy.hysteresis * margin):
                active.add(name)
                texts.append(f"{label} {value:.1f} {unit} nearing limit {limit:.1f} {unit}")
                depth = max(depth, min(1.0, max(0.0, (value - start) / margin)))
        text = "; ".join(texts)
        if active - self._warning_fields:  # a new reading nears its limit
            self._event("warning", text)
        elif self._warning_fields and not active:
            self._event("warning_cleared", f"readings back within margins (was: {self.warning})")
        self._warning_fields = active
        self.warning = text
        self.attenuation_db = -policy.max_attenuation_db * depth

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
            self._problem_code = code
        self._fresh_armed = False
        if self._mcu_armed and not any(p[0] == sl.MSG_MUTE for p in self._pending):
            self._pending = [p for p in self._pending if p[0] != sl.MSG_ARM]
            self._pending.append((sl.MSG_MUTE, sl.pack_mute(code)))
            self._mcu_armed = False

    def _forget_hello(self) -> None:
        self.hello = None
        self.board = None
        self._restarted()  # it may have: when it is back, say again what to show
        self._last_telemetry = None
        self._warning_fields = set()
        self.warning = ""
        self.attenuation_db = 0.0

    def _note_consent(self, cause: str, code: int) -> None:
        consent = self.consent
        if consent == self._consent_was:
            return
        self._consent_was = consent
        if consent:
            self._event("consent_granted", "the safety MCU reports armed and unmuted")
        else:
            self._event("consent_withdrawn", cause, code)

    def _event(self, kind: LinkEventKind, cause: str, code: int = sl.FAULT_NONE) -> None:
        self._events.append(LinkEvent(kind, cause, code))

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
