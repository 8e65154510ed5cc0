"""The test vectors in hardware/PROTOCOL.md, parsed from the Markdown and checked against the codec,
so the reference document and the code cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from resonera.common import serial_link as sl

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "hardware" / "PROTOCOL.md"


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def parse_vectors() -> dict[str, dict[str, str]]:
    """``{name: {key: value}}`` from ``### Vector: NAME`` sections and their ``- key: v`` lines."""
    vectors: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in PROTOCOL_MD.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^### Vector: (.+)$", line)
        if heading:
            current = vectors.setdefault(heading.group(1).strip(), {})
            continue
        if line.startswith("#"):
            current = None
            continue
        item = re.match(r"^- ([a-z-]+): `?([^`]*)`?\s*$", line)
        if item and current is not None:
            current[item.group(1)] = item.group(2).strip()
    return vectors


VECTORS = parse_vectors()
FRAME_VECTORS = sorted(name for name, fields in VECTORS.items() if "frame" in fields)


def test_the_document_has_the_vectors_we_promise() -> None:
    assert {
        "CRC check",
        "HELLO",
        "HEARTBEAT ms=1000",
        "ARM seq 3",
        "TELEMETRY",
        "STATE",
        "LOWER_LIMITS",
        "LIMITS refused",
        "BUTTON play/pause long",
        "LIGHT playing",
        "LIGHT_SHOWN fault",
        "LIGHT refused",
        "LIGHT_SHOWN shut_out",
        "BOARD requires headphones",
        "BOARD of a later minor",
    } <= set(VECTORS)


def test_crc_vector() -> None:
    vector = VECTORS["CRC check"]
    assert sl.crc16_ccitt_false(_hex(vector["crc-input"])) == int.from_bytes(_hex(vector["crc"]))


@pytest.mark.parametrize("name", FRAME_VECTORS)
def test_frame_vector_decodes_and_encodes(name: str) -> None:
    vector = VECTORS[name]
    msg_type, seq, body, frame = (
        int(vector["type"], 16),
        int(vector["seq"]),
        _hex(vector["body"]),
        _hex(vector["frame"]),
    )
    assert sl.encode_frame(msg_type, seq, body) == frame
    assert sl.FrameDecoder().feed(frame) == [sl.Frame(msg_type, seq, body)]


def _body(name: str) -> bytes:
    return _hex(VECTORS[name]["body"])


def test_vector_field_values() -> None:
    hello = sl.unpack_hello(_body("HELLO"))
    assert (hello.protocol_major, hello.protocol_minor) == (1, 0)
    assert (hello.firmware_version, hello.board_id) == ("1.0.0", "board-42")
    assert hello.limits.values() == (2.0, 85.0, 1.5, 50.0, 0.0)

    assert sl.unpack_heartbeat(_body("HEARTBEAT ms=1000")) == 1000
    assert int(VECTORS["ARM seq 3"]["seq"]) == 3
    sl.check_empty("ARM", _body("ARM seq 3"))

    t = sl.unpack_telemetry(_body("TELEMETRY"))
    readings = (t.amp_temp_c, t.supply_current_a, t.output_vrms, t.dc_offset_mv, t.ear_spl_db)
    assert readings == (40.0, 0.5, 1.0, 2.0, 0.0)
    assert (t.muted, t.armed, t.clip, t.headphones, t.fault) == (False, True, False, True, 0)

    state = sl.unpack_state(_body("STATE"))
    assert (state.muted, state.armed, state.reason) == (True, False, sl.FAULT_OVER_TEMPERATURE)

    lower = sl.unpack_lower_limits(_body("LOWER_LIMITS"))
    assert lower.values() == (1.0, 70.0, 1.0, 30.0, 0.0)
    status, limits = sl.unpack_limits(_body("LIMITS refused"))
    assert status == sl.LIMITS_REFUSED_RAISE
    assert limits.values() == (2.0, 85.0, 1.5, 50.0, 0.0)


def test_button_and_light_vector_values() -> None:
    press = sl.unpack_button(_body("BUTTON play/pause long"))
    assert (press.button, press.kind, press.number) == (sl.BUTTON_PLAY_PAUSE, sl.PRESS_LONG, 5)
    assert (press.name, press.long) == ("play_pause", True)
    assert sl.unpack_light("LIGHT", _body("LIGHT playing")) == sl.LIGHT_PLAYING
    assert sl.unpack_light("LIGHT_SHOWN", _body("LIGHT_SHOWN fault")) == sl.LIGHT_FAULT
    assert sl.unpack_light("LIGHT", _body("LIGHT refused")) == sl.LIGHT_REFUSED
    assert sl.unpack_light("LIGHT_SHOWN", _body("LIGHT_SHOWN shut_out")) == sl.LIGHT_SHUT_OUT


def _light_state_table() -> list[list[str]]:
    """The rows of the "Light states" table: state, name, meaning, colour, rhythm, since."""
    text = PROTOCOL_MD.read_text(encoding="utf-8").split("### Light states", 1)[1]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if re.match(r"^\| \d+ \|", line)
    ]


def test_the_light_state_table_lists_every_state_of_the_codec() -> None:
    rows = _light_state_table()
    assert [(int(row[0]), row[1]) for row in rows] == sorted(sl.LIGHT_NAMES.items())
    for row in rows:
        assert all(row), f"light state {row[0]} has an empty cell"
        since_minor = int(row[5].removeprefix("v1."))
        assert (
            sl.light_states_known(since_minor)
            > int(row[0])
            >= sl.light_states_known(since_minor - 1)
        ), f"light state {row[0]} is not new in v1.{since_minor}"
    rhythms = [row[4] for row in rows]
    assert len(set(rhythms)) == len(rhythms), "two states share a rhythm: colour alone tells them"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x01\x00", "BUTTON body is 2 bytes, expected 3"),
        (b"\x07\x00\x00", "BUTTON names button 7, not one of 1 to 4"),
        (b"\x01\x02\x00", "BUTTON press kind is 2, not 0 \\(short\\) or 1 \\(long\\)"),
    ],
)
def test_bad_button_bodies_are_clear_protocol_errors(body: bytes, error: str) -> None:
    with pytest.raises(sl.LinkProtocolError, match=error):
        sl.unpack_button(body)


def test_bad_light_bodies_are_clear_protocol_errors() -> None:
    with pytest.raises(sl.LinkProtocolError, match="LIGHT light state is 9, not one of 0 to 8"):
        sl.unpack_light("LIGHT", b"\x09")
    with pytest.raises(sl.LinkProtocolError, match="LIGHT_SHOWN light state is 255, not one of"):
        sl.unpack_light("LIGHT_SHOWN", b"\xff")
    with pytest.raises(sl.LinkProtocolError, match="LIGHT_SHOWN body is 2 bytes, expected 1"):
        sl.unpack_light("LIGHT_SHOWN", b"\x01\x01")


def test_board_vector_values() -> None:
    board = sl.unpack_board_info(_body("BOARD requires headphones"))
    assert (board.requires_headphones, board.headphone_switch) == (True, True)
    later = sl.unpack_board_info(_body("BOARD of a later minor"))
    assert (later.requires_headphones, later.headphone_switch) == (False, True)
    assert later == sl.BoardInfo.of(requires_headphones=False, headphone_switch=True)


def test_the_message_table_names_board_as_new_in_v1_4() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| 0x08 |"))
    assert "| BOARD | MCU → device |" in row and "Since v1.4" in row
    assert sl.MESSAGE_NAMES[sl.MSG_BOARD] == "BOARD" and sl.PROTOCOL_MINOR >= 4
