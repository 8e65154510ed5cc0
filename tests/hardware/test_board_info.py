"""BOARD (protocol v1.4): what the board is, sent after every HELLO. The codec round-trips every
combination of its flags, ignores what a later minor may add (flag bits, appended bytes) and
names the message when a body breaks the protocol; the device's link keeps what the board said
only for the HELLO it followed."""

from __future__ import annotations

import pytest

from resonera.common import serial_link as sl
from resonera.common.safety_link import SafetyLink


@pytest.mark.parametrize("requires", [False, True])
@pytest.mark.parametrize("switch", [False, True])
def test_board_info_round_trips(requires: bool, switch: bool) -> None:
    sent = sl.BoardInfo.of(requires_headphones=requires, headphone_switch=switch)
    body = sl.pack_board_info(sent)
    assert len(body) == 1
    got = sl.unpack_board_info(body)
    assert got == sent
    assert (got.requires_headphones, got.headphone_switch) == (requires, switch)


def test_unknown_flag_bits_and_appended_fields_are_ignored() -> None:
    got = sl.unpack_board_info(bytes((0xFD, 7, 8, 9)))  # every bit but the switch, three more bytes
    assert (got.requires_headphones, got.headphone_switch) == (True, False)
    assert got.flags == sl.BOARD_REQUIRES_HEADPHONES


def test_an_empty_board_body_is_a_protocol_error_naming_the_message() -> None:
    with pytest.raises(sl.LinkProtocolError, match=r"^BOARD body is empty, expected at least 1"):
        sl.unpack_board_info(b"")


def _frame(msg_type: int, body: bytes, seq: int = 0) -> sl.Frame:
    return sl.Frame(msg_type, seq, body)


def _hello(minor: int = 4) -> sl.Frame:
    limits = sl.Limits(2.0, 85.0, 1.5, 50.0, 0.0)
    return _frame(sl.MSG_HELLO, sl.pack_hello(sl.Hello("1.0", "b-1", limits, 1, minor)))


def _board(requires: bool = True, switch: bool = True) -> sl.Frame:
    info = sl.BoardInfo.of(requires_headphones=requires, headphone_switch=switch)
    return _frame(sl.MSG_BOARD, sl.pack_board_info(info))


def _answering(link: SafetyLink, now: float) -> None:
    """Send what the link wants at ``now`` (so the next HELLO answers its HELLO_REQUEST)."""
    link.outgoing(now)


def test_the_link_keeps_what_the_board_said_for_its_hello_only() -> None:
    link = SafetyLink()
    _answering(link, 0.0)
    link.receive(_board(), 0.0)  # before any HELLO: not known to be this board's
    assert link.board is None
    link.receive(_hello(), 0.01)
    assert link.board is None  # not said yet
    link.receive(_board(), 0.02)
    assert link.board is not None and link.board.requires_headphones
    link.link_lost("port closed")
    assert link.board is None  # whatever is plugged in next says it again
    _answering(link, 1.0)
    link.receive(_hello(minor=3), 1.01)  # a v1.3 board in its place never says it
    assert link.board is None and link.hello is not None


def test_a_restarted_board_is_not_known_until_it_says_so_again() -> None:
    link = SafetyLink()
    _answering(link, 0.0)
    link.receive(_hello(), 0.01)
    link.receive(_board(requires=True), 0.02)
    link.receive(_hello(), 2.0)  # unasked: it restarted
    assert link.board is None
    link.receive(_board(requires=False), 2.01)
    assert link.board is not None and not link.board.requires_headphones


def test_an_empty_board_frame_withdraws_consent_as_a_protocol_error() -> None:
    link = SafetyLink()
    _answering(link, 0.0)
    link.receive(_hello(), 0.01)
    link.request_arm()
    link.receive(_frame(sl.MSG_BOARD, b""), 0.02)
    assert not link.consent
    assert "BOARD body is empty" in link.reason
