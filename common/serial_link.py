"""The serial link between the device and the safety MCU: a sans-IO codec (hardware/PROTOCOL.md).

Long on purpose: the MCU carries the whole protocol as this one file (``hardware/firmware/main.py``).

This module is shared by the device, the firmware and the simulator, and is copied as-is onto the
MCU as ``serial_link.py``. It therefore MUST stay MicroPython-compatible: no enum, no dataclasses,
no pydantic, no ``typing`` at run time, only ``struct`` from the standard library. Annotations are
fine: MicroPython's compiler discards them and CPython 3.11 evaluates them without ``typing``.
f-strings are used without ``=`` and with simple format specs, which MicroPython >= 1.17 supports.

COBS and CRC-16 are written by hand on purpose: MicroPython ships neither (no ``binascii.crc_hqx``
on most ports, no ``cobs`` package), and two tiny audited functions are safer than vendoring a
library into the firmware. Both are checked against published test vectors in the tests and in
``hardware/PROTOCOL.md``.

Wire format (see ``hardware/PROTOCOL.md``): each frame is ``COBS(type u8, seq u8, body, crc16 BE)``
followed by one 0x00 delimiter. The CRC is CRC-16/CCITT-FALSE over type, seq and body.

The codec does no I/O: ``encode_frame`` returns bytes; ``FrameDecoder.feed`` takes bytes and returns
events (``Frame`` or ``FrameError``). It never raises on hostile input and its buffer is bounded.
"""

import struct

try:
    from resonera.common.errors import ProtocolError as _ErrorBase
except ImportError:  # on the MCU there is no resonera package
    _ErrorBase = ValueError  # type: ignore[misc,assignment]


class LinkProtocolError(_ErrorBase):
    """A message body breaks the protocol (wrong length, bad field). The peer's fault, not ours."""


PROTOCOL_MAJOR = 1
#: Minor 1 added LIMITS and LOWER_LIMITS; a minor-0 peer ignores them (valid frames of unknown type).
#: Minor 2 added BUTTON, LIGHT_SHOWN and LIGHT (buttons and the status light).
#: Minor 3 added the light states refused, blocked and shut_out (6 to 8), which a minor-2 MCU
#: refuses as a protocol error: the device sends them only through ``light_for_peer``.
#: Minor 4 added BOARD (after every HELLO): whether the board requires headphones and can see them.
#: Minor 5 added the bootloader frames (UPDATE_*): the device updates the MCU's firmware.
PROTOCOL_MINOR = 5

#: Longest COBS-encoded frame, without its 0x00 delimiter. Longer input is discarded.
MAX_ENCODED = 256
#: Longest body: type + seq + body + crc (4 bytes overhead) stays under 254 bytes decoded, so COBS
#: adds exactly one byte and the encoded frame fits ``MAX_ENCODED``.
MAX_BODY = 250
#: Longest string field (firmware version, board id, fault text) in bytes of UTF-8.
MAX_TEXT = 64

# Message types. MCU → device in 0x01..0x0F, device → MCU in 0x10..0x1F.
MSG_HELLO = 0x01
MSG_TELEMETRY = 0x02
MSG_FAULT = 0x03
MSG_STATE = 0x04
MSG_LIMITS = 0x05
MSG_BUTTON = 0x06
MSG_LIGHT_SHOWN = 0x07
MSG_BOARD = 0x08
MSG_HEARTBEAT = 0x10
MSG_ARM = 0x11
MSG_MUTE = 0x12
MSG_HELLO_REQUEST = 0x13
MSG_LOWER_LIMITS = 0x14
MSG_LIGHT = 0x15

MESSAGE_NAMES = {
    MSG_HELLO: "HELLO",
    MSG_TELEMETRY: "TELEMETRY",
    MSG_FAULT: "FAULT",
    MSG_STATE: "STATE",
    MSG_LIMITS: "LIMITS",
    MSG_BUTTON: "BUTTON",
    MSG_LIGHT_SHOWN: "LIGHT_SHOWN",
    MSG_BOARD: "BOARD",
    MSG_HEARTBEAT: "HEARTBEAT",
    MSG_ARM: "ARM",
    MSG_MUTE: "MUTE",
    MSG_HELLO_REQUEST: "HELLO_REQUEST",
    MSG_LOWER_LIMITS: "LOWER_LIMITS",
    MSG_LIGHT: "LIGHT",
}

# Fault and mute-reason codes: one code space for FAULT, TELEMETRY.fault, STATE.reason and MUTE.
FAULT_NONE = 0
FAULT_OVER_TEMPERATURE = 1
FAULT_OVER_CURRENT = 2
FAULT_DC_OFFSET = 3
FAULT_OVER_VOLTAGE = 4
FAULT_HEARTBEAT_LOST = 5
FAULT_HEADPHONES_UNPLUGGED = 6
FAULT_LINK_GARBLED = 7
FAULT_EAR_SPL = 8
FAULT_CLIP_STORM = 9
FAULT_DEVICE_REQUEST = 10
FAULT_POWER_UP = 11
FAULT_CALIBRATION = 12

FAULT_TEXT = {
    FAULT_NONE: "no fault",
    FAULT_OVER_TEMPERATURE: "amplifier over temperature",
    FAULT_OVER_CURRENT: "supply over current",
    FAULT_DC_OFFSET: "DC offset at output",
    FAULT_OVER_VOLTAGE: "output voltage over limit",
    FAULT_HEARTBEAT_LOST: "heartbeat lost",
    FAULT_HEADPHONES_UNPLUGGED: "headphones unplugged",
    FAULT_LINK_GARBLED: "link garbled",
    FAULT_EAR_SPL: "sound level at the ear over limit",
    FAULT_CLIP_STORM: "output clipping persistently",
    FAULT_DEVICE_REQUEST: "muted on the device's request",
    FAULT_POWER_UP: "muted at power-up, not armed yet",
    FAULT_CALIBRATION: "the ear-cup level disagrees with the calibration",
}


def describe_fault(code: int) -> str:
    """Human text for a fault or mute-reason code; unknown codes are named, never an error."""
    text = FAULT_TEXT.get(code)
    return text if text is not None else f"unknown fault code {code}"


# Telemetry flags (TELEMETRY.flags).
FLAG_MUTED = 0x01
FLAG_ARMED = 0x02
FLAG_CLIP = 0x04
FLAG_HEADPHONES = 0x08

#: The limits, declared once: (telemetry field, HELLO limit field, label, unit, fault code).
#: DC offset is compared by magnitude; a limit of 0 means "no such sensor" and is not checked.
LIMIT_CHECKS = (
    ("output_vrms", "max_output_vrms", "output voltage", "Vrms", FAULT_OVER_VOLTAGE),
    ("amp_temp_c", "max_amp_temp_c", "amplifier temperature", "°C", FAULT_OVER_TEMPERATURE),
    ("supply_current_a", "max_supply_current_a", "supply current", "A", FAULT_OVER_CURRENT),
    ("dc_offset_mv", "max_dc_offset_mv", "DC offset", "mV", FAULT_DC_OFFSET),
    ("ear_spl_db", "max_ear_spl_db", "sound level at the ear", "dB SPL", FAULT_EAR_SPL),
)


def check_limits(telemetry: "Telemetry", limits: "Limits") -> "tuple[int, str]":
    """First limit ``telemetry`` exceeds, as ``(fault code, detail)``, else ``(FAULT_NONE, "")``.

    ``detail`` reads like "95.0 °C, limit 85.0 °C"; ``describe_fault(code)`` names the limit."""
    for field, limit_field, _label, unit, code in LIMIT_CHECKS:
        limit = getattr(limits, limit_field)
        if limit <= 0:
            continue
        value = getattr(telemetry, field)
        if abs(value) > limit:
            return code, f"{value:.1f} {unit}, limit {limit:.1f} {unit}"
    return FAULT_NONE, ""


# ---------------------------------------------------------------------------------------------
# CRC and COBS


def crc16_ccitt_false(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor.
    Check value: ``crc16_ccitt_false(b"123456789") == 0x29B1``."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result contains no 0x00 byte (delimiter not added)."""
    out = bytearray(b"\x00")
    code_index = 0
    code = 1
    for byte in data:
        if byte == 0:
            out[code_index] = code
            code_index = len(out)
            out.append(0)
            code = 1
        else:
            out.append(byte)
            code += 1
            if code == 0xFF:
                out[code_index] = code
                code_index = len(out)
                out.append(0)
                code = 1
    out[code_index] = code
    return bytes(out)


class CobsError(ValueError):
    """Input is not valid COBS."""


def cobs_decode(data: bytes) -> bytes:
    """Inverse of ``cobs_encode`` (input without delimiter); raise ``CobsError`` if malformed."""
    out = bytearray()
    index = 0
    length = len(data)
    while index < length:
        code = data[index]
        if code == 0:
            raise CobsError("zero byte inside a COBS frame")
        end = index + code
        if end > length:
            raise CobsError("COBS block runs past the end of the frame")
        chunk = data[index + 1 : end]
        if 0 in chunk:
            raise CobsError("zero byte inside a COBS frame")
        out.extend(chunk)
        index = end
        if code < 0xFF and index < length:
            out.append(0)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Frames


class Frame:
    """A frame whose COBS and CRC were valid. ``body`` is still to be unpacked by type."""

    def __init__(self, type: int, seq: int, body: bytes) -> None:
        self.type = type
        self.seq = seq
        self.body = body

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and (self.type, self.seq, self.body) == (
            other.type,
            other.seq,
            other.body,
        )

    def __hash__(self) -> int:
        return hash((self.type, self.seq, self.body))

    def __repr__(self) -> str:
        name = MESSAGE_NAMES.get(self.type, f"type 0x{self.type:02x}")
        return f"Frame({name}, seq={self.seq}, body={self.body!r})"


class FrameError:
    """Bytes between two delimiters that are not a valid frame. ``reason`` is for a person."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrameError) and self.reason == other.reason

    def __hash__(self) -> int:
        return hash(self.reason)

    def __repr__(self) -> str:
        return f"FrameError({self.reason!r})"


def encode_frame(type: int, seq: int, body: bytes = b"") -> bytes:
    """One complete frame on the wire, delimiter included. ``seq`` wraps at 256."""
    if not 0 <= type <= 0xFF:
        raise ValueError("frame type must fit in one byte")
    if len(body) > MAX_BODY:
        raise ValueError(f"frame body is {len(body)} bytes, at most {MAX_BODY} allowed")
    raw = bytes((type, seq & 0xFF)) + bytes(body)
    crc = crc16_ccitt_false(raw)
    return cobs_encode(raw + bytes((crc >> 8, crc & 0xFF))) + b"\x00"


class FrameDecoder:
    """Turn a byte stream into ``Frame``/``FrameError`` events. Never raises on input bytes.

    The buffer holds at most ``max_encoded`` bytes: a longer run without a delimiter yields one
    ``FrameError("frame too long")`` and the rest is discarded up to the next 0x00.

    With ``synced=False`` (a receiver joining a stream that is already running) the bytes before
    the first 0x00 are kept only if they form a valid frame; otherwise they are dropped silently,
    because they are the tail of a frame sent before we listened, not a fault of the link.
    """

    def __init__(self, max_encoded: int = MAX_ENCODED, synced: bool = True) -> None:
        self.max_encoded = max_encoded
        self._buffer = bytearray()
        self._discarding = False
        self._synced = synced

    @property
    def buffered(self) -> int:
        """Bytes waiting for their delimiter (always ``<= max_encoded``)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> "list[Frame | FrameError]":
        events: list[Frame | FrameError] = []
        data = bytes(data)
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                self._append(data[start:], events)
                return events
            self._append(data[start:end], events)
            self._end_of_frame(events)
            start = end + 1

    def _append(self, chunk: bytes, events: "list[Frame | FrameError]") -> None:
        if self._discarding or not chunk:
            return
        if len(self._buffer) + len(chunk) > self.max_encoded:
            self._buffer = bytearray()
            self._discarding = True
            if self._synced:
                events.append(FrameError("frame too long"))
            return
        self._buffer.extend(chunk)

    def _end_of_frame(self, events: "list[Frame | FrameError]") -> None:
        synced = self._synced
        self._synced = True
        if self._discarding:
            self._discarding = False
            return
        event = decode_frame(bytes(self._buffer))
        self._buffer = bytearray()
        if synced or isinstance(event, Frame):
            events.append(event)


def decode_frame(encoded: bytes) -> "Frame | FrameError":
    """Decode one frame's bytes (without the delimiter) into a ``Frame`` or a ``FrameError``."""
    if not encoded:
        return FrameError("empty frame")
    try:
        raw = cobs_decode(encoded)
    except CobsError:
        return FrameError("bad COBS encoding")
    if len(raw) < 4:
        return FrameError("frame too short")
    crc = (raw[-2] << 8) | raw[-1]
    if crc16_ccitt_false(raw[:-2]) != crc:
        return FrameError("bad CRC")
    return Frame(raw[0], raw[1], bytes(raw[2:-2]))


# ---------------------------------------------------------------------------------------------
# Message bodies (little-endian)

_HELLO_HEAD = "<BB"
_HELLO_LIMITS = "<5f"
_TELEMETRY = "<5fBB"
_STATE = "<BBB"
_HEARTBEAT = "<I"


def _check_length(name: str, body: bytes, expected: int) -> None:
    if len(body) != expected:
        raise LinkProtocolError(f"{name} body is {len(body)} bytes, expected {expected}")


def _pack_text(text: str) -> bytes:
    raw = text.encode("utf-8")[:MAX_TEXT]
    return bytes((len(raw),)) + raw


def _unpack_text(name: str, body: bytes, offset: int) -> "tuple[str, int]":
    if offset >= len(body):
        raise LinkProtocolError(f"{name} body ends before a text field")
    length = body[offset]
    end = offset + 1 + length
    if end > len(body):
        raise LinkProtocolError(f"{name} text field runs past the end of the body")
    try:
        return bytes(body[offset + 1 : end]).decode("utf-8"), end
    except UnicodeError:
        raise LinkProtocolError(f"{name} text field is not UTF-8") from None


class Limits:
    """The MCU's hard limits, as it reports them in HELLO. ``max_ear_spl_db == 0``: no sensor."""

    def __init__(
        self,
        max_output_vrms: float,
        max_amp_temp_c: float,
        max_supply_current_a: float,
        max_dc_offset_mv: float,
        max_ear_spl_db: float = 0.0,
    ) -> None:
        self.max_output_vrms = max_output_vrms
        self.max_amp_temp_c = max_amp_temp_c
        self.max_supply_current_a = max_supply_current_a
        self.max_dc_offset_mv = max_dc_offset_mv
        self.max_ear_spl_db = max_ear_spl_db

    def values(self) -> "tuple[float, float, float, float, float]":
        return (
            self.max_output_vrms,
            self.max_amp_temp_c,
            self.max_supply_current_a,
            self.max_dc_offset_mv,
            self.max_ear_spl_db,
        )


class Hello:
    """MCU → device at start and on HELLO_REQUEST."""

    def __init__(
        self,
        firmware_version: str,
        board_id: str,
        limits: Limits,
        protocol_major: int = PROTOCOL_MAJOR,
        protocol_minor: int = PROTOCOL_MINOR,
    ) -> None:
        self.protocol_major = protocol_major
        self.protocol_minor = protocol_minor
        self.firmware_version = firmware_version
        self.board_id = board_id
        self.limits = limits


def pack_hello(hello: Hello) -> bytes:
    return (
        struct.pack(_HELLO_HEAD, hello.protocol_major, hello.protocol_minor)
        + _pack_text(hello.firmware_version)
        + _pack_text(hello.board_id)
        + struct.pack(_HELLO_LIMITS, *hello.limits.values())
    )


def unpack_hello(body: bytes) -> Hello:
    """Parse a HELLO body. Only the major version decides compatibility; the caller checks it."""
    if len(body) < 2:
        raise LinkProtocolError(f"HELLO body is {len(body)} bytes, too short")
    major, minor = struct.unpack(_HELLO_HEAD, bytes(body[:2]))
    firmware, offset = _unpack_text("HELLO", body, 2)
    board, offset = _unpack_text("HELLO", body, offset)
    _check_length("HELLO limits", body[offset:], struct.calcsize(_HELLO_LIMITS))
    limits = Limits(*struct.unpack(_HELLO_LIMITS, bytes(body[offset:])))
    return Hello(firmware, board, limits, major, minor)


class Telemetry:
    """MCU → device every telemetry period (50 ms by default)."""

    def __init__(  # noqa: PLR0917 (the wire layout is positional)
        self,
        amp_temp_c: float,
        supply_current_a: float,
        output_vrms: float,
        dc_offset_mv: float,
        ear_spl_db: float,
        flags: int,
        fault: int,
    ) -> None:
        self.amp_temp_c = amp_temp_c
        self.supply_current_a = supply_current_a
        self.output_vrms = output_vrms
        self.dc_offset_mv = dc_offset_mv
        self.ear_spl_db = ear_spl_db
        self.flags = flags
        self.fault = fault

    @property
    def muted(self) -> bool:
        return bool(self.flags & FLAG_MUTED)

    @property
    def armed(self) -> bool:
        return bool(self.flags & FLAG_ARMED)

    @property
    def clip(self) -> bool:
        return bool(self.flags & FLAG_CLIP)

    @property
    def headphones(self) -> bool:
        return bool(self.flags & FLAG_HEADPHONES)


def pack_telemetry(t: Telemetry) -> bytes:
    return struct.pack(
        _TELEMETRY,
        t.amp_temp_c,
        t.supply_current_a,
        t.output_vrms,
        t.dc_offset_mv,
        t.ear_spl_db,
        t.flags & 0xFF,
        t.fault & 0xFF,
    )


def unpack_telemetry(body: bytes) -> Telemetry:
    _check_length("TELEMETRY", body, struct.calcsize(_TELEMETRY))
    return Telemetry(*struct.unpack(_TELEMETRY, bytes(body)))


def pack_fault(code: int, text: str = "") -> bytes:
    return bytes((code & 0xFF,)) + text.encode("utf-8")[: MAX_BODY - 1]


def unpack_fault(body: bytes) -> "tuple[int, str]":
    """``(code, text)``; undecodable text bytes are replaced, never an error (it is for a log)."""
    if len(body) < 1:
        raise LinkProtocolError("FAULT body is empty, expected a fault code")
    try:
        text = bytes(body[1:]).decode("utf-8")
    except UnicodeError:
        text = describe_fault(body[0])
    return body[0], text


class State:
    """MCU → device whenever the mute line changes (and at start)."""

    def __init__(self, muted: bool, armed: bool, reason: int) -> None:
        self.muted = muted
        self.armed = armed
        self.reason = reason


def pack_state(state: State) -> bytes:
    return struct.pack(_STATE, 1 if state.muted else 0, 1 if state.armed else 0, state.reason)


def unpack_state(body: bytes) -> State:
    _check_length("STATE", body, struct.calcsize(_STATE))
    muted, armed, reason = struct.unpack(_STATE, bytes(body))
    return State(bool(muted), bool(armed), reason)


def pack_heartbeat(ms: int) -> bytes:
    return struct.pack(_HEARTBEAT, ms & 0xFFFFFFFF)


def unpack_heartbeat(body: bytes) -> int:
    _check_length("HEARTBEAT", body, struct.calcsize(_HEARTBEAT))
    value: int = struct.unpack(_HEARTBEAT, bytes(body))[0]
    return value


def pack_mute(reason: int) -> bytes:
    return bytes((reason & 0xFF,))


def unpack_mute(body: bytes) -> int:
    _check_length("MUTE", body, 1)
    return body[0]


def check_empty(name: str, body: bytes) -> None:
    """ARM and HELLO_REQUEST carry no body."""
    _check_length(name, body, 0)


# ---------------------------------------------------------------------------------------------
# Lowering limits (protocol v1.1): the device may lower the MCU's limits, never raise them.

LIMITS_ACCEPTED = 0
LIMITS_REFUSED_RAISE = 1
LIMITS_REFUSED_INVALID = 2

LIMITS_STATUS_TEXT = {
    LIMITS_ACCEPTED: "accepted",
    LIMITS_REFUSED_RAISE: "refused: a limit would be raised",
    LIMITS_REFUSED_INVALID: "refused: a limit is not a usable number",
}

_LIMITS = "<B5f"
_LOWER_LIMITS = "<5f"


def pack_lower_limits(limits: Limits) -> bytes:
    return struct.pack(_LOWER_LIMITS, *limits.values())


def unpack_lower_limits(body: bytes) -> Limits:
    _check_length("LOWER_LIMITS", body, struct.calcsize(_LOWER_LIMITS))
    return Limits(*struct.unpack(_LOWER_LIMITS, bytes(body)))


def pack_limits(status: int, limits: Limits) -> bytes:
    """LIMITS, MCU → device: the answer to LOWER_LIMITS and the limits in force after it."""
    return struct.pack(_LIMITS, status & 0xFF, *limits.values())


def unpack_limits(body: bytes) -> "tuple[int, Limits]":
    _check_length("LIMITS", body, struct.calcsize(_LIMITS))
    values = struct.unpack(_LIMITS, bytes(body))
    return values[0], Limits(*values[1:])


def lowering_refusal(current: Limits, requested: Limits) -> "tuple[int, str]":
    """Whether ``requested`` may replace ``current``: ``(LIMITS_ACCEPTED, "")`` or a refusal.

    Every requested limit must be a finite number no higher than the current one. A limit of 0 means
    "no such sensor": it stays 0, and a fitted sensor's limit may not become 0 (that would switch
    the check off, which is raising it to infinity)."""
    new_values, old_values = requested.values(), current.values()
    for index in range(len(LIMIT_CHECKS)):
        new, old = new_values[index], old_values[index]
        name = LIMIT_CHECKS[index][2]
        if new - new != 0 or new < 0:  # NaN and ±inf: x - x is NaN (no math.isfinite on all ports)
            return LIMITS_REFUSED_INVALID, name + " is not a usable number"
        if old <= 0:
            if new != 0:
                return LIMITS_REFUSED_RAISE, name + " has no sensor on this board"
        elif new <= 0:
            return LIMITS_REFUSED_RAISE, name + " cannot be switched off"
        elif new > old:
            return LIMITS_REFUSED_RAISE, name + " would be raised"
    return LIMITS_ACCEPTED, ""


# ---------------------------------------------------------------------------------------------
# Buttons and the status light (protocol v1.2). A v1.1 peer ignores these frames: a device that
# gets no LIGHT_SHOWN knows the board shows nothing, and a board without buttons sends no BUTTON.

BUTTON_PLAY_PAUSE = 1
BUTTON_STOP = 2
BUTTON_VOLUME_UP = 3
BUTTON_VOLUME_DOWN = 4

BUTTON_NAMES = {
    BUTTON_PLAY_PAUSE: "play_pause",
    BUTTON_STOP: "stop",
    BUTTON_VOLUME_UP: "vol_up",
    BUTTON_VOLUME_DOWN: "vol_down",
}

PRESS_SHORT = 0
PRESS_LONG = 1

PRESS_NAMES = {PRESS_SHORT: "short", PRESS_LONG: "long"}

LIGHT_IDLE = 0
LIGHT_PLAYING = 1
LIGHT_ATTENUATED = 2
LIGHT_FAULT = 3
LIGHT_SYNCING = 4
LIGHT_DOSE_REACHED = 5
# Protocol v1.3: why a session cannot start or was stopped, shown until the person acts. A v1.2 MCU
# refuses these states (its table ends at 5): the device sends them only to an MCU of minor >= 3.
#: The clinician's settings stop this start: the day's sessions used, nothing assigned, a program refused.
LIGHT_REFUSED = 6
#: The device cannot play until something on it is fixed: storage full, its clock untrusted.
LIGHT_BLOCKED = 7
#: The server shut the device out: its certificate revoked or expired, its messages quarantined.
LIGHT_SHUT_OUT = 8

LIGHT_NAMES = {
    LIGHT_IDLE: "idle",
    LIGHT_PLAYING: "playing",
    LIGHT_ATTENUATED: "attenuated",
    LIGHT_FAULT: "fault",
    LIGHT_SYNCING: "syncing",
    LIGHT_DOSE_REACHED: "dose_reached",
    LIGHT_REFUSED: "refused",
    LIGHT_BLOCKED: "blocked",
    LIGHT_SHUT_OUT: "shut_out",
}

#: "one of 0 to 8", from the table: what an error about a light state says is allowed.
_LIGHT_RANGE = "one of " + str(min(LIGHT_NAMES)) + " to " + str(max(LIGHT_NAMES))

_BUTTON = "<BBB"


class ButtonPress:
    """MCU → device: a debounced press of ``button`` (``BUTTON_*``), ``kind`` ``PRESS_SHORT`` or
    ``PRESS_LONG``. ``number`` counts presses (wraps 255 → 0), so the device sees a lost one."""

    def __init__(self, button: int, kind: int, number: int) -> None:
        self.button = button
        self.kind = kind
        self.number = number

    @property
    def name(self) -> str:
        return BUTTON_NAMES.get(self.button, "button " + str(self.button))

    @property
    def long(self) -> bool:
        return self.kind == PRESS_LONG

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ButtonPress) and (self.button, self.kind, self.number) == (
            other.button,
            other.kind,
            other.number,
        )

    def __hash__(self) -> int:
        return hash((self.button, self.kind, self.number))

    def __repr__(self) -> str:
        return "ButtonPress(" + self.name + ", " + PRESS_NAMES.get(self.kind, "?") + ")"


def pack_button(press: ButtonPress) -> bytes:
    return struct.pack(_BUTTON, press.button & 0xFF, press.kind & 0xFF, press.number & 0xFF)


def unpack_button(body: bytes) -> ButtonPress:
    _check_length("BUTTON", body, struct.calcsize(_BUTTON))
    button, kind, number = struct.unpack(_BUTTON, bytes(body))
    if button not in BUTTON_NAMES:
        raise LinkProtocolError("BUTTON names button " + str(button) + ", not one of 1 to 4")
    if kind not in PRESS_NAMES:
        raise LinkProtocolError("BUTTON press kind is " + str(kind) + ", not 0 (short) or 1 (long)")
    return ButtonPress(button, kind, number)


def pack_light(state: int) -> bytes:
    """LIGHT (device → MCU, the state to show) and LIGHT_SHOWN (MCU → device, the state shown)."""
    return bytes((state & 0xFF,))


def unpack_light(name: str, body: bytes) -> int:
    """The light state of a LIGHT or LIGHT_SHOWN body (``name`` says which, for the error)."""
    _check_length(name, body, 1)
    if body[0] not in LIGHT_NAMES:
        raise LinkProtocolError(name + " light state is " + str(body[0]) + ", not " + _LIGHT_RANGE)
    return body[0]


#: The light states an MCU of each protocol minor knows: none before minor 2 (it ignores LIGHT),
#: 0 to 5 at minor 2, 0 to 8 from minor 3 on.
_LIGHT_STATES_SINCE_MINOR = ((3, LIGHT_SHUT_OUT + 1), (2, LIGHT_DOSE_REACHED + 1), (0, 0))

#: What a minor-2 MCU shows instead of a v1.3 state: never idle, which would tell the person "all is
#: well, press play" when nothing can play. Refused becomes dose_reached: the clinician's plan, not
#: the device, stops play, as when the week's dose is reached. Blocked and shut_out become fault:
#: the device cannot play until someone fixes something, which is what fault means to a person.
_LIGHT_BEFORE_MINOR_3 = {
    LIGHT_REFUSED: LIGHT_DOSE_REACHED,
    LIGHT_BLOCKED: LIGHT_FAULT,
    LIGHT_SHUT_OUT: LIGHT_FAULT,
}


def light_states_known(minor: int) -> int:
    """How many light states (0 up to this number, excluded) an MCU of protocol ``minor`` knows."""
    for since, count in _LIGHT_STATES_SINCE_MINOR:
        if minor >= since:
            return count
    return 0


def light_for_peer(state: int, peer_minor: int) -> int:
    """The light state to send an MCU of protocol ``peer_minor`` (HELLO's minor) for ``state``:
    ``state`` itself if that MCU knows it, else the nearest one it knows (``_LIGHT_BEFORE_MINOR_3``),
    so an MCU older than minor 3 never gets 6 to 8 (an MCU older than minor 2 ignores LIGHT anyway).
    ``ValueError`` for a state that does not exist."""
    if state not in LIGHT_NAMES:
        raise ValueError("no such light state " + str(state) + ", not " + _LIGHT_RANGE)
    if state < light_states_known(peer_minor):
        return state
    return _LIGHT_BEFORE_MINOR_3.get(state, state)


# ---------------------------------------------------------------------------------------------
# What the board is (protocol v1.4): BOARD follows every HELLO. An MCU of an older minor never
# sends it, so a device that has heard none knows nothing of these facts (not that they are false).

#: BOARD.flags bit 0: the board refuses to arm (and mutes) without headphones plugged in.
BOARD_REQUIRES_HEADPHONES = 0x01
#: BOARD.flags bit 1: the board has a headphone-detect switch, so TELEMETRY's headphones flag is
#: a reading (without one the flag is always 0 and means nothing).
BOARD_HEADPHONE_SWITCH = 0x02
#: The flags this version knows. A receiver ignores any other bit: a later minor may give one a
#: meaning, and a board that sets it still means what the known bits say.
BOARD_FLAGS_KNOWN = BOARD_REQUIRES_HEADPHONES | BOARD_HEADPHONE_SWITCH


class BoardInfo:
    """MCU → device after every HELLO (v1.4): what the board itself is, as ``flags``.

    The body is the flags byte; a later minor may append fields after it. A receiver reads the
    fields it knows and ignores the bytes after them and the flag bits it does not know."""

    def __init__(self, flags: int) -> None:
        self.flags = flags & 0xFF

    @classmethod
    def of(cls, *, requires_headphones: bool, headphone_switch: bool) -> "BoardInfo":
        flags = BOARD_REQUIRES_HEADPHONES if requires_headphones else 0
        if headphone_switch:
            flags |= BOARD_HEADPHONE_SWITCH
        return cls(flags)

    @property
    def requires_headphones(self) -> bool:
        return bool(self.flags & BOARD_REQUIRES_HEADPHONES)

    @property
    def headphone_switch(self) -> bool:
        return bool(self.flags & BOARD_HEADPHONE_SWITCH)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BoardInfo) and self.flags == other.flags

    def __hash__(self) -> int:
        return hash(self.flags)

    def __repr__(self) -> str:
        return "BoardInfo(flags=" + str(self.flags) + ")"


def pack_board_info(info: BoardInfo) -> bytes:
    return bytes((info.flags,))


def unpack_board_info(body: bytes) -> BoardInfo:
    """A BOARD body: at least the flags byte. Bytes after it (fields of a later minor) and flag
    bits outside ``BOARD_FLAGS_KNOWN`` are ignored, never an error."""
    if len(body) < 1:
        raise LinkProtocolError("BOARD body is empty, expected at least 1 byte (flags)")
    return BoardInfo(body[0] & BOARD_FLAGS_KNOWN)


# ---------------------------------------------------------------------------------------------
# Firmware update (protocol v1.5): the bootloader's frames, the image format and what is signed.
# A v1.4 MCU ignores these frames (valid frames of unknown type), so a device that never sends them
# sees v1.4 behaviour; the device sends them only to an MCU whose HELLO says minor >= 5.

#: The first protocol minor with the bootloader frames.
UPDATE_SINCE_MINOR = 5

MSG_UPDATE_STATUS = 0x09
MSG_UPDATE_BEGIN = 0x20
MSG_UPDATE_CHUNK = 0x21
MSG_UPDATE_COMMIT = 0x22
MSG_UPDATE_ABORT = 0x23
MSG_UPDATE_CONFIRM = 0x24

MESSAGE_NAMES[MSG_UPDATE_STATUS] = "UPDATE_STATUS"
MESSAGE_NAMES[MSG_UPDATE_BEGIN] = "UPDATE_BEGIN"
MESSAGE_NAMES[MSG_UPDATE_CHUNK] = "UPDATE_CHUNK"
MESSAGE_NAMES[MSG_UPDATE_COMMIT] = "UPDATE_COMMIT"
MESSAGE_NAMES[MSG_UPDATE_ABORT] = "UPDATE_ABORT"
MESSAGE_NAMES[MSG_UPDATE_CONFIRM] = "UPDATE_CONFIRM"

#: Muted because a firmware update is in progress (STATE.reason, and the text of a refused ARM).
FAULT_UPDATING = 13
FAULT_TEXT[FAULT_UPDATING] = "firmware update in progress"

#: Most image bytes in one UPDATE_CHUNK: the body is offset u32 + data, at most ``MAX_BODY``.
UPDATE_CHUNK_MAX = MAX_BODY - 4
ED25519_SIGNATURE_BYTES = 64
SHA256_BYTES = 32

# UPDATE_STATUS codes. Below 10: the request did what it asked; from 10: refused, nothing changed
# beyond what the code says.
UPDATE_READY = 0
UPDATE_CHUNK_OK = 1
UPDATE_COMMITTED = 2
UPDATE_ABORTED = 3
UPDATE_CONFIRMED = 4
UPDATE_ROLLING_BACK = 5
UPDATE_REFUSED_SOUND = 10
UPDATE_REFUSED_SIZE = 11
UPDATE_REFUSED_NO_TRANSFER = 12
UPDATE_REFUSED_OFFSET = 13
UPDATE_REFUSED_INCOMPLETE = 14
UPDATE_REFUSED_HASH = 15
UPDATE_REFUSED_SIGNATURE = 16
UPDATE_REFUSED_IMAGE = 17
UPDATE_REFUSED_TRIAL = 18

UPDATE_STATUS_TEXT = {
    UPDATE_READY: "ready: send the image from the next offset",
    UPDATE_CHUNK_OK: "chunk written",
    UPDATE_COMMITTED: "image verified and marked pending: rebooting into it",
    UPDATE_ABORTED: "transfer abandoned: the running image stays",
    UPDATE_CONFIRMED: "running image confirmed: it boots from now on",
    UPDATE_ROLLING_BACK: "trial image rejected: rebooting into the previous one",
    UPDATE_REFUSED_SOUND: "refused: sound is allowed (armed or unmuted)",
    UPDATE_REFUSED_SIZE: "refused: image size is 0 or larger than a slot",
    UPDATE_REFUSED_NO_TRANSFER: "refused: no transfer in progress",
    UPDATE_REFUSED_OFFSET: "refused: chunk not at the next offset",
    UPDATE_REFUSED_INCOMPLETE: "refused: image not complete",
    UPDATE_REFUSED_HASH: "refused: image SHA-256 does not match",
    UPDATE_REFUSED_SIGNATURE: "refused: signature not valid for the pinned update key",
    UPDATE_REFUSED_IMAGE: "refused: not a firmware image of this format",
    UPDATE_REFUSED_TRIAL: "refused: the running image is on trial (confirm or roll back first)",
}

#: Signed: this domain string, then image size u32, image SHA-256, version text8. The domain keeps
#: a signature over a firmware image from passing for any other document the key family signs.
UPDATE_SIGNATURE_DOMAIN = b"resonera-mcu-firmware-v1\x00"
#: An image: this magic, format u8 (1), version text8, body length u32, body.
IMAGE_MAGIC = b"RSFW"
IMAGE_FORMAT = 1
#: A signed image file (what ``resonera-hwsim image build`` writes): this magic, signature, image.
SIGNED_IMAGE_MAGIC = b"RSFWSIG1"

_UPDATE_BEGIN_HEAD = "<I"
_U32 = "<I"


class UpdateBegin:
    """UPDATE_BEGIN, device → MCU: the image to come and its signature."""

    def __init__(self, size: int, sha256: bytes, version: str, signature: bytes) -> None:
        self.size = size
        self.sha256 = bytes(sha256)
        self.version = version
        self.signature = bytes(signature)

    def same_image(self, other: "UpdateBegin") -> bool:
        return (self.size, self.sha256, self.version, self.signature) == (
            other.size,
            other.sha256,
            other.version,
            other.signature,
        )


def pack_update_begin(begin: UpdateBegin) -> bytes:
    if len(begin.sha256) != SHA256_BYTES or len(begin.signature) != ED25519_SIGNATURE_BYTES:
        raise ValueError("UPDATE_BEGIN needs a 32-byte SHA-256 and a 64-byte signature")
    return (
        struct.pack(_UPDATE_BEGIN_HEAD, begin.size & 0xFFFFFFFF)
        + begin.sha256
        + _pack_text(begin.version)
        + begin.signature
    )


def unpack_update_begin(body: bytes) -> UpdateBegin:
    if len(body) < 4 + SHA256_BYTES + 1 + ED25519_SIGNATURE_BYTES:
        raise LinkProtocolError("UPDATE_BEGIN body is " + str(len(body)) + " bytes, too short")
    size = struct.unpack(_UPDATE_BEGIN_HEAD, bytes(body[:4]))[0]
    sha = bytes(body[4 : 4 + SHA256_BYTES])
    version, offset = _unpack_text("UPDATE_BEGIN", body, 4 + SHA256_BYTES)
    _check_length("UPDATE_BEGIN signature", body[offset:], ED25519_SIGNATURE_BYTES)
    return UpdateBegin(size, sha, version, bytes(body[offset:]))


def pack_update_chunk(offset: int, data: bytes) -> bytes:
    if not 0 < len(data) <= UPDATE_CHUNK_MAX:
        raise ValueError("UPDATE_CHUNK carries 1 to " + str(UPDATE_CHUNK_MAX) + " bytes")
    return struct.pack(_U32, offset & 0xFFFFFFFF) + bytes(data)


def unpack_update_chunk(body: bytes) -> "tuple[int, bytes]":
    if len(body) < 5:
        raise LinkProtocolError(
            "UPDATE_CHUNK body is " + str(len(body)) + " bytes, expected 5 or more"
        )
    return struct.unpack(_U32, bytes(body[:4]))[0], bytes(body[4:])


class UpdateStatus:
    """UPDATE_STATUS, MCU → device: the answer to every update frame."""

    def __init__(self, status: int, next_offset: int, text: str = "") -> None:
        self.status = status
        self.next_offset = next_offset
        self.text = text

    @property
    def refused(self) -> bool:
        return self.status >= UPDATE_REFUSED_SOUND

    def describe(self) -> str:
        name = UPDATE_STATUS_TEXT.get(self.status, "unknown update status " + str(self.status))
        return name + (" (" + self.text + ")" if self.text else "")

    def __repr__(self) -> str:
        return "UpdateStatus(" + str(self.status) + ", " + str(self.next_offset) + ")"


def pack_update_status(status: UpdateStatus) -> bytes:
    text = status.text.encode("utf-8")[: MAX_BODY - 5]
    return bytes((status.status & 0xFF,)) + struct.pack(_U32, status.next_offset) + text


def unpack_update_status(body: bytes) -> UpdateStatus:
    """``UpdateStatus``; undecodable text is replaced by the code's description (it is for a log)."""
    if len(body) < 5:
        raise LinkProtocolError(
            "UPDATE_STATUS body is " + str(len(body)) + " bytes, expected 5 or more"
        )
    try:
        text = bytes(body[5:]).decode("utf-8")
    except UnicodeError:
        text = ""
    return UpdateStatus(body[0], struct.unpack(_U32, bytes(body[1:5]))[0], text)


def update_signed_message(size: int, sha256: bytes, version: str) -> bytes:
    """The bytes the update key signs for a firmware image (``UPDATE_SIGNATURE_DOMAIN``)."""
    return UPDATE_SIGNATURE_DOMAIN + struct.pack(_U32, size) + bytes(sha256) + _pack_text(version)


def pack_image(version: str, body: bytes) -> bytes:
    """A firmware image: header (magic, format, version, body length), then ``body``."""
    raw = version.encode("utf-8")
    if not raw or len(raw) > MAX_TEXT:
        raise ValueError("an image version is 1 to " + str(MAX_TEXT) + " bytes of UTF-8")
    return (
        IMAGE_MAGIC
        + bytes((IMAGE_FORMAT,))
        + _pack_text(version)
        + struct.pack(_U32, len(body))
        + bytes(body)
    )


def unpack_image_header(image: bytes) -> "tuple[str, int]":
    """``(version, total image size)`` from an image's first bytes; ``LinkProtocolError`` if they
    are not an image header of this format (``total`` is the header plus its declared body)."""
    if bytes(image[:4]) != IMAGE_MAGIC:
        raise LinkProtocolError("image does not start with " + repr(IMAGE_MAGIC))
    if len(image) < 6 or image[4] != IMAGE_FORMAT:
        raise LinkProtocolError("image format is not " + str(IMAGE_FORMAT))
    version, offset = _unpack_text("image header", image, 5)
    if not version:
        raise LinkProtocolError("image header has an empty version")
    if len(image) < offset + 4:
        raise LinkProtocolError("image header ends before its body length")
    length = struct.unpack(_U32, bytes(image[offset : offset + 4]))[0]
    return version, offset + 4 + length


def pack_signed_image(signature: bytes, image: bytes) -> bytes:
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise ValueError("an Ed25519 signature is 64 bytes")
    return SIGNED_IMAGE_MAGIC + bytes(signature) + bytes(image)


def unpack_signed_image(data: bytes) -> "tuple[bytes, bytes]":
    """``(signature, image)`` of a signed image file; ``LinkProtocolError`` saying what is wrong."""
    head = len(SIGNED_IMAGE_MAGIC)
    if bytes(data[:head]) != SIGNED_IMAGE_MAGIC:
        raise LinkProtocolError(
            "not a signed firmware image (no " + repr(SIGNED_IMAGE_MAGIC) + " at the start)"
        )
    signature = bytes(data[head : head + ED25519_SIGNATURE_BYTES])
    image = bytes(data[head + ED25519_SIGNATURE_BYTES :])
    if len(signature) != ED25519_SIGNATURE_BYTES or not image:
        raise LinkProtocolError("signed firmware image is truncated")
    _version, total = unpack_image_header(image)
    if total != len(image):
        raise LinkProtocolError(
            "image header says " + str(total) + " bytes, the file holds " + str(len(image))
        )
    return signature, image
