"""The safety MCU's bootloader: two image slots, a boot record, and the update frames (v1.5).

Plain Python that runs on MicroPython and on CPython (the simulator), like ``logic.py``. No I/O of
its own: the flash is a ``Flash`` object (in memory here; the simulator keeps one across simulated
power cycles and injects power losses into its writes), the signature check is a callable given
by whoever builds the ``Bootloader`` (on CPython the simulator passes one built on
``cryptography``'s Ed25519; on the board ``main.py`` passes ``ed25519.MicroEd25519Check``).

Contract (hardware/PROTOCOL.md, "Firmware update"):
- ``boot(flash)`` decides what runs at power-up: the image on trial while it has a boot left,
  otherwise the confirmed one. A trial image that is never confirmed loses its last boot at the
  next reset, which boots the confirmed image again (like MCUboot's "test" images).
- The boot record is written last and only whole: two copies, each with a sequence number and a
  CRC, the newer valid one wins, and a write replaces the older copy. A power loss while one is
  written leaves the other, so a power loss at any chunk or during a commit boots the old image.
- ``Bootloader`` answers every update frame with an ``UpdateStatus``: UPDATE_BEGIN (refused while
  sound is allowed or on a trial image; the signature is checked before anything is erased),
  UPDATE_CHUNK (in order only, into the slot that is not running), UPDATE_COMMIT (size, SHA-256,
  header and signature checked again, then the new slot goes on trial and the caller reboots),
  UPDATE_ABORT (drops the transfer; on a trial image: rolls back now) and UPDATE_CONFIRM (the
  trial image becomes the confirmed one). A BEGIN of the image being sent resumes it.
"""

import hashlib  # the RP2040 port of MicroPython has hashlib.sha256 too
import struct

try:
    from resonera.common import serial_link as sl
except ImportError:  # on the MCU: flat files next to main.py
    import serial_link as sl  # type: ignore[import-not-found,no-redef]

#: Slot numbers; the names people read ("a", "b").
SLOT_NAMES = ("a", "b")
#: No slot (the boot record's trial field when nothing is on trial).
NO_SLOT = 0xFF
#: Bytes of one slot in the flash model (the RP2040 has 2 MiB of flash; 256 KiB per image slot).
DEFAULT_SLOT_SIZE = 256 * 1024

RECORD_MAGIC = b"RSBR"
_RECORD = "<4sIBBB"  # magic, sequence, confirmed slot, trial slot (NO_SLOT: none), boots left
_RECORD_SIZE = struct.calcsize(_RECORD) + 2  # + CRC-16 big-endian, as on the wire
_SHA_BLOCK = 1024


class BootRecord:
    """Which slot is confirmed (``active``), which one is on ``trial`` and how many boots it has
    left. ``seq`` orders the two copies in flash: the higher valid one is current."""

    def __init__(self, seq: int, active: int, trial: int = NO_SLOT, tries_left: int = 0) -> None:
        self.seq = seq
        self.active = active
        self.trial = trial
        self.tries_left = tries_left


def pack_record(record: BootRecord) -> bytes:
    raw = struct.pack(
        _RECORD, RECORD_MAGIC, record.seq, record.active, record.trial, record.tries_left
    )
    crc = sl.crc16_ccitt_false(raw)
    return raw + bytes((crc >> 8, crc & 0xFF))


def unpack_record(raw: bytes) -> "BootRecord | None":
    """The record in ``raw``, or None when it is empty, torn or not a record (bad CRC)."""
    if len(raw) != _RECORD_SIZE:
        return None
    body = bytes(raw[:-2])
    if sl.crc16_ccitt_false(body) != (raw[-2] << 8) | raw[-1]:
        return None
    magic, seq, active, trial, tries = struct.unpack(_RECORD, body)
    if magic != RECORD_MAGIC or active > 1 or (trial != NO_SLOT and trial > 1):
        return None
    return BootRecord(seq, active, trial, tries)


class Flash:
    """Two image slots and two copies of the boot record, in memory.

    A write MUST either complete or leave the bytes it did not reach as they were; the simulator's
    subclass breaks a write off half-way to play a power loss. An erased slot is empty."""

    def __init__(self, slot_size: int = DEFAULT_SLOT_SIZE) -> None:
        self.slot_size = slot_size
        self._slots = [bytearray(), bytearray()]
        self._records = [b"", b""]

    def erase_slot(self, slot: int) -> None:
        self._slots[slot] = bytearray()

    def write_slot(self, slot: int, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` (at most the slot's length: slots are written in order)."""
        buf = self._slots[slot]
        if offset > len(buf) or offset + len(data) > self.slot_size:
            raise ValueError("write outside slot " + SLOT_NAMES[slot])
        buf[offset : offset + len(data)] = data

    def read_slot(self, slot: int, offset: int, length: int) -> bytes:
        return bytes(self._slots[slot][offset : offset + length])

    def slot_length(self, slot: int) -> int:
        return len(self._slots[slot])

    def read_record_copy(self, index: int) -> bytes:
        return self._records[index]

    def write_record_copy(self, index: int, raw: bytes) -> None:
        self._records[index] = bytes(raw)

    def install_factory(self, image: bytes) -> None:
        """A factory-fresh board: ``image`` in slot a, confirmed; slot b empty."""
        self.erase_slot(0)
        self.erase_slot(1)
        self.write_slot(0, 0, image)
        self._records = [pack_record(BootRecord(1, 0)), b""]


def read_boot_record(flash: Flash) -> BootRecord:
    """The newer valid copy; a flash with neither (never written) boots slot a."""
    best = None
    for index in (0, 1):
        record = unpack_record(flash.read_record_copy(index))
        if record is not None and (best is None or record.seq > best.seq):
            best = record
    return best if best is not None else BootRecord(0, 0)


def write_boot_record(flash: Flash, record: BootRecord) -> None:
    """Write ``record`` as the next sequence number, over the OLDER copy: a write broken off by a
    power loss leaves the newer copy, the record as it was before."""
    current = read_boot_record(flash)
    record.seq = current.seq + 1
    flash.write_record_copy(record.seq % 2, pack_record(record))


def slot_image(flash: Flash, slot: int) -> "tuple[str, int] | None":
    """``(version, size)`` of the image in ``slot``, or None when the slot holds no whole image."""
    length = flash.slot_length(slot)
    head = flash.read_slot(slot, 0, min(length, 4 + 2 + sl.MAX_TEXT + 4))
    try:
        version, size = sl.unpack_image_header(head)
    except sl.LinkProtocolError:
        return None
    return (version, size) if size <= length else None


class BootChoice:
    """What ``boot`` started: the ``slot``, its image's ``version``, whether it is on ``trial``,
    and the version a failed trial was rolled back from ("" if none was)."""

    def __init__(self, slot: int, version: str, trial: bool, rolled_back_from: str = "") -> None:
        self.slot = slot
        self.version = version
        self.trial = trial
        self.rolled_back_from = rolled_back_from


def boot(flash: Flash) -> "BootChoice | None":
    """Choose the image to run at power-up (and spend one of a trial image's boots); None when no
    slot holds a whole image (the board stays muted: nothing runs)."""
    record = read_boot_record(flash)
    rolled_back = ""
    if record.trial != NO_SLOT:
        trial = slot_image(flash, record.trial)
        if record.tries_left > 0 and trial is not None:
            record.tries_left -= 1
            write_boot_record(flash, record)
            return BootChoice(record.trial, trial[0], True)
        rolled_back = trial[0] if trial is not None else "?"
        record.trial = NO_SLOT
        record.tries_left = 0
        write_boot_record(flash, record)
    for slot in (record.active, 1 - record.active):  # the confirmed one; if it is gone, the other
        image = slot_image(flash, slot)
        if image is not None:
            return BootChoice(slot, image[0], False, rolled_back)
    return None


class SignatureCheck:
    """Checks an Ed25519 signature: ``check(public_key, message, signature)`` is True only for a
    valid one. Subclassed by whoever has Ed25519 (the simulator, with ``cryptography``)."""

    def __call__(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        raise NotImplementedError


def _status(code: int, next_offset: int = 0, text: str = "") -> "sl.UpdateStatus":
    return sl.UpdateStatus(code, next_offset, text)


class Bootloader:
    """The update frames on a running image. ``verify`` checks an Ed25519 signature (a
    ``SignatureCheck``); ``public_key`` is the pinned update key (32 raw bytes, or
    ``b""``: this board takes no update). ``running`` is what ``boot`` chose.

    ``handle`` returns ``(status, reboot)``: the caller sends the status, and reboots when asked
    (after a commit, or a trial image rolled back)."""

    def __init__(
        self,
        flash: Flash,
        running: BootChoice,
        public_key: bytes,
        verify: SignatureCheck,
        trial_boots: int = 1,
    ) -> None:
        self.flash = flash
        self.running = running
        self.public_key = bytes(public_key)
        self._verify = verify
        self.trial_boots = trial_boots
        #: The image being received (its UPDATE_BEGIN), None when no transfer is in progress.
        self.transfer: sl.UpdateBegin | None = None
        self.next_offset = 0
        #: Why the last transfer ended without a commit ("" if none did).
        self.last_refusal = ""

    @property
    def updating(self) -> bool:
        """A transfer is in progress: the output stays muted and ARM is refused."""
        return self.transfer is not None

    @property
    def trial(self) -> bool:
        """The running image is on trial: it must be confirmed or the next boot rolls it back."""
        return self.running.trial

    @property
    def target_slot(self) -> int:
        return 1 - self.running.slot

    def handle(
        self, msg_type: int, body: bytes, sound_allowed: bool
    ) -> "tuple[sl.UpdateStatus, bool]":
        """Answer one update frame; ``LinkProtocolError`` for a body that breaks the protocol."""
        if msg_type == sl.MSG_UPDATE_BEGIN:
            return self.begin(sl.unpack_update_begin(body), sound_allowed), False
        if msg_type == sl.MSG_UPDATE_CHUNK:
            offset, data = sl.unpack_update_chunk(body)
            return self.chunk(offset, data), False
        sl.check_empty(sl.MESSAGE_NAMES.get(msg_type, "update frame"), body)
        if msg_type == sl.MSG_UPDATE_COMMIT:
            status = self.commit()
            return status, status.status == sl.UPDATE_COMMITTED
        if msg_type == sl.MSG_UPDATE_ABORT:
            status = self.abort()
            return status, status.status == sl.UPDATE_ROLLING_BACK
        if msg_type == sl.MSG_UPDATE_CONFIRM:
            return self.confirm(), False
        raise sl.LinkProtocolError("type " + str(msg_type) + " is not an update frame")

    def begin(self, begin: "sl.UpdateBegin", sound_allowed: bool) -> "sl.UpdateStatus":
        current = self.transfer
        if current is not None and current.same_image(begin):
            return _status(sl.UPDATE_READY, self.next_offset, "resuming")
        if self.running.trial:
            return _status(
                sl.UPDATE_REFUSED_TRIAL, 0, "running " + self.running.version + " on trial"
            )
        if sound_allowed:
            return _status(sl.UPDATE_REFUSED_SOUND, 0, "mute before updating")
        if not 0 < begin.size <= self.flash.slot_size:
            return _status(
                sl.UPDATE_REFUSED_SIZE,
                0,
                str(begin.size) + " bytes, a slot holds " + str(self.flash.slot_size),
            )
        why = self._signature_problem(begin)
        if why:
            return _status(sl.UPDATE_REFUSED_SIGNATURE, 0, why)
        self.transfer = begin
        self.next_offset = 0
        self.flash.erase_slot(self.target_slot)
        return _status(sl.UPDATE_READY, 0, "into slot " + SLOT_NAMES[self.target_slot])

    def chunk(self, offset: int, data: bytes) -> "sl.UpdateStatus":
        begin = self.transfer
        if begin is None:
            return _status(sl.UPDATE_REFUSED_NO_TRANSFER, 0)
        if offset != self.next_offset:
            return _status(sl.UPDATE_REFUSED_OFFSET, self.next_offset, "got " + str(offset))
        if offset + len(data) > begin.size:
            return _status(
                sl.UPDATE_REFUSED_SIZE,
                self.next_offset,
                "chunk runs past " + str(begin.size) + " bytes",
            )
        self.flash.write_slot(self.target_slot, offset, data)
        self.next_offset = offset + len(data)
        return _status(sl.UPDATE_CHUNK_OK, self.next_offset)

    def commit(self) -> "sl.UpdateStatus":
        begin = self.transfer
        if begin is None:
            return _status(sl.UPDATE_REFUSED_NO_TRANSFER, 0)
        if self.next_offset < begin.size:
            return _status(sl.UPDATE_REFUSED_INCOMPLETE, self.next_offset)
        slot = self.target_slot
        if self._slot_sha256(slot, begin.size) != begin.sha256:
            return self._drop(
                sl.UPDATE_REFUSED_HASH, "slot " + SLOT_NAMES[slot] + " differs from the image sent"
            )
        image = slot_image(self.flash, slot)
        if image is None or image != (begin.version, begin.size):
            return self._drop(
                sl.UPDATE_REFUSED_IMAGE, "header does not name version " + begin.version
            )
        why = self._signature_problem(begin)
        if why:
            return self._drop(sl.UPDATE_REFUSED_SIGNATURE, why)
        record = read_boot_record(self.flash)
        record.active = self.running.slot
        record.trial = slot
        record.tries_left = self.trial_boots
        write_boot_record(self.flash, record)  # the one step that changes what boots, last
        self.transfer = None
        return _status(
            sl.UPDATE_COMMITTED, begin.size, begin.version + " in slot " + SLOT_NAMES[slot]
        )

    def abort(self) -> "sl.UpdateStatus":
        if self.running.trial:
            record = read_boot_record(self.flash)
            record.tries_left = 0  # the reset then rolls back, and boot() says from what
            write_boot_record(self.flash, record)
            return _status(sl.UPDATE_ROLLING_BACK, 0, self.running.version + " rejected")
        self.transfer = None
        self.next_offset = 0
        return _status(sl.UPDATE_ABORTED, 0)

    def confirm(self) -> "sl.UpdateStatus":
        running = self.running
        if not running.trial:  # already confirmed: a CONFIRM sent again (its answer lost) is fine
            return _status(sl.UPDATE_CONFIRMED, 0, running.version + " already confirmed")
        record = read_boot_record(self.flash)
        record.active = running.slot
        record.trial = NO_SLOT
        record.tries_left = 0
        write_boot_record(self.flash, record)
        self.running = BootChoice(running.slot, running.version, False)
        return _status(sl.UPDATE_CONFIRMED, 0, running.version)

    def drop(self, why: str) -> "sl.UpdateStatus":
        """End the transfer in progress (the caller's idle timeout): the running image stays."""
        return self._drop(sl.UPDATE_ABORTED, why)

    # -- internals -------------------------------------------------------------------------------

    def _drop(self, code: int, why: str) -> "sl.UpdateStatus":
        self.transfer = None
        self.next_offset = 0
        self.last_refusal = why
        return _status(code, 0, why)

    def _signature_problem(self, begin: "sl.UpdateBegin") -> str:
        if len(self.public_key) != 32:
            return "no update key pinned on this board"
        message = sl.update_signed_message(begin.size, begin.sha256, begin.version)
        try:
            good = self._verify(self.public_key, message, begin.signature)
        except Exception:  # a check that raises is no proof of a good signature
            good = False
        return "" if good else "not signed by the pinned update key"

    def _slot_sha256(self, slot: int, size: int) -> bytes:
        digest = hashlib.sha256()
        offset = 0
        while offset < size:  # in blocks: the MCU has no RAM for a whole image
            block = self.flash.read_slot(slot, offset, min(_SHA_BLOCK, size - offset))
            if not block:
                break
            digest.update(block)
            offset += len(block)
        return digest.digest()
