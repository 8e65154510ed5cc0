"""The test vectors in hardware/PROTOCOL.md, parsed from the Markdown and checked against the codec,
so the reference document and the code cannot drift apart."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

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
        "firmware image",
        "update signature",
        "UPDATE_BEGIN",
        "UPDATE_CHUNK",
        "UPDATE_COMMIT",
        "UPDATE_ABORT",
        "UPDATE_CONFIRM",
        "UPDATE_STATUS chunk ok",
        "UPDATE_STATUS refused offset",
        "signed image file",
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


def _table_after(heading: str) -> list[list[str]]:
    """The rows numbered in their first cell of the tables in the section under ``heading``."""
    section = PROTOCOL_MD.read_text(encoding="utf-8").split(heading + "\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if re.match(r"^\| \d+ \|", line)
    ]


def _light_state_table() -> list[list[str]]:
    """The rows of the "Light states" table: state, name, meaning, colour, rhythm, since."""
    return _table_after("### Light states")


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


# -- firmware update (v1.5) --------------------------------------------------------------------------


def test_the_image_and_its_signature_vectors() -> None:
    image = _hex(VECTORS["firmware image"]["image"])
    assert sl.unpack_image_header(image) == ("1.5.0", len(image))
    digest = hashlib.sha256(image).digest()
    assert digest == _hex(VECTORS["firmware image"]["digest"])
    signing = VECTORS["update signature"]
    message = sl.update_signed_message(len(image), digest, "1.5.0")
    assert message == _hex(signing["message"])
    assert message.startswith(b"resonera-mcu-firmware-v1\x00")
    public = Ed25519PublicKey.from_public_bytes(_hex(signing["public-key"]))
    public.verify(_hex(signing["signature"]), message)  # raises if the vector is wrong
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    assert Ed25519PrivateKey.from_private_bytes(secret).sign(message) == _hex(signing["signature"])


def test_the_update_frame_vectors_carry_the_image() -> None:
    image = _hex(VECTORS["firmware image"]["image"])
    begin = sl.unpack_update_begin(_body("UPDATE_BEGIN"))
    assert (begin.size, begin.version) == (len(image), "1.5.0")
    assert begin.sha256 == hashlib.sha256(image).digest()
    assert begin.signature == _hex(VECTORS["update signature"]["signature"])
    assert sl.unpack_update_chunk(_body("UPDATE_CHUNK")) == (0, image)
    for name in ("UPDATE_COMMIT", "UPDATE_ABORT", "UPDATE_CONFIRM"):
        sl.check_empty(name, _body(name))
    ok = sl.unpack_update_status(_body("UPDATE_STATUS chunk ok"))
    assert (ok.status, ok.next_offset, ok.text, ok.refused) == (sl.UPDATE_CHUNK_OK, 20, "", False)
    off = sl.unpack_update_status(_body("UPDATE_STATUS refused offset"))
    assert (off.status, off.next_offset, off.text) == (sl.UPDATE_REFUSED_OFFSET, 246, "got 492")
    assert off.refused
    signature, inner = sl.unpack_signed_image(_hex(VECTORS["signed image file"]["file"]))
    assert (signature, inner) == (begin.signature, image)


def test_the_status_table_lists_every_update_status_of_the_codec() -> None:
    rows = _table_after("### Frames and status codes")
    assert sorted(int(row[0]) for row in rows) == sorted(sl.UPDATE_STATUS_TEXT)
    for row in rows:
        refused = int(row[0]) >= sl.UPDATE_REFUSED_SOUND
        assert row[1].startswith("refused") == refused, row


def test_the_message_table_names_the_update_frames_as_new_in_v1_5() -> None:
    lines = PROTOCOL_MD.read_text(encoding="utf-8").splitlines()
    for code in (0x09, 0x20, 0x21, 0x22, 0x23, 0x24):
        row = next(line for line in lines if line.startswith(f"| 0x{code:02x} |"))
        assert f"| {sl.MESSAGE_NAMES[code]} |" in row and "Since v1.5" in row
    assert sl.PROTOCOL_MINOR == sl.UPDATE_SINCE_MINOR == 5
    assert len(_body("UPDATE_BEGIN")) <= sl.MAX_BODY
    assert sl.UPDATE_CHUNK_MAX + 4 == sl.MAX_BODY


@pytest.mark.parametrize(
    ("unpack", "body", "error"),
    [
        (sl.unpack_update_begin, bytes(50), "UPDATE_BEGIN body is 50 bytes, too short"),
        (sl.unpack_update_chunk, bytes(4), "UPDATE_CHUNK body is 4 bytes, expected 5 or more"),
        (sl.unpack_update_status, bytes(3), "UPDATE_STATUS body is 3 bytes, expected 5 or more"),
    ],
)
def test_bad_update_bodies_are_clear_protocol_errors(
    unpack: Callable[[bytes], object], body: bytes, error: str
) -> None:
    with pytest.raises(sl.LinkProtocolError, match=error):
        unpack(body)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"RSFW", "not a signed firmware image"),
        (b"RSFWSIG1" + bytes(64) + b"XXXX\x01\x011", "image does not start with"),
        (sl.pack_signed_image(bytes(64), sl.pack_image("1.5.0", b"body"))[:-1], "the file holds"),
    ],
)
def test_bad_signed_image_files_say_what_is_wrong(data: bytes, error: str) -> None:
    with pytest.raises(sl.LinkProtocolError, match=error):
        sl.unpack_signed_image(data)
