"""Two endpoints, no threads: the device's SafetyLink against the firmware Controller over an
in-memory link, with one clock the test advances (h11's ConnectionPair; docs/architecture.md §8)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resonera.common import serial_link as sl
from resonera.common.safety_link import HardLimits, LinkState, SafetyLink
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.firmware.logic import Board, Controller


class MemoryBoard(Board):
    """Sensors in a list, the UART as two byte buffers, the clock in the pair's hands."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.readings: list[float | bool] = [40.0, 0.5, 1.0, 2.0, 0.0, False, True]
        self.muted = True
        self.rx = bytearray()

    def read_sensors(self) -> tuple[float, float, float, float, float, bool, bool]:
        r = self.readings
        return (
            float(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]),
            bool(r[5]), bool(r[6]),
        )  # fmt: skip

    def set_mute(self, muted: bool) -> None:
        self.muted = muted

    def ticks_ms(self) -> int:
        return self.pair.now_ms

    def serial_read(self) -> bytes:
        data = bytes(self.rx)
        self.rx.clear()
        return data

    def serial_write(self, data: bytes) -> None:
        if not self.pair.mcu_silent:
            self.pair.to_device += data


class Pair:
    """Device and MCU joined back to back. ``run(ms)`` advances both, 1 ms per step."""

    def __init__(self, controller_class: type[Controller] = Controller, **config: object) -> None:
        self.now_ms = 0
        self.to_device = bytearray()
        self.mcu_silent = False
        self.device_silent = False
        self.board = MemoryBoard(self)
        self.config = BoardConfig(**config)
        self.controller_class = controller_class
        self.controller = controller_class(self.board, self.config)
        self.link = SafetyLink()
        self.decoder = sl.FrameDecoder(synced=False)
        self.received: list[sl.Frame] = []
        self.controller.start()

    @property
    def now(self) -> float:
        return self.now_ms / 1000

    def step(self) -> None:
        self.now_ms += 1
        self.controller.step()
        data = bytes(self.to_device)
        self.to_device.clear()
        for event in self.decoder.feed(data):
            if isinstance(event, sl.Frame):
                self.received.append(event)
            self.link.receive(event, self.now)
        self.link.tick(self.now)
        frames = self.link.outgoing(self.now)
        if not self.device_silent:
            for frame in frames:
                self.board.rx += frame

    def run(self, ms: int) -> None:
        for _ in range(ms):
            self.step()

    def reboot(self) -> None:
        self.board.set_mute(True)
        self.controller = self.controller_class(self.board, self.config)
        self.controller.start()

    def arm(self) -> None:
        self.link.request_arm()
        self.run(100)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.link.take_events()]


def test_hello_then_arm_gives_consent_and_unmutes() -> None:
    pair = Pair(board_id="pair-1")
    pair.run(60)
    assert pair.link.state is LinkState.HELLO_RECEIVED
    assert pair.board.muted
    pair.arm()
    assert pair.link.consent
    assert not pair.board.muted
    assert pair.link.hello is not None
    assert pair.link.hello.board_id == "pair-1"
    assert pair.kinds() == ["link_up", "consent_granted"]
    pair.run(2000)  # heartbeats keep it armed, telemetry keeps the device happy
    assert pair.link.consent
    assert not pair.board.muted


@pytest.mark.parametrize(
    ("index", "value", "code"),
    [
        (0, 95.0, sl.FAULT_OVER_TEMPERATURE),
        (1, 2.0, sl.FAULT_OVER_CURRENT),
        (2, 2.5, sl.FAULT_OVER_VOLTAGE),
        (3, -80.0, sl.FAULT_DC_OFFSET),
        (6, False, sl.FAULT_HEADPHONES_UNPLUGGED),
    ],
)
def test_a_fault_mutes_both_sides_and_latches(index: int, value: float, code: int) -> None:
    pair = Pair()
    pair.arm()
    pair.link.take_events()
    pair.board.readings[index] = value
    pair.run(5)
    assert pair.board.muted  # the MCU at once, on its own
    assert not pair.link.consent  # the device on the FAULT frame
    assert pair.link.last_fault is not None
    assert pair.link.last_fault[0] == code
    assert "fault" in pair.kinds()
    pair.board.readings[:] = [40.0, 0.5, 1.0, 2.0, 0.0, False, True]
    pair.run(200)
    assert not pair.link.consent  # latched until a new arm
    assert pair.board.muted
    pair.arm()
    assert pair.link.consent
    assert not pair.board.muted


def test_clip_storm_mutes_both_sides() -> None:
    pair = Pair()
    pair.arm()
    pair.board.readings[5] = True
    pair.run(300)
    assert pair.board.muted
    assert not pair.link.consent
    assert pair.controller.fault == sl.FAULT_CLIP_STORM


def test_device_heartbeat_stops_mcu_mutes_itself_device_sees_the_mute_line() -> None:
    pair = Pair()
    pair.arm()
    pair.device_silent = True
    pair.run(140)  # the last heartbeat went out at most 100 ms before the silence
    assert not pair.board.muted
    pair.run(120)
    assert pair.board.muted
    assert pair.controller.fault == sl.FAULT_HEARTBEAT_LOST
    assert not pair.link.consent
    assert "heartbeat lost" in pair.link.reason


def test_mcu_goes_silent_device_withdraws_after_100_ms_of_no_telemetry() -> None:
    pair = Pair()
    pair.arm()
    pair.mcu_silent = True
    pair.run(95)
    assert pair.link.consent  # the last telemetry is at most 50 ms older than the silence
    pair.run(60)
    assert not pair.link.consent
    assert "no TELEMETRY" in pair.link.reason
    assert pair.link.state is LinkState.DISCONNECTED
    pair.mcu_silent = False
    pair.run(300)  # HELLO asked for again and answered
    assert pair.link.state is LinkState.HELLO_RECEIVED
    assert not pair.link.consent
    pair.arm()
    assert pair.link.consent


def test_mcu_reboot_mid_session_withdraws_consent_until_a_new_arm() -> None:
    pair = Pair()
    pair.arm()
    pair.link.take_events()
    pair.reboot()
    pair.run(5)
    assert pair.board.muted
    assert not pair.link.consent
    assert "restarted" in pair.link.reason
    assert pair.kinds()[:2] == ["mcu_restarted", "consent_withdrawn"]
    pair.run(500)
    assert not pair.link.consent  # nothing re-arms by itself
    pair.arm()
    assert pair.link.consent
    assert not pair.board.muted


def test_limits_can_be_lowered_and_hello_then_reports_them() -> None:
    pair = Pair()
    pair.run(60)
    pair.link.request_lower_limits(HardLimits(1.0, 70.0, 1.0, 30.0, 0.0))
    pair.run(10)
    assert "limits_lowered" in pair.kinds()
    assert pair.controller.limits.values() == (1.0, 70.0, 1.0, 30.0, 0.0)
    assert pair.link.limits == HardLimits(1.0, 70.0, 1.0, 30.0, 0.0)
    pair.received.clear()
    pair.board.rx += sl.encode_frame(sl.MSG_HELLO_REQUEST, 0)
    pair.run(2)
    hello = [sl.unpack_hello(f.body) for f in pair.received if f.type == sl.MSG_HELLO]
    assert hello[0].limits.values() == (1.0, 70.0, 1.0, 30.0, 0.0)
    # The lowered limit is enforced by both sides: 75 °C is now a fault.
    pair.arm()
    pair.board.readings[0] = 75.0
    pair.run(5)
    assert pair.board.muted
    assert not pair.link.consent
    assert "over temperature" in pair.link.reason


def test_the_mcu_refuses_to_raise_a_limit() -> None:
    pair = Pair()
    pair.run(60)
    pair.received.clear()
    raised = sl.Limits(2.0, 120.0, 1.5, 50.0, 0.0)  # temperature above the board's 85 °C
    pair.board.rx += sl.encode_frame(sl.MSG_LOWER_LIMITS, 0, sl.pack_lower_limits(raised))
    pair.run(2)
    [answer] = [sl.unpack_limits(f.body) for f in pair.received if f.type == sl.MSG_LIMITS]
    status, limits = answer
    assert status == sl.LIMITS_REFUSED_RAISE
    assert limits.values() == (2.0, 85.0, 1.5, 50.0, 0.0)
    assert pair.controller.limits.values() == (2.0, 85.0, 1.5, 50.0, 0.0)
    assert "limits_refused" in pair.kinds()


@pytest.mark.parametrize(
    ("requested", "status"),
    [
        ((2.0, 85.0, 1.5, 0.0, 0.0), sl.LIMITS_REFUSED_RAISE),  # switching the DC check off
        ((2.0, 85.0, 1.5, 50.0, 90.0), sl.LIMITS_REFUSED_RAISE),  # a sensor the board lacks
        ((2.0, float("nan"), 1.5, 50.0, 0.0), sl.LIMITS_REFUSED_INVALID),
        ((2.0, float("inf"), 1.5, 50.0, 0.0), sl.LIMITS_REFUSED_INVALID),
        ((-1.0, 85.0, 1.5, 50.0, 0.0), sl.LIMITS_REFUSED_INVALID),
        ((2.0, 85.0, 1.5, 50.0, 0.0), sl.LIMITS_ACCEPTED),  # the same is not a raise
    ],
)
def test_lowering_rules(requested: tuple[float, ...], status: int) -> None:
    current = sl.unpack_lower_limits(sl.pack_lower_limits(sl.Limits(2.0, 85.0, 1.5, 50.0, 0.0)))
    assert sl.lowering_refusal(current, sl.Limits(*requested))[0] == status


def test_device_never_asks_for_more_than_the_mcu_reports_and_reasks_after_reboot() -> None:
    pair = Pair()
    pair.run(60)
    pair.link.request_lower_limits(HardLimits(5.0, 60.0, 0.0, 0.0, 0.0))  # 0: leave as is
    pair.run(10)
    assert pair.controller.limits.values() == (2.0, 60.0, 1.5, 50.0, 0.0)
    pair.reboot()  # RAM lost: the MCU is back at its board limits...
    assert pair.controller.limits.values()[1] == 85.0
    pair.run(10)
    assert pair.controller.limits.values()[1] == 60.0  # ...and the device lowers them again


class FutureController(Controller):
    def send_hello(self) -> None:
        hello = sl.Hello("9.0.0", "future", self.limits, protocol_major=2)
        self._send(sl.MSG_HELLO, sl.pack_hello(hello))


def test_unknown_major_version_stays_muted_and_says_so() -> None:
    pair = Pair(controller_class=FutureController)
    pair.link.request_arm()
    pair.run(1000)
    assert not pair.link.consent
    assert pair.board.muted
    assert pair.link.reason == "firmware speaks protocol v2, this device speaks v1"
    sent = sl.FrameDecoder().feed(bytes(pair.board.rx))
    assert not any(isinstance(f, sl.Frame) and f.type == sl.MSG_ARM for f in sent)
    assert pair.controller.armed is False
    assert pair.kinds().count("incompatible") == 1


def test_warning_near_the_temperature_limit_attenuates_without_a_fault() -> None:
    pair = Pair()
    pair.arm()
    pair.link.take_events()
    pair.board.readings[0] = 80.0  # 85 °C limit, 10 °C margin: halfway into it
    pair.run(60)
    assert pair.link.consent
    assert pair.link.attenuation_db == pytest.approx(-6.0, abs=0.01)
    assert "amplifier temperature 80.0 °C nearing limit 85.0 °C" in pair.link.warning
    assert pair.kinds() == ["warning"]
    pair.board.readings[0] = 74.5  # below 75 but within the hysteresis: still warning
    pair.run(60)
    assert pair.link.warning
    assert pair.link.attenuation_db == 0.0
    pair.board.readings[0] = 60.0
    pair.run(60)
    assert pair.link.warning == ""
    assert pair.kinds() == ["warning_cleared"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_firmware_survives_garbage_and_garbage_never_unmutes_it(
    chunks: list[bytes], armed_first: bool
) -> None:
    pair = Pair()
    if armed_first:
        pair.arm()
    pair.device_silent = True  # only the garbage reaches the MCU from now on
    was_muted = pair.board.muted
    for chunk in chunks:
        pair.board.rx += chunk
        pair.run(5)
        arms = [
            e for e in sl.FrameDecoder(synced=False).feed(chunk)
            if isinstance(e, sl.Frame) and e.type == sl.MSG_ARM
        ]  # fmt: skip
        if was_muted and not arms:
            assert pair.board.muted  # nothing but a valid ARM can unmute it
        was_muted = pair.board.muted
    pair.run(300)
    assert pair.board.muted  # and with no heartbeat it mutes, whatever came before


def test_the_device_learns_what_the_board_is_before_any_arm_and_again_after_a_restart() -> None:
    pair = Pair()
    pair.run(60)
    board = pair.link.board
    assert board is not None and (board.requires_headphones, board.headphone_switch) == (True, True)
    assert pair.board.muted  # nothing was asked of it
    pair.config = BoardConfig(require_headphones=False)  # reflashed with another configuration
    pair.reboot()
    pair.run(60)
    board = pair.link.board
    assert board is not None and not board.requires_headphones and board.headphone_switch
