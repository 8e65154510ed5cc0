"""The device-side link state machine, driven with events and a clock the test controls."""

from __future__ import annotations

from resonera.common import serial_link as sl
from resonera.common.safety_link import LinkState, SafetyLink

LIMITS = sl.Limits(2.0, 85.0, 1.5, 50.0, 0.0)
CLEAN = (40.0, 0.5, 1.0, 2.0, 0.0)


def hello(major: int = sl.PROTOCOL_MAJOR) -> sl.Frame:
    return sl.Frame(sl.MSG_HELLO, 0, sl.pack_hello(sl.Hello("1.0.0", "b-1", LIMITS, major, 0)))


def state(muted: bool, armed: bool, reason: int = 0) -> sl.Frame:
    return sl.Frame(sl.MSG_STATE, 0, sl.pack_state(sl.State(muted, armed, reason)))


def telemetry(
    readings: tuple[float, float, float, float, float] = CLEAN, *, armed: bool = True
) -> sl.Frame:
    flags = sl.FLAG_HEADPHONES | (sl.FLAG_ARMED if armed else sl.FLAG_MUTED)
    t = sl.Telemetry(*readings, flags, 0)
    return sl.Frame(sl.MSG_TELEMETRY, 0, sl.pack_telemetry(t))


def sent_types(frames: list[bytes]) -> list[int]:
    decoder = sl.FrameDecoder()
    return [e.type for f in frames for e in decoder.feed(f) if isinstance(e, sl.Frame)]


def armed_link() -> SafetyLink:
    link = SafetyLink()
    link.receive(hello(), 0.0)
    link.request_arm()
    link.receive(state(muted=False, armed=True), 0.01)
    assert link.consent
    assert link.state is LinkState.ARMED
    return link


def test_no_consent_before_hello_and_arm() -> None:
    link = SafetyLink()
    assert not link.consent
    assert "HELLO" in link.reason
    link.request_arm()
    link.receive(state(muted=False, armed=True), 0.0)  # armed, but who is this?
    assert not link.consent
    link.receive(hello(), 0.01)
    assert link.state is LinkState.HELLO_RECEIVED
    assert not link.consent  # the armed report came before the HELLO
    link.receive(telemetry(), 0.02)
    assert link.consent
    assert link.reason == ""


def test_armed_mcu_without_a_device_request_gives_no_consent() -> None:
    link = SafetyLink()
    link.receive(hello(), 0.0)
    link.receive(state(muted=False, armed=True), 0.01)
    assert not link.consent
    assert "arm" in link.reason


def test_unknown_major_is_refused_for_good() -> None:
    link = SafetyLink()
    link.receive(hello(major=2), 0.0)
    link.request_arm()
    link.receive(state(muted=False, armed=True), 0.01)
    assert not link.consent
    assert link.incompatible
    assert link.reason == "firmware speaks protocol v2, this device speaks v1"
    assert sl.MSG_ARM not in sent_types(link.outgoing(0.02))


def test_silence_withdraws_consent_and_forgets_hello() -> None:
    link = armed_link()
    link.tick(0.3)
    assert link.consent  # 0.29 s since the last frame
    link.tick(0.32)
    assert not link.consent
    assert "no frames" in link.reason
    assert link.state is LinkState.DISCONNECTED
    assert sl.MSG_HELLO_REQUEST in sent_types(link.outgoing(0.33))


def test_fault_withdraws_and_latches_until_arm_requested_again() -> None:
    link = armed_link()
    fault = sl.pack_fault(sl.FAULT_OVER_TEMPERATURE, "amplifier over temperature")
    link.receive(sl.Frame(sl.MSG_FAULT, 0, fault), 0.02)
    assert not link.consent
    assert link.reason == "MCU fault: amplifier over temperature"
    assert link.faults_seen == 1
    link.receive(telemetry(), 0.03)  # a stale armed report does not bring consent back
    assert not link.consent
    link.request_arm()
    assert not link.consent  # needs a fresh report
    link.receive(telemetry(), 0.04)
    assert link.consent


def test_telemetry_over_a_limit_withdraws_and_asks_the_mcu_to_mute() -> None:
    link = armed_link()
    link.outgoing(0.02)
    link.receive(telemetry((90.0, 0.5, 1.0, 2.0, 0.0)), 0.03)
    assert not link.consent
    assert "amplifier over temperature" in link.reason
    assert "90.0 °C" in link.reason
    assert sl.MSG_MUTE in sent_types(link.outgoing(0.04))


def test_dc_offset_is_checked_by_magnitude() -> None:
    link = armed_link()
    link.receive(telemetry((40.0, 0.5, 1.0, -51.0, 0.0)), 0.03)
    assert "DC offset" in link.reason


def test_garbage_withdraws_consent() -> None:
    link = armed_link()
    for event in sl.FrameDecoder().feed(b"\x13\x37\x42\x00"):
        link.receive(event, 0.02)
    assert not link.consent
    assert link.reason.startswith("link garbled")


def test_body_of_wrong_length_counts_as_garbled() -> None:
    link = armed_link()
    link.receive(sl.Frame(sl.MSG_TELEMETRY, 0, b"\x00"), 0.02)
    assert not link.consent
    assert "TELEMETRY body is 1 bytes" in link.reason


def test_mcu_muting_itself_withdraws_consent() -> None:
    link = armed_link()
    link.receive(state(muted=True, armed=False, reason=sl.FAULT_HEARTBEAT_LOST), 0.02)
    assert not link.consent
    assert link.reason == "MCU muted: heartbeat lost"


def test_request_mute_withdraws_at_once_and_sends_mute() -> None:
    link = armed_link()
    link.request_mute(sl.FAULT_DEVICE_REQUEST)
    assert not link.consent
    assert "request" in link.reason
    assert sl.MSG_MUTE in sent_types(link.outgoing(0.02))


def test_heartbeats_every_100_ms_and_arm_waits_for_hello() -> None:
    link = SafetyLink()
    link.request_arm()
    first = sent_types(link.outgoing(0.0))
    assert first == [sl.MSG_HEARTBEAT, sl.MSG_HELLO_REQUEST]  # no ARM before HELLO
    assert sent_types(link.outgoing(0.05)) == []
    assert sent_types(link.outgoing(0.1)) == [sl.MSG_HEARTBEAT]
    link.receive(hello(), 0.12)
    assert sent_types(link.outgoing(0.13)) == [sl.MSG_ARM]
    assert sent_types(link.outgoing(0.14)) == []  # ARM is sent once
    beats = sum(sent_types(link.outgoing(t / 100)).count(sl.MSG_HEARTBEAT) for t in range(15, 115))
    assert beats == 10


def test_own_frames_looped_back_do_not_count_as_the_mcu() -> None:
    link = SafetyLink()
    for frame in link.outgoing(0.0):
        for event in sl.FrameDecoder().feed(frame):
            link.receive(event, 0.0)
    assert not link.heard
    assert link.state is LinkState.DISCONNECTED
