"""The bootloader (protocol v1.5) as pure logic: the firmware's Controller on a board whose clock,
UART and reset the test drives, the flash model the simulator uses (with its power losses), and
the real Ed25519 check. Every refusal, resumes, and a power loss at every chunk of a small image."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resonera.common import serial_link as sl
from resonera.hardware.firmware import bootloader as bl
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.firmware.logic import Board, Controller
from resonera.hardware.sim import Ed25519Check, build_image, public_key_hex, sign_image
from resonera.hardware.sim_board import PowerLoss, SimFlash

KEY = Ed25519PrivateKey.generate()
OLD, NEW = "1.4.2", "1.5.0"


class ResetRequested(Exception):
    pass


class Rig(Board):
    """One MCU: the flash survives ``power_cycle``; each boot runs a fresh Controller on it."""

    def __init__(
        self, flash: SimFlash | None = None, minor: int = sl.PROTOCOL_MINOR, **config: object
    ) -> None:
        settings: dict[str, object] = {"update_public_key": public_key_hex(KEY)}
        self.config = BoardConfig(**(settings | {"firmware_version": OLD} | config))
        self.flash = flash if flash is not None else SimFlash(64 * 1024)
        if flash is None:
            self.flash.install_factory(build_image(OLD))
        self.minor = minor
        self.now = 0
        self.rx = bytearray()
        self.muted = True
        self.mute_history: list[bool] = []
        self.sent: list[sl.Frame] = []
        self.resets = 0
        self._decoder = sl.FrameDecoder()
        self._seq = 0
        self.power_cycle()

    # -- Board --
    def read_sensors(self) -> tuple[float, float, float, float, float, bool, bool]:
        return (40.0, 0.3, 0.5, 2.0, 0.0, False, True)

    def set_mute(self, muted: bool) -> None:
        self.muted = muted
        self.mute_history.append(muted)

    def ticks_ms(self) -> int:
        return self.now

    def serial_read(self) -> bytes:
        data = bytes(self.rx)
        self.rx.clear()
        return data

    def serial_write(self, data: bytes) -> None:
        self.sent += [e for e in self._decoder.feed(data) if isinstance(e, sl.Frame)]

    def reset_mcu(self) -> None:
        self.resets += 1
        raise ResetRequested

    # -- driving it --
    def power_cycle(self) -> None:
        choice = bl.boot(self.flash)
        assert choice is not None
        self.choice = choice
        self.bootloader = bl.Bootloader(
            self.flash,
            self.choice,
            bytes.fromhex(self.config.update_public_key),
            Ed25519Check(),
            self.config.update_trial_boots,
        )
        self.controller = Controller(self, self.config, self.minor, self.bootloader)
        self.controller.start()

    def send(self, msg_type: int, body: bytes = b"") -> list[sl.UpdateStatus]:
        """Send one frame, step once; the UPDATE_STATUS frames it brought (a reset power-cycles)."""
        self.rx += sl.encode_frame(msg_type, self._seq, body)
        self._seq += 1
        try:
            self.controller.step()
        except ResetRequested:
            self.power_cycle()
        return self.statuses()

    def statuses(self) -> list[sl.UpdateStatus]:
        found = [
            sl.unpack_update_status(f.body) for f in self.sent if f.type == sl.MSG_UPDATE_STATUS
        ]
        self.sent = [f for f in self.sent if f.type != sl.MSG_UPDATE_STATUS]
        return found

    def take(self, msg_type: int) -> list[sl.Frame]:
        found = [f for f in self.sent if f.type == msg_type]
        self.sent = [f for f in self.sent if f.type != msg_type]
        return found

    def step(self, ms: int) -> None:
        self.now += ms
        try:
            self.controller.step()
        except ResetRequested:
            self.power_cycle()

    def arm(self) -> None:
        self.send(sl.MSG_HEARTBEAT, sl.pack_heartbeat(self.now))
        self.send(sl.MSG_ARM)

    def hello_version(self) -> str:
        self.take(sl.MSG_HELLO)
        self.send(sl.MSG_HELLO_REQUEST)
        return sl.unpack_hello(self.take(sl.MSG_HELLO)[-1].body).firmware_version


def signed(
    version: str = NEW, size: int = 2000, key: Ed25519PrivateKey = KEY
) -> tuple[sl.UpdateBegin, bytes]:
    signature, image = sl.unpack_signed_image(sign_image(key, build_image(version, size)))
    begin = sl.UpdateBegin(len(image), hashlib.sha256(image).digest(), version, signature)
    return begin, image


def one(statuses: list[sl.UpdateStatus]) -> sl.UpdateStatus:
    assert len(statuses) == 1, statuses
    return statuses[0]


def send_image(
    rig: Rig, image: bytes, start: int = 0, chunk: int = sl.UPDATE_CHUNK_MAX
) -> sl.UpdateStatus:
    status = sl.UpdateStatus(sl.UPDATE_READY, start)
    for offset in range(start, len(image), chunk):
        status = one(
            rig.send(
                sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(offset, image[offset : offset + chunk])
            )
        )
        assert status.status == sl.UPDATE_CHUNK_OK, status.describe()
    return status


def update(rig: Rig, version: str = NEW, size: int = 2000) -> sl.UpdateStatus:
    begin, image = signed(version, size)
    assert one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))).status == sl.UPDATE_READY
    send_image(rig, image)
    return one(rig.send(sl.MSG_UPDATE_COMMIT))


# -- the whole path ---------------------------------------------------------------------------------


def test_an_update_boots_the_new_image_on_trial_and_confirm_keeps_it() -> None:
    rig = Rig()
    assert rig.hello_version() == OLD
    begin, image = signed()
    ready = one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin)))
    assert (ready.status, ready.next_offset) == (sl.UPDATE_READY, 0)
    state = sl.unpack_state(rig.take(sl.MSG_STATE)[-1].body)
    assert (state.muted, state.reason) == (True, sl.FAULT_UPDATING)
    assert send_image(rig, image).next_offset == len(image)
    committed = one(rig.send(sl.MSG_UPDATE_COMMIT))
    assert committed.status == sl.UPDATE_COMMITTED and rig.resets == 1
    # rebooted into slot b, on trial, saying the new version
    assert (rig.choice.slot, rig.choice.trial, rig.choice.version) == (1, True, NEW)
    assert rig.hello_version() == NEW
    assert one(rig.send(sl.MSG_UPDATE_CONFIRM)).status == sl.UPDATE_CONFIRMED
    rig.power_cycle()
    assert (rig.choice.slot, rig.choice.trial, rig.hello_version()) == (1, False, NEW)
    assert all(rig.mute_history), "the mute line never let go during the update"
    # and the next update goes to slot a, the one not running
    assert update(rig, "1.6.0").status == sl.UPDATE_COMMITTED
    assert (rig.choice.slot, rig.choice.version) == (0, "1.6.0")


def test_a_trial_image_never_confirmed_rolls_back_at_the_next_boot() -> None:
    rig = Rig()
    update(rig)
    assert rig.choice.trial
    rig.power_cycle()  # e.g. it hung and the watchdog reset it
    assert (rig.choice.version, rig.choice.trial, rig.choice.rolled_back_from) == (OLD, False, NEW)
    assert rig.hello_version() == OLD


def test_a_trial_image_not_confirmed_in_time_resets_itself_into_the_old_one() -> None:
    rig = Rig(update_confirm_timeout_ms=5000)
    update(rig)
    rig.statuses()
    rig.step(4000)
    assert rig.choice.version == NEW
    rig.step(1500)
    assert rig.choice.version == OLD and rig.choice.rolled_back_from == NEW


def test_abort_on_a_trial_image_rolls_back_now() -> None:
    rig = Rig()
    update(rig)
    # The first status is the trial image's answer, before its reset.
    status = one(rig.send(sl.MSG_UPDATE_ABORT))
    assert status.status == sl.UPDATE_ROLLING_BACK
    assert (rig.choice.version, rig.choice.rolled_back_from) == (OLD, NEW)


def test_confirm_sent_again_is_not_an_error() -> None:
    rig = Rig()
    update(rig)
    assert one(rig.send(sl.MSG_UPDATE_CONFIRM)).status == sl.UPDATE_CONFIRMED
    again = one(rig.send(sl.MSG_UPDATE_CONFIRM))
    assert again.status == sl.UPDATE_CONFIRMED and "already confirmed" in again.text


# -- refusals ---------------------------------------------------------------------------------------


def test_begin_is_refused_while_sound_is_allowed_and_arm_is_refused_while_updating() -> None:
    rig = Rig()
    rig.arm()
    assert not rig.muted
    begin, _image = signed()
    refused = one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin)))
    assert refused.status == sl.UPDATE_REFUSED_SOUND and refused.refused
    assert not rig.muted, "a refused BEGIN changes nothing"
    rig.send(sl.MSG_MUTE, sl.pack_mute(sl.FAULT_DEVICE_REQUEST))
    assert one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))).status == sl.UPDATE_READY
    rig.take(sl.MSG_FAULT)
    rig.arm()
    fault = sl.unpack_fault(rig.take(sl.MSG_FAULT)[-1].body)
    assert fault == (sl.FAULT_UPDATING, "arm refused: updating") and rig.muted
    # an ABORT ends the update: ARM works again
    assert one(rig.send(sl.MSG_UPDATE_ABORT)).status == sl.UPDATE_ABORTED
    rig.arm()
    assert not rig.muted


@pytest.mark.parametrize(
    ("make", "code", "text"),
    [
        (
            lambda: signed(key=Ed25519PrivateKey.generate())[0],
            sl.UPDATE_REFUSED_SIGNATURE,
            "not signed by the pinned",
        ),
        (lambda: sl.UpdateBegin(0, bytes(32), NEW, bytes(64)), sl.UPDATE_REFUSED_SIZE, "0 bytes"),
        (
            lambda: sl.UpdateBegin(10**6, bytes(32), NEW, bytes(64)),
            sl.UPDATE_REFUSED_SIZE,
            "a slot holds",
        ),
    ],
    ids=["foreign key", "empty", "too large"],
)
def test_bad_begins_are_refused_with_their_reason_and_nothing_is_erased(make, code, text) -> None:  # type: ignore[no-untyped-def]
    rig = Rig()
    update(rig)
    rig.send(sl.MSG_UPDATE_CONFIRM)
    before = rig.flash.read_slot(0, 0, 100)
    status = one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(make())))
    assert status.status == code and text in status.text
    assert rig.flash.read_slot(0, 0, 100) == before
    assert not rig.bootloader.updating


def test_a_board_without_a_pinned_key_takes_no_update() -> None:
    rig = Rig(update_public_key="")
    begin, _ = signed()
    status = one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin)))
    assert status.status == sl.UPDATE_REFUSED_SIGNATURE and "no update key pinned" in status.text


def test_begin_on_a_trial_image_is_refused() -> None:
    rig = Rig()
    update(rig)
    begin, _ = signed("1.6.0")
    status = one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin)))
    assert status.status == sl.UPDATE_REFUSED_TRIAL


def test_chunks_and_commits_out_of_place_are_refused() -> None:
    rig = Rig()
    begin, image = signed(size=150)
    assert (
        one(rig.send(sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(0, image[:10]))).status
        == sl.UPDATE_REFUSED_NO_TRANSFER
    )
    assert one(rig.send(sl.MSG_UPDATE_COMMIT)).status == sl.UPDATE_REFUSED_NO_TRANSFER
    rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))
    rig.send(sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(0, image[:100]))
    wrong = one(rig.send(sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(120, image[120:140])))
    assert (wrong.status, wrong.next_offset) == (sl.UPDATE_REFUSED_OFFSET, 100)
    past = one(rig.send(sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(100, image[100:] + b"extra")))
    assert (past.status, past.next_offset) == (sl.UPDATE_REFUSED_SIZE, 100)
    incomplete = one(rig.send(sl.MSG_UPDATE_COMMIT))
    assert (incomplete.status, incomplete.next_offset) == (sl.UPDATE_REFUSED_INCOMPLETE, 100)
    assert rig.bootloader.updating, "none of these ends the transfer"


def test_a_corrupt_byte_in_the_slot_is_refused_by_its_hash_and_the_old_image_runs() -> None:
    rig = Rig()
    begin, image = signed()
    rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))
    rig.flash.corrupt_next_write()
    send_image(rig, image)
    refused = one(rig.send(sl.MSG_UPDATE_COMMIT))
    assert refused.status == sl.UPDATE_REFUSED_HASH and "differs" in refused.text
    assert not rig.bootloader.updating and rig.resets == 0
    state = sl.unpack_state(rig.take(sl.MSG_STATE)[-1].body)
    assert state.reason != sl.FAULT_UPDATING
    rig.power_cycle()
    assert rig.choice.version == OLD


def test_an_image_whose_header_names_another_version_is_refused() -> None:
    rig = Rig()
    image = build_image("9.9.9", 500)
    digest = hashlib.sha256(image).digest()
    message = sl.update_signed_message(len(image), digest, NEW)  # signed as NEW, says 9.9.9
    begin = sl.UpdateBegin(len(image), digest, NEW, KEY.sign(message))
    rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))
    send_image(rig, image)
    assert one(rig.send(sl.MSG_UPDATE_COMMIT)).status == sl.UPDATE_REFUSED_IMAGE


def test_a_transfer_left_alone_is_dropped_and_arm_works_again() -> None:
    rig = Rig(update_idle_timeout_ms=2000)
    begin, _ = signed()
    rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))
    rig.step(2500)
    dropped = one(rig.statuses())
    assert dropped.status == sl.UPDATE_ABORTED and "no update frame" in dropped.text
    rig.arm()
    assert not rig.muted


def test_a_body_that_breaks_the_protocol_is_counted_not_answered() -> None:
    rig = Rig()
    assert rig.send(sl.MSG_UPDATE_CHUNK, b"\x00\x00") == []
    assert rig.send(sl.MSG_UPDATE_COMMIT, b"\x01") == []
    assert rig.controller.frames_rejected == 2
    assert "UPDATE_COMMIT body is 1 bytes" in rig.controller.last_rejection


def test_a_v1_4_firmware_ignores_the_update_frames() -> None:
    rig = Rig(minor=4)
    begin, _ = signed()
    assert rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin)) == []
    assert rig.controller.last_rejection == f"frame of unknown type {sl.MSG_UPDATE_BEGIN}"


# -- resuming ---------------------------------------------------------------------------------------


def test_a_lost_chunk_is_resent_from_the_offset_the_mcu_names() -> None:
    rig = Rig()
    begin, image = signed(size=1500)
    rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))
    step = 200
    rig.send(sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(0, image[:step]))
    # the chunk at 200 is lost on the line; the next one tells the device where to resume
    status = one(rig.send(sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(400, image[400:600])))
    assert (status.status, status.next_offset) == (sl.UPDATE_REFUSED_OFFSET, step)
    send_image(rig, image, start=status.next_offset, chunk=step)
    assert one(rig.send(sl.MSG_UPDATE_COMMIT)).status == sl.UPDATE_COMMITTED


def test_begin_of_the_same_image_resumes_and_of_another_starts_over() -> None:
    rig = Rig()
    begin, image = signed()
    rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))
    send_image(rig, image[:700], chunk=175)
    resumed = one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin)))  # after a link reset
    assert (resumed.status, resumed.next_offset, resumed.text) == (sl.UPDATE_READY, 700, "resuming")
    other, _ = signed("1.5.1")
    fresh = one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(other)))
    assert (fresh.status, fresh.next_offset) == (sl.UPDATE_READY, 0)


# -- power losses -----------------------------------------------------------------------------------


def test_a_power_loss_at_every_chunk_boots_the_old_image_and_a_retry_succeeds() -> None:
    begin, image = signed(size=1200)
    chunk = 100
    chunks = -(-len(image) // chunk)
    for n in range(1, chunks + 1):
        rig = Rig()
        assert (
            one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))).status
            == sl.UPDATE_READY
        )
        rig.flash.lose_power_at_chunk(n)
        with pytest.raises(PowerLoss):
            send_image(rig, image, chunk=chunk)
        rig.power_cycle()
        assert (rig.choice.version, rig.choice.trial) == (OLD, False), f"power lost at chunk {n}"
        # RAM is gone: the transfer starts over, and then goes through
        assert (
            one(rig.send(sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(0, image[:chunk]))).status
            == sl.UPDATE_REFUSED_NO_TRANSFER
        )
        assert one(rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))).next_offset == 0
        send_image(rig, image, chunk=chunk)
        assert one(rig.send(sl.MSG_UPDATE_COMMIT)).status == sl.UPDATE_COMMITTED
        assert (rig.choice.version, rig.choice.trial) == (NEW, True)


def test_a_power_loss_during_commit_boots_the_old_image() -> None:
    rig = Rig()
    begin, image = signed()
    rig.send(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))
    send_image(rig, image)
    rig.flash.lose_power_at_record()
    with pytest.raises(PowerLoss):
        rig.send(sl.MSG_UPDATE_COMMIT)
    rig.power_cycle()
    assert (rig.choice.version, rig.choice.trial) == (OLD, False)
    assert update(rig).status == sl.UPDATE_COMMITTED and rig.choice.version == NEW


def test_a_power_loss_while_confirming_boots_the_old_image_never_half_confirmed() -> None:
    rig = Rig()
    update(rig)
    rig.flash.lose_power_at_record()
    with pytest.raises(PowerLoss):
        rig.send(sl.MSG_UPDATE_CONFIRM)
    rig.power_cycle()
    assert (rig.choice.version, rig.choice.rolled_back_from) == (OLD, NEW)


def test_torn_boot_records_lose_to_the_whole_one() -> None:
    flash = bl.Flash(1024)
    flash.install_factory(build_image(OLD))
    bl.write_boot_record(flash, bl.BootRecord(0, 1))
    assert bl.read_boot_record(flash).active == 1
    raw = bl.pack_record(bl.BootRecord(9, 0))
    for cut in range(len(raw)):
        assert bl.unpack_record(raw[:cut]) is None
    flipped = bytes((raw[0], raw[1] ^ 1)) + raw[2:]
    assert bl.unpack_record(flipped) is None
    assert bl.read_boot_record(bl.Flash(1024)).active == 0  # never written: slot a
