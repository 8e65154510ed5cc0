"""The firmware Controller on a fake board with a clock the test advances."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resonera.common import serial_link as sl
from resonera.hardware.firmware import config as board_config
from resonera.hardware.firmware.logic import LIGHT_PATTERNS, Board, Controller, light_colour


class FakeBoard(Board):
    def __init__(self) -> None:
        self.now = 0
        self.readings = [40.0, 0.5, 1.0, 2.0, 0.0, False, True]
        self.muted: bool | None = None
        self.rx = bytearray()
        self.sent: list[sl.Frame] = []
        self._decoder = sl.FrameDecoder()
        self.buttons = 0
        self.light: int | None = None

    def read_sensors(self) -> tuple[float, float, float, float, float, bool, bool]:
        r = self.readings
        return (
            float(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]),
            bool(r[5]), bool(r[6]),
        )  # fmt: skip

    def set_mute(self, muted: bool) -> None:
        self.muted = muted

    def ticks_ms(self) -> int:
        return self.now

    def serial_read(self) -> bytes:
        data = bytes(self.rx)
        self.rx.clear()
        return data

    def serial_write(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            assert isinstance(event, sl.Frame), event
            self.sent.append(event)

    def read_buttons(self) -> int:
        return self.buttons

    def set_light(self, state: int) -> None:
        self.light = state

    def take(self, msg_type: int | None = None) -> list[sl.Frame]:
        frames = [f for f in self.sent if msg_type is None or f.type == msg_type]
        self.sent.clear()
        return frames


class Rig:
    """A controller, its fake board, and a device that sends frames and advances time."""

    def __init__(self, protocol_minor: int = sl.PROTOCOL_MINOR, **config: object) -> None:
        self.board = FakeBoard()
        self.controller = Controller(self.board, board_config.BoardConfig(**config), protocol_minor)
        self.controller.start()
        self._seq = 0

    def send(self, msg_type: int, body: bytes = b"") -> None:
        self.board.rx += sl.encode_frame(msg_type, self._seq, body)
        self._seq += 1
        self.controller.step()

    def heartbeat(self) -> None:
        self.send(sl.MSG_HEARTBEAT, sl.pack_heartbeat(self.board.now))

    def run(self, ms: int, *, heartbeats: bool = True) -> None:
        """Advance ``ms`` in 10 ms steps, with a heartbeat every 100 ms if asked."""
        for _ in range(ms // 10):
            self.board.now += 10
            if heartbeats and self.board.now % 100 == 0:
                self.heartbeat()
            else:
                self.controller.step()

    def arm(self) -> None:
        self.heartbeat()
        self.send(sl.MSG_ARM)

    def states(self) -> list[sl.State]:
        return [sl.unpack_state(f.body) for f in self.board.take(sl.MSG_STATE)]


def test_power_up_muted_with_hello_board_and_state() -> None:
    rig = Rig(board_id="b-9")
    assert rig.board.muted is True
    sent = rig.board.take()
    assert [f.type for f in sent] == [sl.MSG_HELLO, sl.MSG_BOARD, sl.MSG_STATE]
    hello = sl.unpack_hello(sent[0].body)
    assert hello.board_id == "b-9"
    assert hello.limits.max_amp_temp_c == 85.0
    state = sl.unpack_state(sent[2].body)
    assert (state.muted, state.armed, state.reason) == (True, False, sl.FAULT_POWER_UP)


def test_hello_again_on_request_and_garbage_is_ignored() -> None:
    rig = Rig()
    rig.board.take()
    rig.board.rx += b"\x00\x01\x02\x03\x00\xff\xfe\x00"
    rig.controller.step()
    assert rig.controller.frames_rejected == 2
    rig.send(0x7E, b"unknown")  # a valid frame of a type it does not know
    rig.send(sl.MSG_HELLO_REQUEST)
    replies = [f.type for f in rig.board.take() if f.type != sl.MSG_TELEMETRY]
    assert replies == [sl.MSG_HELLO, sl.MSG_BOARD, sl.MSG_STATE]
    assert rig.controller.frames_rejected == 3


def test_telemetry_every_50_ms() -> None:
    rig = Rig()
    rig.run(100, heartbeats=False)
    rig.board.take()
    rig.run(500, heartbeats=False)
    telemetry = rig.board.take(sl.MSG_TELEMETRY)
    assert len(telemetry) == 10
    t = sl.unpack_telemetry(telemetry[-1].body)
    assert (t.muted, t.armed, t.headphones, t.amp_temp_c) == (True, False, True, 40.0)


def test_arm_accepted_when_clean() -> None:
    rig = Rig()
    rig.board.take()
    rig.arm()
    assert rig.board.muted is False
    assert [(s.muted, s.armed, s.reason) for s in rig.states()] == [(False, True, 0)]
    rig.run(1000)
    assert rig.board.muted is False


def test_arm_refused_without_a_fresh_heartbeat() -> None:
    rig = Rig()
    rig.board.take()
    rig.send(sl.MSG_ARM)
    assert rig.board.muted is True
    faults = rig.board.take(sl.MSG_FAULT)
    assert sl.unpack_fault(faults[0].body)[0] == sl.FAULT_HEARTBEAT_LOST


def test_heartbeat_timeout_mutes() -> None:
    rig = Rig()
    rig.arm()
    rig.board.take()
    rig.run(250, heartbeats=False)
    assert rig.board.muted is False  # exactly at the limit: still within it
    rig.run(20, heartbeats=False)
    assert rig.board.muted is True
    code, text = sl.unpack_fault(rig.board.take(sl.MSG_FAULT)[0].body)
    assert code == sl.FAULT_HEARTBEAT_LOST
    assert "heartbeat lost" in text


def test_over_temperature_mutes_and_sends_fault_then_state() -> None:
    rig = Rig()
    rig.arm()
    rig.board.take()
    rig.board.readings[0] = 95.0
    rig.run(10)
    assert rig.board.muted is True
    sent = rig.board.take()
    assert [f.type for f in sent[:2]] == [sl.MSG_FAULT, sl.MSG_STATE]
    code, text = sl.unpack_fault(sent[0].body)
    assert code == sl.FAULT_OVER_TEMPERATURE
    assert text == "amplifier over temperature (95.0 °C, limit 85.0 °C)"
    state = sl.unpack_state(sent[1].body)
    assert (state.muted, state.armed, state.reason) == (True, False, sl.FAULT_OVER_TEMPERATURE)
    rig.run(50)
    t = sl.unpack_telemetry(rig.board.take(sl.MSG_TELEMETRY)[-1].body)
    assert t.fault == sl.FAULT_OVER_TEMPERATURE  # latched


def test_arm_refused_while_fault_active_then_accepted_once_clean() -> None:
    rig = Rig()
    rig.arm()
    rig.board.readings[0] = 95.0
    rig.run(10)
    rig.board.take()
    rig.arm()
    assert rig.board.muted is True
    code, text = sl.unpack_fault(rig.board.take(sl.MSG_FAULT)[0].body)
    assert code == sl.FAULT_OVER_TEMPERATURE
    assert text.startswith("arm refused: amplifier over temperature")
    rig.board.readings[0] = 60.0
    rig.arm()
    assert rig.board.muted is False
    assert rig.controller.fault == sl.FAULT_NONE


@pytest.mark.parametrize(
    ("index", "value", "code"),
    [
        (1, 2.0, sl.FAULT_OVER_CURRENT),
        (2, 2.5, sl.FAULT_OVER_VOLTAGE),
        (3, -75.0, sl.FAULT_DC_OFFSET),
        (6, False, sl.FAULT_HEADPHONES_UNPLUGGED),
    ],
)
def test_each_limit_mutes(index: int, value: float, code: int) -> None:
    rig = Rig()
    rig.arm()
    rig.board.take()
    rig.board.readings[index] = value
    rig.run(10)
    assert rig.board.muted is True
    assert sl.unpack_fault(rig.board.take(sl.MSG_FAULT)[0].body)[0] == code


def test_headphones_not_required_on_a_speaker_board() -> None:
    rig = Rig(require_headphones=False)
    rig.board.readings[6] = False
    rig.arm()
    assert rig.board.muted is False


def test_ear_spl_checked_only_when_a_sensor_is_fitted() -> None:
    rig = Rig()
    rig.board.readings[4] = 120.0
    rig.arm()
    assert rig.board.muted is False
    rig = Rig(max_ear_spl_db=90.0)
    rig.board.readings[4] = 120.0
    rig.arm()
    assert rig.board.muted is True


def test_clip_storm_mutes_but_one_clip_does_not() -> None:
    rig = Rig()
    rig.arm()
    rig.board.readings[5] = True
    rig.run(10)
    rig.board.readings[5] = False
    rig.run(300)
    assert rig.board.muted is False
    rig.board.readings[5] = True
    rig.run(300)
    assert rig.board.muted is True
    assert rig.controller.fault == sl.FAULT_CLIP_STORM


def test_mute_request_mutes_and_answers_with_state() -> None:
    rig = Rig()
    rig.arm()
    rig.board.take()
    rig.send(sl.MSG_MUTE, sl.pack_mute(sl.FAULT_DEVICE_REQUEST))
    assert rig.board.muted is True
    assert [(s.muted, s.reason) for s in rig.states()] == [(True, sl.FAULT_DEVICE_REQUEST)]


def test_config_from_json_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "board.json"
    path.write_text(json.dumps({"max_amp_temp_c": 70, "board_id": "x"}))
    cfg = board_config.load(str(path))
    assert (cfg.max_amp_temp_c, cfg.board_id, cfg.heartbeat_timeout_ms) == (70.0, "x", 250)
    path.write_text(json.dumps({"max_amp_temp": 70}))
    with pytest.raises(board_config.BoardConfigError, match="unknown board setting 'max_amp_temp'"):
        board_config.load(str(path))
    path.write_text(json.dumps({"heartbeat_timeout_ms": 0}))
    with pytest.raises(board_config.BoardConfigError, match="greater than 0"):
        board_config.load(str(path))
    path.write_text("{not json")
    with pytest.raises(board_config.BoardConfigError, match="not valid JSON"):
        board_config.load(str(path))
    with pytest.raises(board_config.BoardConfigError, match="cannot be read"):
        board_config.load(str(tmp_path / "missing.json"))


# -- buttons and the status light (protocol v1.2) -------------------------------------------------


def _presses(rig: Rig) -> list[tuple[str, str, int]]:
    return [
        (press.name, sl.PRESS_NAMES[press.kind], press.number)
        for press in (sl.unpack_button(f.body) for f in rig.board.take(sl.MSG_BUTTON))
    ]


def _hold(rig: Rig, button: int, ms: int) -> None:
    rig.board.buttons |= 1 << (button - 1)
    rig.run(ms, heartbeats=False)
    rig.board.buttons &= ~(1 << (button - 1))


def test_a_short_press_is_sent_on_release_and_a_long_one_while_held() -> None:
    rig = Rig()
    _hold(rig, sl.BUTTON_VOLUME_UP, 200)
    assert _presses(rig) == []  # nothing while a short press is still down
    rig.run(50, heartbeats=False)
    assert _presses(rig) == [("vol_up", "short", 0)]
    rig.board.buttons = 1 << (sl.BUTTON_PLAY_PAUSE - 1)
    rig.run(790, heartbeats=False)
    assert _presses(rig) == []
    rig.run(20, heartbeats=False)  # 800 ms held: sent at once, the button still down
    assert _presses(rig) == [("play_pause", "long", 1)]
    rig.run(2000, heartbeats=False)
    rig.board.buttons = 0
    rig.run(100, heartbeats=False)
    assert _presses(rig) == []  # nothing more on release, nor while held


def test_contact_bounce_makes_one_press_and_a_glitch_none() -> None:
    rig = Rig()
    stop = 1 << (sl.BUTTON_STOP - 1)
    for level in (stop, 0, stop, 0, stop):  # a bouncing contact, 10 ms a level
        rig.board.buttons = level
        rig.run(10, heartbeats=False)
    rig.run(100, heartbeats=False)
    for level in (0, stop, 0, stop, 0):
        rig.board.buttons = level
        rig.run(10, heartbeats=False)
    rig.run(100, heartbeats=False)
    assert _presses(rig) == [("stop", "short", 0)]
    rig.board.buttons = stop  # 10 ms of noise is not a press
    rig.run(10, heartbeats=False)
    rig.board.buttons = 0
    rig.run(100, heartbeats=False)
    assert _presses(rig) == []


def test_a_second_button_while_one_is_held_is_ignored() -> None:
    rig = Rig()
    up, down = 1 << (sl.BUTTON_VOLUME_UP - 1), 1 << (sl.BUTTON_VOLUME_DOWN - 1)
    rig.board.buttons = up
    rig.run(100, heartbeats=False)
    rig.board.buttons = up | down
    rig.run(100, heartbeats=False)
    rig.board.buttons = down  # up released first: still no press of down, it came too late
    rig.run(100, heartbeats=False)
    rig.board.buttons = 0
    rig.run(100, heartbeats=False)
    assert _presses(rig) == [("vol_up", "short", 0)]


def test_the_light_shows_what_the_device_asks_and_fault_on_a_fault_mute() -> None:
    rig = Rig()
    assert rig.board.light == sl.LIGHT_IDLE
    rig.board.take()
    rig.arm()
    rig.send(sl.MSG_LIGHT, sl.pack_light(sl.LIGHT_PLAYING))
    shown = rig.board.take(sl.MSG_LIGHT_SHOWN)
    assert [sl.unpack_light("LIGHT_SHOWN", f.body) for f in shown] == [sl.LIGHT_PLAYING]
    assert rig.board.light == rig.controller.light == sl.LIGHT_PLAYING
    rig.run(1000, heartbeats=False)  # the device is gone: heartbeat lost, a fault mute
    assert rig.board.muted is True
    shown = rig.board.take(sl.MSG_LIGHT_SHOWN)
    assert [sl.unpack_light("LIGHT_SHOWN", f.body) for f in shown] == [sl.LIGHT_FAULT]
    assert rig.board.light == sl.LIGHT_FAULT


def test_a_bad_light_frame_is_rejected_and_changes_nothing() -> None:
    rig = Rig()
    rig.board.take()
    rig.send(sl.MSG_LIGHT, bytes((9,)))
    assert rig.controller.last_rejection == "LIGHT light state is 9, not one of 0 to 8"
    rig.send(sl.MSG_LIGHT, b"")
    assert rig.controller.frames_rejected == 2
    assert rig.board.light == sl.LIGHT_IDLE
    assert rig.board.take(sl.MSG_LIGHT_SHOWN) == []


# -- the light states of protocol v1.3 -------------------------------------------------------------


def test_hello_reports_minor_4_or_the_older_minor_it_plays() -> None:
    for minor in (4, 3, 2):
        hello = sl.unpack_hello(Rig(protocol_minor=minor).board.take(sl.MSG_HELLO)[0].body)
        assert (hello.protocol_major, hello.protocol_minor) == (1, minor)


@pytest.mark.parametrize("state", [sl.LIGHT_REFUSED, sl.LIGHT_BLOCKED, sl.LIGHT_SHUT_OUT])
def test_a_v1_3_mcu_shows_each_new_state_and_says_so(state: int) -> None:
    rig = Rig()
    rig.board.take()
    rig.send(sl.MSG_LIGHT, sl.pack_light(state))
    shown = rig.board.take(sl.MSG_LIGHT_SHOWN)
    assert [sl.unpack_light("LIGHT_SHOWN", f.body) for f in shown] == [state]
    assert rig.board.light == rig.controller.light == state
    rig.send(sl.MSG_LIGHT, sl.pack_light(sl.LIGHT_IDLE))  # the person acted: back to idle
    assert rig.board.light == sl.LIGHT_IDLE


def test_a_v1_2_mcu_rejects_the_new_states_as_its_firmware_did() -> None:
    rig = Rig(protocol_minor=2)
    rig.board.take()
    rig.send(sl.MSG_LIGHT, sl.pack_light(sl.LIGHT_SHUT_OUT))
    assert rig.controller.last_rejection == (
        "LIGHT light state is 8, not one of 0 to 5 (protocol v1.2)"
    )
    assert rig.board.take(sl.MSG_LIGHT_SHOWN) == []
    assert rig.board.light == sl.LIGHT_IDLE
    rig.send(sl.MSG_LIGHT, sl.pack_light(sl.light_for_peer(sl.LIGHT_SHUT_OUT, 2)))
    shown = rig.board.take(sl.MSG_LIGHT_SHOWN)
    assert [sl.unpack_light("LIGHT_SHOWN", f.body) for f in shown] == [sl.LIGHT_FAULT]


def _brightness_over_time(state: int) -> tuple[int, ...]:
    """How bright the LED is (its brightest channel) every 25 ms for 4 s: the light without colour."""
    return tuple(max(light_colour(state, ms)) for ms in range(0, 4000, 25))


def test_every_light_state_has_a_pattern_told_apart_without_colour() -> None:
    assert set(LIGHT_PATTERNS) == set(sl.LIGHT_NAMES)
    rhythms = {state: _brightness_over_time(state) for state in sl.LIGHT_NAMES}
    assert len(set(rhythms.values())) == len(rhythms)
    assert max(rhythms[sl.LIGHT_IDLE]) < min(rhythms[sl.LIGHT_PLAYING])  # dim vs bright
    for state in (sl.LIGHT_FAULT, sl.LIGHT_REFUSED, sl.LIGHT_BLOCKED, sl.LIGHT_SHUT_OUT):
        assert min(rhythms[state]) == 0 < max(rhythms[state])  # they blink


def test_each_pattern_starts_lit_and_repeats() -> None:
    for state, pattern in LIGHT_PATTERNS.items():
        period = sum(duration for duration, _colour in pattern)
        assert light_colour(state, 0) != (0, 0, 0)  # a new state shows at once
        assert light_colour(state, 10) == light_colour(state, 10 + 3 * period)
    assert light_colour(sl.LIGHT_SHUT_OUT, 100) == (255, 0, 0)
    assert light_colour(sl.LIGHT_SHUT_OUT, 900) == (0, 0, 255)  # red, then blue


def test_button_timing_is_configurable_and_checked() -> None:
    rig = Rig(long_press_ms=300, button_debounce_ms=5)
    _hold(rig, sl.BUTTON_STOP, 320)
    assert _presses(rig) == [("stop", "long", 0)]
    with pytest.raises(board_config.BoardConfigError, match="long_press_ms"):
        board_config.BoardConfig(long_press_ms=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(1, 400)), min_size=1, max_size=20))
def test_bouncing_buttons_never_make_more_presses_than_real_ones(
    levels: list[tuple[int, int]],
) -> None:
    rig = Rig()
    debounce = rig.controller.config.button_debounce_ms
    runs: list[tuple[int, int]] = []  # the same level twice in a row is one longer run
    for buttons, ms in [*levels, (0, 100)]:
        if runs and runs[-1][0] == buttons:
            runs[-1] = (buttons, runs[-1][1] + ms)
        else:
            runs.append((buttons, ms))
    presses_made = 0  # a button goes down and stays so long enough to count (generously)
    stable = 0
    for buttons, ms in runs:
        if ms >= debounce - 1:
            presses_made += bool(buttons & ~stable)
            stable = buttons
        rig.board.buttons = buttons
        for _ in range(ms):
            rig.board.now += 1
            rig.controller.step()
    numbers = [number for _name, _kind, number in _presses(rig)]
    assert numbers == list(range(len(numbers)))  # numbered in order, none skipped
    assert len(numbers) <= presses_made


# -- what the board is (protocol v1.4) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "requires", "switch"),
    [
        ({}, True, True),
        ({"require_headphones": False}, False, True),
        ({"require_headphones": False, "headphones_pin": -1}, False, False),
    ],
)
def test_board_says_what_the_configuration_is_after_every_hello(
    config: dict[str, object], requires: bool, switch: bool
) -> None:
    rig = Rig(sl.PROTOCOL_MINOR, **config)
    boards = [sl.unpack_board_info(f.body) for f in rig.board.take(sl.MSG_BOARD)]
    rig.send(sl.MSG_HELLO_REQUEST)
    boards += [sl.unpack_board_info(f.body) for f in rig.board.take(sl.MSG_BOARD)]
    assert [(b.requires_headphones, b.headphone_switch) for b in boards] == [(requires, switch)] * 2


def test_an_older_firmware_sends_no_board() -> None:
    rig = Rig(protocol_minor=3)
    rig.send(sl.MSG_HELLO_REQUEST)
    assert [f.type for f in rig.board.take() if f.type == sl.MSG_BOARD] == []


def test_a_board_requiring_headphones_needs_a_switch_to_see_them() -> None:
    with pytest.raises(board_config.BoardConfigError, match="'require_headphones' needs a headph"):
        board_config.BoardConfig(headphones_pin=-1)
