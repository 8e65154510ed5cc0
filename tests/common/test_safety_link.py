"""The device-side link state machine, driven with events and a clock the test controls."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resonera.common import serial_link as sl
from resonera.common.safety_link import HardLimits, LinkState, SafetyLink, WarningPolicy

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


def test_telemetry_silence_over_100_ms_withdraws_consent_and_forgets_hello() -> None:
    link = armed_link()
    link.receive(telemetry(), 0.05)
    link.receive(state(muted=False, armed=True), 0.14)  # other frames do not count as telemetry
    link.tick(0.15)
    assert link.consent  # 100 ms since the last TELEMETRY: still within
    link.tick(0.151)
    assert not link.consent
    assert link.reason == "no TELEMETRY from the safety MCU for over 100 ms"
    assert link.state is LinkState.DISCONNECTED
    assert sl.MSG_HELLO_REQUEST in sent_types(link.outgoing(0.16))
    kinds = [e.kind for e in link.take_events()]
    assert kinds[-2:] == ["link_down", "consent_withdrawn"]


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


def test_one_garbled_frame_is_counted_a_burst_withdraws_consent() -> None:
    link = armed_link()
    decoder = sl.FrameDecoder()
    for event in decoder.feed(b"\x13\x37\x42\x00"):
        link.receive(event, 0.02)
    assert link.consent  # one stray bad frame: line noise, counted
    assert link.errors_seen == 1
    for event in decoder.feed(b"\x13\x37\x42\x00"):
        link.receive(event, 1.5)  # the first one is out of the 1 s window by now
    link.receive(telemetry(), 1.5)
    assert link.consent
    for event in decoder.feed(b"\x01\x00\x05\x11\x00"):
        link.receive(event, 1.6)
    assert not link.consent
    assert link.reason == "link garbled: 3 bad frames within 1.0 s (last: bad COBS encoding)"


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


def test_unexpected_hello_means_the_mcu_restarted() -> None:
    link = armed_link()
    link.take_events()
    link.receive(hello(), 5.0)  # nobody asked: it rebooted
    assert not link.consent
    assert link.reason == "safety MCU b-1 restarted (unexpected HELLO): it is muted"
    assert [e.kind for e in link.take_events()] == ["mcu_restarted", "consent_withdrawn"]


def test_hello_answering_our_request_is_not_a_restart() -> None:
    link = SafetyLink()
    link.outgoing(0.0)  # HELLO_REQUEST
    link.outgoing(0.25)  # and another: the MCU is slow to answer
    link.receive(hello(), 0.3)
    link.receive(hello(), 0.31)  # the answer to the second request
    assert link.problem is None
    assert [e.kind for e in link.take_events()] == ["link_up"]


def test_lowered_limits_are_enforced_in_software_at_once() -> None:
    link = armed_link()
    link.request_lower_limits(HardLimits(2.0, 70.0, 9.0, 50.0, 0.0))
    assert link.limits == HardLimits(2.0, 70.0, 1.5, 50.0, 0.0)  # never above the MCU's 1.5 A
    sent = [
        sl.unpack_lower_limits(e.body)
        for f in link.outgoing(0.02)
        for e in sl.FrameDecoder().feed(f)
        if isinstance(e, sl.Frame) and e.type == sl.MSG_LOWER_LIMITS
    ]
    assert [s.values() for s in sent] == [(2.0, 70.0, 1.5, 50.0, 0.0)]
    link.receive(telemetry((75.0, 0.5, 1.0, 2.0, 0.0)), 0.03)  # fine for the MCU, not for us
    assert not link.consent
    assert "75.0 °C, limit 70.0 °C" in link.reason


def test_limits_refused_are_an_event_and_change_nothing() -> None:
    link = armed_link()
    link.take_events()
    body = sl.pack_limits(sl.LIMITS_REFUSED_RAISE, LIMITS)
    link.receive(sl.Frame(sl.MSG_LIMITS, 0, body), 0.02)
    [event] = link.take_events()
    assert event.kind == "limits_refused"
    assert event.cause.startswith("LOWER_LIMITS refused: a limit would be raised")
    assert link.consent


def test_warning_policy_margins_and_attenuation() -> None:
    policy = WarningPolicy(margins={"amp_temp_c": 5.0}, fraction=0.2, max_attenuation_db=10.0)
    link = SafetyLink(warning_policy=policy)
    link.receive(hello(), 0.0)
    link.receive(telemetry((82.5, 1.35, 1.0, 2.0, 0.0), armed=False), 0.01)
    # temperature: halfway into its 5 °C margin (-5 dB); current: 1.35 A of 1.5 A with a 0.3 A
    # margin, halfway too; the deepest one decides.
    assert link.attenuation_db == pytest.approx(-5.0, abs=0.01)
    assert "amplifier temperature" in link.warning
    assert "supply current" in link.warning
    with pytest.raises(ValueError, match="no such limit field"):
        WarningPolicy(margins={"temperature": 1.0})


def test_consent_events_carry_the_cause_and_code() -> None:
    link = armed_link()
    events = link.take_events()
    assert [e.kind for e in events] == ["link_up", "consent_granted"]
    link.receive(telemetry((40.0, 2.0, 1.0, 2.0, 0.0)), 0.02)
    [withdrawn] = [e for e in link.take_events() if e.kind == "consent_withdrawn"]
    assert withdrawn.code == sl.FAULT_OVER_CURRENT
    assert withdrawn.cause.startswith("telemetry over limit: supply over current")


# -- fuzz: hostile bytes ----------------------------------------------------------------------


def _armed_reports(data: bytes) -> int:
    """How many valid armed-and-unmuted reports (STATE or TELEMETRY) ``data`` holds."""
    count = 0
    for event in sl.FrameDecoder(synced=False).feed(data):
        if not isinstance(event, sl.Frame):
            continue
        try:
            if event.type == sl.MSG_STATE:
                s = sl.unpack_state(event.body)
                count += s.armed and not s.muted
            elif event.type == sl.MSG_TELEMETRY:
                t = sl.unpack_telemetry(event.body)
                count += t.armed and not t.muted
        except sl.LinkProtocolError:
            pass
    return count


START_STATES = ["fresh", "hello", "arm_requested", "consent", "withdrawn"]


def _link_in(start: str) -> SafetyLink:
    link = SafetyLink()
    if start == "fresh":
        return link
    if start in ("consent", "withdrawn"):
        link = armed_link()
        if start == "withdrawn":
            link.receive(sl.Frame(sl.MSG_FAULT, 0, sl.pack_fault(1, "hot")), 0.02)
        return link
    link.receive(hello(), 0.0)
    if start == "arm_requested":
        link.request_arm()
    return link


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(START_STATES),
    st.lists(st.binary(max_size=300), max_size=8),
    st.lists(st.floats(0.0, 0.2), min_size=8, max_size=8),
)
def test_garbage_never_raises_and_never_unmutes(
    start: str, chunks: list[bytes], gaps: list[float]
) -> None:
    link = _link_in(start)
    decoder = sl.FrameDecoder(synced=False)
    now = 0.05
    for chunk, gap in zip(chunks, gaps, strict=False):
        before = link.consent
        now += gap
        for event in decoder.feed(chunk):
            link.receive(event, now)
        link.tick(now)
        link.outgoing(now)
        assert decoder.buffered <= sl.MAX_ENCODED
        if not before and link.consent:
            # Consent may only come from a genuine armed report after an arm request.
            assert start == "arm_requested"
            assert _armed_reports(chunk) > 0
    if start == "withdrawn":
        assert not link.consent  # latched: no bytes whatsoever bring it back without an arm


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 64))
def test_garbage_between_valid_frames_is_survived(junk: bytes, chunk: int) -> None:
    link = armed_link()
    wire = junk + b"\x00" + sl.encode_frame(sl.MSG_TELEMETRY, 1, telemetry().body)
    decoder = sl.FrameDecoder()
    for offset in range(0, len(wire), chunk):
        for event in decoder.feed(wire[offset : offset + chunk]):
            link.receive(event, 0.05)
    assert isinstance(link.consent, bool)
    assert link.telemetry is not None
