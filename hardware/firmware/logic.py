"""The safety MCU's logic: plain Python that runs on MicroPython and, unchanged, in the simulator.

All hardware access goes through ``Board`` (sensors, mute line, a millisecond clock, the UART), so
the same ``Controller`` drives a real RP2040 (``main.py``) and the simulator
(``resonera.hardware.sim``), and tests drive it with a fake board and a clock they control.

Contract (hardware/PROTOCOL.md, docs/architecture.md §2.6):
- At power-up the amplifier is muted; the controller sends HELLO, BOARD (v1.4: whether it requires
  headphones and has a switch to see them) and STATE.
- TELEMETRY every ``telemetry_period_ms``; HELLO, BOARD and STATE again on HELLO_REQUEST.
- While unmuted it mutes itself (mute line FIRST, then FAULT and STATE) when a reading crosses a
  limit, headphones are unplugged (if required), the output clips persistently, or no HEARTBEAT
  arrived for ``heartbeat_timeout_ms``. The fault is latched.
- It unmutes ONLY on ARM, and only when the state is clean: no limit crossed, heartbeat fresh,
  headphones present if required. A refused ARM is answered with FAULT and STATE (still muted).
- MUTE from the device mutes at once and is answered with STATE.
- LOWER_LIMITS lowers limits until the next power-up, never raises one; it is answered with LIMITS
  (accepted, or refused and unchanged). HELLO reports the limits in force.
- Frames it cannot parse are counted and ignored: the device's heartbeat is what keeps it unmuted,
  so a garbled link ends in a mute anyway.
- Buttons (v1.2) are debounced here and sent as BUTTON (short on release, long once held for
  ``long_press_ms``); one button at a time. The status light shows what LIGHT asks (answered with
  LIGHT_SHOWN), except that a fault mute turns it to fault at once, on the MCU's own authority.
- Each light state has a colour and a blink rhythm (``LIGHT_PATTERNS``, v1.3 added refused, blocked
  and shut_out); ``light_colour`` says what the LED shows at a moment, for ``main.py`` to drive.
"""

try:
    from resonera.common import serial_link as sl
    from resonera.hardware.firmware.bootloader import Bootloader  # annotations only
    from resonera.hardware.firmware.config import BoardConfig
except ImportError:  # on the MCU: flat files next to main.py (main.py builds any Bootloader)
    import serial_link as sl  # type: ignore[import-not-found,no-redef]
    from config import BoardConfig  # type: ignore[import-not-found,no-redef]

#: The first protocol minor with BOARD; the simulator playing an older firmware sends none.
BOARD_SINCE_MINOR = 4
#: The update frames (v1.5), answered only with a bootloader; to an older firmware they are unknown.
_UPDATE_FRAMES = (
    sl.MSG_UPDATE_BEGIN,
    sl.MSG_UPDATE_CHUNK,
    sl.MSG_UPDATE_COMMIT,
    sl.MSG_UPDATE_ABORT,
    sl.MSG_UPDATE_CONFIRM,
)

# Indexes into the tuple ``Board.read_sensors()`` returns.
AMP_TEMP_C = 0
SUPPLY_CURRENT_A = 1
OUTPUT_VRMS = 2
DC_OFFSET_MV = 3
EAR_SPL_DB = 4
CLIP = 5
HEADPHONES = 6

# The status light: every state is a colour AND a rhythm of its own, so a person who cannot tell
# the colours apart still tells the states apart (hardware/PROTOCOL.md, "Light states"). A pattern
# is a cycle of (milliseconds, (red, green, blue)) segments, each channel 0 to 255.
_OFF = (0, 0, 0)
_DIM_CYAN = (0, 40, 40)
_GREEN = (0, 255, 0)
_YELLOW = (255, 200, 0)
_RED = (255, 0, 0)
_BLUE = (0, 0, 255)
_MAGENTA = (255, 0, 255)
_AMBER = (255, 100, 0)
_WHITE = (255, 255, 255)
_FLASH_MS = 200  # a short flash, and the dark between two of them

LIGHT_PATTERNS = {
    sl.LIGHT_IDLE: ((1000, _DIM_CYAN),),  # steady, dim
    sl.LIGHT_PLAYING: ((1000, _GREEN),),  # steady, bright
    sl.LIGHT_ATTENUATED: ((1800, _YELLOW), (200, _OFF)),  # bright, a short dark dip every 2 s
    sl.LIGHT_FAULT: ((125, _RED), (125, _OFF)),  # fast blink, 4 a second
    sl.LIGHT_SYNCING: ((1000, _BLUE), (1000, _OFF)),  # slow even blink
    sl.LIGHT_DOSE_REACHED: ((_FLASH_MS, _MAGENTA), (1800, _OFF)),  # one short flash every 2 s
    sl.LIGHT_REFUSED: (  # two short flashes every 2 s
        (_FLASH_MS, _AMBER), (_FLASH_MS, _OFF), (_FLASH_MS, _AMBER), (1400, _OFF),
    ),
    sl.LIGHT_BLOCKED: (  # three short flashes every 2 s
        (_FLASH_MS, _WHITE), (_FLASH_MS, _OFF), (_FLASH_MS, _WHITE), (_FLASH_MS, _OFF),
        (_FLASH_MS, _WHITE), (1000, _OFF),
    ),
    sl.LIGHT_SHUT_OUT: ((600, _RED), (200, _OFF), (600, _BLUE), (600, _OFF)),  # two long, 2 s
}  # fmt: skip


def light_colour(state: int, elapsed_ms: int) -> "tuple[int, int, int]":
    """What the LED shows ``elapsed_ms`` after it started showing ``state``: (red, green, blue),
    0 to 255 each. A state without a pattern (none reaches here: LIGHT is checked) shows fault."""
    pattern = LIGHT_PATTERNS.get(state, LIGHT_PATTERNS[sl.LIGHT_FAULT])
    period = 0
    for duration, _colour in pattern:
        period += duration
    t = elapsed_ms % period
    for duration, colour in pattern:
        if t < duration:
            return colour
        t -= duration
    return pattern[-1][1]  # not reached: t < period


class Board:
    """Hardware access the controller needs. Subclasses implement every method."""

    def read_sensors(self) -> "tuple[float, float, float, float, float, bool, bool]":
        """(amp temp °C, supply current A, output Vrms, DC offset mV, ear SPL dB or 0,
        clip detected, headphones plugged in)."""
        raise NotImplementedError

    def set_mute(self, muted: bool) -> None:
        """Drive the amplifier's mute line. MUST take effect before it returns."""
        raise NotImplementedError

    def ticks_ms(self) -> int:
        """Milliseconds since an arbitrary start, never wrapping (unwrap ``time.ticks_ms``)."""
        raise NotImplementedError

    def serial_read(self) -> bytes:
        """Whatever bytes have arrived, without blocking; ``b""`` if none."""
        raise NotImplementedError

    def serial_write(self, data: bytes) -> None:
        """Send ``data`` (always one complete frame)."""
        raise NotImplementedError

    def read_buttons(self) -> int:
        """The raw (bouncing) button levels: bit ``n - 1`` set while button ``n`` (``sl.BUTTON_*``)
        is down. A board without buttons keeps this default."""
        return 0

    def set_light(self, state: int) -> None:
        """Show ``state`` (``sl.LIGHT_*``) on the status light. A board without one keeps this."""

    def reset_mcu(self) -> None:
        """Restart the MCU now (the boot record decides what runs next). Only boards with a
        bootloader are asked; on the RP2040 this is ``machine.reset()`` and never returns."""
        raise NotImplementedError


class Controller:
    """The MCU main loop, one ``step()`` at a time. Call ``start()`` once, then ``step()`` often
    (every millisecond or so: the timing rules are only as fine as the step rate)."""

    def __init__(
        self,
        board: Board,
        config: "BoardConfig | None" = None,
        protocol_minor: int = sl.PROTOCOL_MINOR,
        bootloader: "Bootloader | None" = None,
    ) -> None:
        self.board = board
        #: Answers the update frames (v1.5); None: this firmware ignores them, as v1.4 did.
        self.bootloader = bootloader if protocol_minor >= sl.UPDATE_SINCE_MINOR else None
        #: The minor version HELLO reports, and which light states LIGHT may ask for. A real board
        #: speaks ``PROTOCOL_MINOR``; the simulator passes an older one to play an older firmware.
        self.protocol_minor = protocol_minor
        self._light_states = sl.light_states_known(protocol_minor)
        self.config = config if config is not None else BoardConfig()
        c = self.config
        #: What HELLO says runs: the booted image's version, or the configuration's without one.
        self.firmware_version = (
            self.bootloader.running.version if self.bootloader is not None else c.firmware_version
        )
        self._last_update_frame = 0
        self._started_at = 0
        board_limits = sl.Limits(
            c.max_output_vrms,
            c.max_amp_temp_c,
            c.max_supply_current_a,
            c.max_dc_offset_mv,
            c.max_ear_spl_db,
        )
        # The limits in force, as the wire carries them (float32), so that the device asking for
        # exactly what HELLO reported is never mistaken for a raise. LOWER_LIMITS may lower them
        # until the next power-up; nothing raises them above the board's configuration.
        self.limits = sl.unpack_lower_limits(sl.pack_lower_limits(board_limits))
        self.muted = True
        self.armed = False
        #: Latched fault code (``sl.FAULT_NONE`` when clean); cleared only by an accepted ARM.
        self.fault = sl.FAULT_NONE
        #: Why the output is muted (a fault or mute-reason code), ``sl.FAULT_NONE`` when playing.
        self.reason = sl.FAULT_POWER_UP
        self.frames_rejected = 0
        #: Why the last frame was rejected ("" if none was): a real board has nobody to tell, the
        #: simulator shows it in its status.
        self.last_rejection = ""
        self._decoder = sl.FrameDecoder(synced=False)
        self._seq = 0
        self._last_heartbeat = -1
        self._next_telemetry = 0
        self._clip_in_period = False
        self._clip_periods = 0
        self._readings = (0.0, 0.0, 0.0, 0.0, 0.0, False, False)
        #: What the status light shows (``sl.LIGHT_*``).
        self.light = sl.LIGHT_IDLE
        #: BUTTON frames sent since power-up (the press number on the wire wraps at 256).
        self.presses = 0
        self._raw_buttons = 0
        self._raw_since = 0
        self._stable_buttons = 0
        self._held = 0  # the button being tracked (0: none)
        self._held_since = 0
        self._long_sent = False
        self._debounce_ms = self.config.button_debounce_ms

    # -- main loop -------------------------------------------------------------------------------

    def start(self) -> None:
        self.board.set_mute(True)
        self._readings = self.board.read_sensors()
        self._next_telemetry = self.board.ticks_ms()
        self._raw_since = self._next_telemetry
        self._started_at = self._next_telemetry
        self.board.set_light(self.light)
        self.send_hello()
        self._send_state()

    def step(self) -> None:
        now = self.board.ticks_ms()
        # Sensors before frames: an ARM is judged on readings of this step, never older ones.
        self._readings = self.board.read_sensors()
        if self._readings[CLIP]:
            self._clip_in_period = True
        self._scan_buttons(now)
        data = self.board.serial_read()
        if data:
            for event in self._decoder.feed(data):
                if isinstance(event, sl.Frame):
                    self._handle(event, now)
                else:
                    self.frames_rejected += 1
        telemetry_due = now >= self._next_telemetry
        if telemetry_due:
            self._clip_periods = self._clip_periods + 1 if self._clip_in_period else 0
            self._clip_in_period = False
        if not self.muted:
            code, text = self.active_fault(now)
            if code != sl.FAULT_NONE:
                self._fault_mute(code, text)
        if self.bootloader is not None:
            self._update_timeouts(now)
        if telemetry_due:
            self._send(sl.MSG_TELEMETRY, sl.pack_telemetry(self.telemetry()))
            period = self.config.telemetry_period_ms
            self._next_telemetry += period
            if self._next_telemetry <= now:  # fell behind: do not send a burst to catch up
                self._next_telemetry = now + period

    # -- decisions -------------------------------------------------------------------------------

    def telemetry(self) -> "sl.Telemetry":
        r = self._readings
        flags = 0
        if self.muted:
            flags |= sl.FLAG_MUTED
        if self.armed:
            flags |= sl.FLAG_ARMED
        if r[CLIP]:
            flags |= sl.FLAG_CLIP
        if r[HEADPHONES]:
            flags |= sl.FLAG_HEADPHONES
        return sl.Telemetry(
            r[AMP_TEMP_C], r[SUPPLY_CURRENT_A], r[OUTPUT_VRMS], r[DC_OFFSET_MV], r[EAR_SPL_DB],
            flags, self.fault,
        )  # fmt: skip

    def active_fault(self, now: int) -> "tuple[int, str]":
        """The first reason the output must not play right now, or ``(FAULT_NONE, "")``."""
        code, text = sl.check_limits(self.telemetry(), self.limits)
        if code != sl.FAULT_NONE:
            return code, sl.describe_fault(code) + " (" + text + ")"
        if self.config.require_headphones and not self._readings[HEADPHONES]:
            return sl.FAULT_HEADPHONES_UNPLUGGED, sl.describe_fault(sl.FAULT_HEADPHONES_UNPLUGGED)
        if self._clip_periods >= self.config.clip_storm_periods:
            return sl.FAULT_CLIP_STORM, sl.describe_fault(sl.FAULT_CLIP_STORM)
        timeout = self.config.heartbeat_timeout_ms
        if self._last_heartbeat < 0 or now - self._last_heartbeat > timeout:
            text = f"{sl.describe_fault(sl.FAULT_HEARTBEAT_LOST)}: none for over {timeout} ms"
            return sl.FAULT_HEARTBEAT_LOST, text
        return sl.FAULT_NONE, ""

    def _handle(self, frame: "sl.Frame", now: int) -> None:
        try:
            if frame.type == sl.MSG_HEARTBEAT:
                sl.unpack_heartbeat(frame.body)
                self._last_heartbeat = now
            elif frame.type == sl.MSG_ARM:
                sl.check_empty("ARM", frame.body)
                self._arm(now)
            elif frame.type == sl.MSG_MUTE:
                self._mute(sl.unpack_mute(frame.body))
            elif frame.type == sl.MSG_LOWER_LIMITS:
                self._lower_limits(sl.unpack_lower_limits(frame.body))
            elif frame.type == sl.MSG_LIGHT:
                self._light_asked(sl.unpack_light("LIGHT", frame.body))
            elif frame.type == sl.MSG_HELLO_REQUEST:
                sl.check_empty("HELLO_REQUEST", frame.body)
                self.send_hello()
                self._send_state()
            elif frame.type in _UPDATE_FRAMES and self.protocol_minor >= sl.UPDATE_SINCE_MINOR:
                self._update(frame, now)
            else:
                self.frames_rejected += 1
                self.last_rejection = "frame of unknown type " + str(frame.type)
        except sl.LinkProtocolError as exc:
            self.frames_rejected += 1
            self.last_rejection = str(exc)

    def _arm(self, now: int) -> None:
        code, text = self.active_fault(now)
        if self.bootloader is not None and self.bootloader.updating:
            code, text = sl.FAULT_UPDATING, "updating"
        if code != sl.FAULT_NONE:
            self.fault = code
            self.reason = code
            self._send(sl.MSG_FAULT, sl.pack_fault(code, "arm refused: " + text))
            self._send_state()
            return
        self.fault = sl.FAULT_NONE
        self.reason = sl.FAULT_NONE
        self.muted = False
        self.armed = True
        self.board.set_mute(False)
        self._send_state()

    def _lower_limits(self, requested: "sl.Limits") -> None:
        status, _text = sl.lowering_refusal(self.limits, requested)
        if status == sl.LIMITS_ACCEPTED:
            self.limits = requested
        self._send(sl.MSG_LIMITS, sl.pack_limits(status, self.limits))

    def _mute(self, reason: int) -> None:
        self.board.set_mute(True)
        self.muted = True
        self.armed = False
        self.reason = reason
        self._send_state()

    def _fault_mute(self, code: int, text: str) -> None:
        self.board.set_mute(True)  # the mute line first: messages can wait, sound cannot
        self.muted = True
        self.armed = False
        self.fault = code
        self.reason = code
        self._send(sl.MSG_FAULT, sl.pack_fault(code, text))
        self._send_state()
        self._show_light(sl.LIGHT_FAULT)

    # -- firmware update (v1.5) -------------------------------------------------------------------

    def _update(self, frame: "sl.Frame", now: int) -> None:
        bootloader = self.bootloader
        if bootloader is None:  # a board that cannot check a signature takes no update
            refusal = sl.UpdateStatus(
                sl.UPDATE_REFUSED_SIGNATURE, 0, "this board has no bootloader"
            )
            self._send(sl.MSG_UPDATE_STATUS, sl.pack_update_status(refusal))
            return
        was_updating = bootloader.updating
        sound_allowed = not self.muted or self.armed
        status, reboot = bootloader.handle(frame.type, frame.body, sound_allowed)
        self._last_update_frame = now
        if bootloader.updating and not was_updating:
            # The transfer holds the output muted until it ends: the mute line is already set
            # (BEGIN is refused while sound is allowed); say why it stays so.
            self.board.set_mute(True)
            self.reason = sl.FAULT_UPDATING
            self._send_state()
        self._send(sl.MSG_UPDATE_STATUS, sl.pack_update_status(status))
        if was_updating and not bootloader.updating and not reboot:
            self._transfer_ended()
        if reboot:
            self.board.reset_mcu()

    def _update_timeouts(self, now: int) -> None:
        bootloader = self.bootloader
        assert bootloader is not None
        c = self.config
        if bootloader.updating and now - self._last_update_frame > c.update_idle_timeout_ms:
            # The device is gone mid-transfer: a board that could never arm again is worse.
            why = "no update frame for " + str(c.update_idle_timeout_ms) + " ms"
            self._send(sl.MSG_UPDATE_STATUS, sl.pack_update_status(bootloader.drop(why)))
            self._transfer_ended()
        elif bootloader.trial and now - self._started_at > c.update_confirm_timeout_ms:
            # Not confirmed in time: this boot was its last, so the reset boots the old image.
            why = "not confirmed within " + str(c.update_confirm_timeout_ms) + " ms"
            status = sl.UpdateStatus(sl.UPDATE_ROLLING_BACK, 0, why)
            self._send(sl.MSG_UPDATE_STATUS, sl.pack_update_status(status))
            self.board.set_mute(True)
            self.board.reset_mcu()

    def _transfer_ended(self) -> None:
        if self.reason == sl.FAULT_UPDATING:
            self.reason = sl.FAULT_DEVICE_REQUEST
            self._send_state()

    # -- buttons and the light --------------------------------------------------------------------

    def _scan_buttons(self, now: int) -> None:
        raw = self.board.read_buttons()
        if raw != self._raw_buttons:
            self._raw_buttons = raw
            self._raw_since = now  # a bounce restarts the wait
        elif raw != self._stable_buttons and now - self._raw_since >= self._debounce_ms:
            self._buttons_changed(raw)
        held = self._held
        if held and not self._long_sent and now - self._held_since >= self.config.long_press_ms:
            self._long_sent = True  # sent while still held: the person hears the result at once
            self._send_press(held, sl.PRESS_LONG)

    def _buttons_changed(self, levels: int) -> None:
        pressed = levels & ~self._stable_buttons
        self._stable_buttons = levels
        held = self._held
        if held:
            if not levels & (1 << (held - 1)):
                self._held = 0
                if not self._long_sent:
                    self._send_press(held, sl.PRESS_SHORT)
            return  # another button pressed meanwhile is ignored, even after this release
        for button in sl.BUTTON_NAMES:
            if pressed & (1 << (button - 1)):
                self._held = button
                self._held_since = self._raw_since  # from the first edge, not the debounce end
                self._long_sent = False
                return

    def _send_press(self, button: int, kind: int) -> None:
        self._send(sl.MSG_BUTTON, sl.pack_button(sl.ButtonPress(button, kind, self.presses)))
        self.presses += 1

    def _light_asked(self, state: int) -> None:
        if state >= self._light_states:  # only when playing an older firmware (see __init__)
            raise sl.LinkProtocolError(
                "LIGHT light state is " + str(state) + ", not one of 0 to "
                + str(self._light_states - 1) + " (protocol v1." + str(self.protocol_minor) + ")"
            )  # fmt: skip
        self._show_light(state)

    def _show_light(self, state: int) -> None:
        self.light = state
        self.board.set_light(state)
        self._send(sl.MSG_LIGHT_SHOWN, sl.pack_light(state))

    # -- sending ---------------------------------------------------------------------------------

    def send_hello(self) -> None:
        """HELLO, then (from v1.4) BOARD: the device learns what the board requires with who it is."""
        hello = sl.Hello(
            self.firmware_version,
            self.config.board_id,
            self.limits,
            sl.PROTOCOL_MAJOR,
            self.protocol_minor,
        )
        self._send(sl.MSG_HELLO, sl.pack_hello(hello))
        if self.protocol_minor >= BOARD_SINCE_MINOR:
            self._send(sl.MSG_BOARD, sl.pack_board_info(self.board_info()))

    def board_info(self) -> "sl.BoardInfo":
        """What BOARD says of this board, from its configuration."""
        return sl.BoardInfo.of(
            requires_headphones=self.config.require_headphones,
            headphone_switch=self.config.headphones_pin >= 0,
        )

    def _send_state(self) -> None:
        self._send(sl.MSG_STATE, sl.pack_state(sl.State(self.muted, self.armed, self.reason)))

    def _send(self, msg_type: int, body: bytes) -> None:
        frame = sl.encode_frame(msg_type, self._seq, body)
        self._seq = (self._seq + 1) & 0xFF
        self.board.serial_write(frame)
