"""The sans-IO serial codec: COBS, CRC, framing, message bodies, and what hostile bytes do."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resonera.common import serial_link as sl
from resonera.common.errors import ProtocolError


def test_crc_check_value() -> None:
    assert sl.crc16_ccitt_false(b"123456789") == 0x29B1


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        # Published examples (Wikipedia, "Consistent Overhead Byte Stuffing").
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
        (bytes(range(256)), b"\x01\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    ],
)
def test_cobs_known_values(raw: bytes, encoded: bytes) -> None:
    assert sl.cobs_encode(raw) == encoded
    assert sl.cobs_decode(encoded) == raw


@pytest.mark.parametrize("bad", [b"\x05\x11", b"\x02\x00", b"\x03\x11\x00"])
def test_cobs_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(sl.CobsError):
        sl.cobs_decode(bad)


def test_frame_round_trip_and_split_feeding() -> None:
    wire = sl.encode_frame(sl.MSG_MUTE, 300, b"\x00\x07") + sl.encode_frame(sl.MSG_ARM, 4)
    assert wire.count(0) == 2  # only the delimiters
    decoder = sl.FrameDecoder()
    events = [event for byte in wire for event in decoder.feed(bytes([byte]))]
    assert events == [sl.Frame(sl.MSG_MUTE, 300 & 0xFF, b"\x00\x07"), sl.Frame(sl.MSG_ARM, 4, b"")]


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x00", "empty frame"),
        (b"\x09\x01\x02\x00", "bad COBS encoding"),
        (b"\x03\x01\x02\x00", "frame too short"),
    ],
)
def test_decoder_reports_bad_frames(wire: bytes, reason: str) -> None:
    assert sl.FrameDecoder().feed(wire) == [sl.FrameError(reason)]


def test_decoder_reports_bad_crc_and_recovers() -> None:
    good = sl.encode_frame(sl.MSG_HEARTBEAT, 1, sl.pack_heartbeat(5))
    raw = bytearray(sl.cobs_decode(good[:-1]))
    raw[-1] ^= 0xFF
    bad = sl.cobs_encode(bytes(raw)) + b"\x00"
    events = sl.FrameDecoder().feed(bad + good)
    assert events == [sl.FrameError("bad CRC"), sl.Frame(sl.MSG_HEARTBEAT, 1, sl.pack_heartbeat(5))]


def test_overlong_frame_is_one_error_then_discarded_until_delimiter() -> None:
    decoder = sl.FrameDecoder()
    assert decoder.feed(b"\x01" * 200) == []
    assert decoder.feed(b"\x01" * 200) == [sl.FrameError("frame too long")]
    assert decoder.buffered == 0
    assert decoder.feed(b"\x01" * 1000) == []
    good = sl.encode_frame(sl.MSG_ARM, 1)
    assert decoder.feed(b"\x00" + good) == [sl.Frame(sl.MSG_ARM, 1, b"")]


def test_unsynced_decoder_drops_a_partial_first_frame_silently() -> None:
    frame = sl.encode_frame(sl.MSG_ARM, 1)
    assert sl.FrameDecoder(synced=False).feed(frame[3:] + frame) == [sl.Frame(sl.MSG_ARM, 1, b"")]
    assert sl.FrameDecoder(synced=False).feed(frame) == [sl.Frame(sl.MSG_ARM, 1, b"")]


def test_encode_refuses_oversized_body() -> None:
    with pytest.raises(ValueError, match="at most 250"):
        sl.encode_frame(sl.MSG_FAULT, 0, bytes(251))
    assert len(sl.encode_frame(sl.MSG_FAULT, 0, bytes(250))) <= sl.MAX_ENCODED + 1


def test_messages_round_trip() -> None:
    hello = sl.unpack_hello(
        sl.pack_hello(sl.Hello("2.1.0", "b-7", sl.Limits(1.5, 80.0, 1.0, 40.0, 95.0), 1, 3))
    )
    assert (hello.protocol_major, hello.protocol_minor) == (1, 3)
    assert (hello.firmware_version, hello.board_id) == ("2.1.0", "b-7")
    assert hello.limits.values() == (1.5, 80.0, 1.0, 40.0, 95.0)

    flags = sl.FLAG_MUTED | sl.FLAG_CLIP
    t = sl.unpack_telemetry(sl.pack_telemetry(sl.Telemetry(50.5, 0.25, 1.0, -3.0, 0.0, flags, 2)))
    assert (t.amp_temp_c, t.supply_current_a, t.dc_offset_mv, t.fault) == (50.5, 0.25, -3.0, 2)
    assert (t.muted, t.armed, t.clip, t.headphones) == (True, False, True, False)

    state = sl.unpack_state(sl.pack_state(sl.State(False, True, 0)))
    assert (state.muted, state.armed, state.reason) == (False, True, 0)
    assert sl.unpack_fault(sl.pack_fault(1, "hot")) == (1, "hot")
    assert sl.unpack_heartbeat(sl.pack_heartbeat(2**32 + 5)) == 5
    assert sl.unpack_mute(sl.pack_mute(sl.FAULT_DEVICE_REQUEST)) == sl.FAULT_DEVICE_REQUEST


@pytest.mark.parametrize(
    ("unpack", "body"),
    [
        (sl.unpack_telemetry, bytes(21)),
        (sl.unpack_state, bytes(4)),
        (sl.unpack_heartbeat, bytes(3)),
        (sl.unpack_mute, b""),
        (sl.unpack_fault, b""),
        (sl.unpack_hello, b"\x01"),
        (sl.unpack_hello, b"\x01\x00\x09abc"),
        (sl.unpack_hello, b"\x01\x00\x00\x00" + bytes(19)),
    ],
)
def test_bad_body_lengths_are_protocol_errors(unpack: object, body: bytes) -> None:
    assert callable(unpack)
    with pytest.raises(sl.LinkProtocolError) as info:
        unpack(body)
    assert isinstance(info.value, ProtocolError)  # one error family on CPython


def test_fault_text_is_known_and_unknown_codes_are_named() -> None:
    assert sl.describe_fault(sl.FAULT_OVER_TEMPERATURE) == "amplifier over temperature"
    assert sl.describe_fault(sl.FAULT_HEARTBEAT_LOST) == "heartbeat lost"
    assert sl.describe_fault(200) == "unknown fault code 200"


def test_check_limits() -> None:
    limits = sl.Limits(2.0, 85.0, 1.5, 50.0, 0.0)
    ok = sl.Telemetry(40.0, 0.5, 1.0, -49.0, 120.0, 0, 0)  # ear SPL unchecked: no sensor
    assert sl.check_limits(ok, limits) == (sl.FAULT_NONE, "")
    dc = sl.Telemetry(40.0, 0.5, 1.0, -60.0, 0.0, 0, 0)
    assert sl.check_limits(dc, limits) == (sl.FAULT_DC_OFFSET, "-60.0 mV, limit 50.0 mV")


frames = st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=sl.MAX_BODY)).map(
    lambda t: sl.Frame(*t)
)


@given(st.lists(frames, max_size=8), st.integers(1, 64))
def test_random_frames_round_trip_in_any_chunking(sent: list[sl.Frame], chunk: int) -> None:
    wire = b"".join(sl.encode_frame(f.type, f.seq, f.body) for f in sent)
    decoder = sl.FrameDecoder()
    received: list[sl.Frame | sl.FrameError] = []
    for start in range(0, len(wire), chunk):
        received += decoder.feed(wire[start : start + chunk])
    assert received == sent
    assert decoder.buffered == 0


@given(st.lists(st.binary(max_size=600), max_size=10))
def test_garbage_never_raises_and_buffer_stays_bounded(chunks: list[bytes]) -> None:
    decoder = sl.FrameDecoder()
    for data in chunks:
        for event in decoder.feed(data):
            assert isinstance(event, sl.Frame | sl.FrameError)
        assert decoder.buffered <= sl.MAX_ENCODED
    # After garbage, a delimiter and one good frame always get through.
    good = sl.encode_frame(sl.MSG_ARM, 9)
    assert decoder.feed(b"\x00" + good)[-1] == sl.Frame(sl.MSG_ARM, 9, b"")


@given(st.binary(max_size=300))
def test_message_unpackers_raise_only_protocol_errors(body: bytes) -> None:
    for unpack in (
        sl.unpack_hello,
        sl.unpack_telemetry,
        sl.unpack_state,
        sl.unpack_fault,
        sl.unpack_heartbeat,
        sl.unpack_mute,
    ):
        with contextlib.suppress(sl.LinkProtocolError):
            unpack(body)


# -- the status light's states (v1.2, and v1.3's refused, blocked, shut_out) ------------------------


@pytest.mark.parametrize("state", sorted(sl.LIGHT_NAMES))
def test_every_light_state_round_trips_both_ways(state: int) -> None:
    for name in ("LIGHT", "LIGHT_SHOWN"):
        assert sl.unpack_light(name, sl.pack_light(state)) == state


def test_protocol_v1_3_names_the_new_light_states() -> None:
    assert sl.PROTOCOL_MAJOR == 1 and sl.PROTOCOL_MINOR >= 3  # (v1.4 added BOARD, no states)
    new = {sl.LIGHT_REFUSED: "refused", sl.LIGHT_BLOCKED: "blocked", sl.LIGHT_SHUT_OUT: "shut_out"}
    assert {state: sl.LIGHT_NAMES[state] for state in new} == new
    assert [sl.light_states_known(minor) for minor in range(5)] == [0, 0, 6, 9, 9]


@pytest.mark.parametrize("minor", [0, 1, 2])
def test_an_mcu_older_than_v1_3_never_gets_a_state_it_does_not_know(minor: int) -> None:
    sent = {state: sl.light_for_peer(state, minor) for state in sl.LIGHT_NAMES}
    assert sent == {
        **{state: state for state in range(sl.LIGHT_REFUSED)},  # 0 to 5 unchanged
        sl.LIGHT_REFUSED: sl.LIGHT_DOSE_REACHED,  # the plan stops play, as a reached dose does
        sl.LIGHT_BLOCKED: sl.LIGHT_FAULT,  # nothing plays until someone fixes it
        sl.LIGHT_SHUT_OUT: sl.LIGHT_FAULT,
    }
    assert sl.LIGHT_IDLE not in {sent[s] for s in (6, 7, 8)}  # never "ready" when nothing can play


@pytest.mark.parametrize("minor", [3, 4, 200])
def test_an_mcu_of_v1_3_or_newer_gets_every_state_as_is(minor: int) -> None:
    assert [sl.light_for_peer(state, minor) for state in sl.LIGHT_NAMES] == list(sl.LIGHT_NAMES)


def test_light_for_peer_refuses_a_state_that_does_not_exist() -> None:
    with pytest.raises(ValueError, match="no such light state 9, not one of 0 to 8"):
        sl.light_for_peer(9, 3)


def test_an_unknown_light_state_is_a_clear_protocol_error() -> None:
    with pytest.raises(sl.LinkProtocolError, match=r"^LIGHT light state is 9, not one of 0 to 8$"):
        sl.unpack_light("LIGHT", b"\x09")
