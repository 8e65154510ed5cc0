"""The bootloader's ``Flash`` kept in files: the RP2040 board's own filesystem (littlefs).

On the board, MicroPython's filesystem already sits in the flash, so the two image slots and the
boot record's two copies are files in one folder rather than raw flash sectors:
``slot_a.bin``, ``slot_b.bin``, ``record_0.bin`` and ``record_1.bin``. Every write is flushed
before it returns (littlefs commits a file's changes when it is flushed or closed, and a power loss
before that leaves the file as it was), and a record copy is written to a temporary file and
renamed over the old copy, so a copy is never half-written; the bootloader's two copies still
cover a power loss between the rename and the next write.

An image's body is the application's flat ``.py`` files as a simple archive (``pack_files``:
per file a name length byte, the name, a big-endian 32-bit length, the bytes); at power-up
``unpack_slot`` writes the booted slot's files into that slot's folder, and main.py imports the
application from there. What stays in the board's root and never changes by an update: main.py,
bootloader.py, ed25519.py, flash_files.py and serial_link.py (hardware/README.md, "On a real board").

Uses ``os`` (and hashlib, struct) only, so the same file runs on CPython (the tests, in a
temporary folder).
"""

import hashlib
import os
import struct

try:
    from resonera.common import serial_link as sl
    from resonera.hardware.firmware.bootloader import (
        DEFAULT_SLOT_SIZE,
        SLOT_NAMES,
        BootRecord,
        Flash,
        pack_record,
        slot_image,
    )
except ImportError:  # on the MCU: flat files next to main.py
    import serial_link as sl  # type: ignore[import-not-found,no-redef]
    from bootloader import (  # type: ignore[import-not-found,no-redef]
        DEFAULT_SLOT_SIZE,
        SLOT_NAMES,
        BootRecord,
        Flash,
        pack_record,
        slot_image,
    )

_ST_SIZE = 6  # os.stat's size field: MicroPython's stat is a plain tuple


def _sync(handle: "object") -> None:
    handle.flush()  # type: ignore[attr-defined]
    fsync = getattr(os, "fsync", None)  # CPython; MicroPython's flush already commits (littlefs)
    if fsync is not None:
        fsync(handle.fileno())  # type: ignore[attr-defined]


def _make_folder(folder: str) -> None:
    try:  # noqa: SIM105 - MicroPython has no contextlib
        os.mkdir(folder)
    except OSError:  # it exists (MicroPython's mkdir has no exist_ok)
        pass


def _remove(path: str) -> None:
    try:  # noqa: SIM105 - MicroPython has no contextlib
        os.remove(path)
    except OSError:  # there was none
        pass


class FileFlash(Flash):
    """Two image slots and two boot-record copies as files in ``folder`` ("" for the current
    folder, the board's root). Nothing is kept in RAM: a new ``FileFlash`` on the same folder
    (the next power-up) sees exactly what the last one wrote."""

    def __init__(self, slot_size: int = DEFAULT_SLOT_SIZE, folder: str = "") -> None:
        super().__init__(slot_size)
        self.folder = folder
        if folder:
            _make_folder(folder)

    def path(self, name: str) -> str:
        return self.folder + "/" + name if self.folder else name

    def slot_path(self, slot: int) -> str:
        return self.path("slot_" + SLOT_NAMES[slot] + ".bin")

    def record_path(self, index: int) -> str:
        return self.path("record_" + str(index) + ".bin")

    def erase_slot(self, slot: int) -> None:
        with open(self.slot_path(slot), "wb") as handle:
            _sync(handle)

    def write_slot(self, slot: int, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` (at most the slot's length: slots are written in order)."""
        length = self.slot_length(slot)
        if offset > length or offset + len(data) > self.slot_size:
            raise ValueError("write outside slot " + SLOT_NAMES[slot])
        with open(self.slot_path(slot), "r+b" if length else "wb") as handle:
            handle.seek(offset)
            handle.write(data)
            _sync(handle)

    def read_slot(self, slot: int, offset: int, length: int) -> bytes:
        try:
            with open(self.slot_path(slot), "rb") as handle:
                handle.seek(offset)
                return bytes(handle.read(length))
        except OSError:  # never written: an empty slot
            return b""

    def slot_length(self, slot: int) -> int:
        try:
            return int(os.stat(self.slot_path(slot))[_ST_SIZE])
        except OSError:
            return 0

    def read_record_copy(self, index: int) -> bytes:
        try:
            with open(self.record_path(index), "rb") as handle:
                return bytes(handle.read())
        except OSError:
            return b""

    def write_record_copy(self, index: int, raw: bytes) -> None:
        final = self.record_path(index)
        temp = final + ".tmp"
        with open(temp, "wb") as handle:
            handle.write(raw)
            _sync(handle)
        os.rename(temp, final)

    def install_factory(self, image: bytes) -> None:
        """A factory-fresh board: ``image`` in slot a, confirmed; slot b empty (written through
        the files: ``Flash.install_factory`` sets its in-memory records directly)."""
        self.erase_slot(0)
        self.erase_slot(1)
        self.write_slot(0, 0, image)
        self.write_record_copy(0, pack_record(BootRecord(1, 0)))
        self.write_record_copy(1, b"")


# -- the image body: the application's files -------------------------------------------------------

_BLOCK = 1024
#: The file in a slot's folder naming the image unpacked there (its SHA-256), written last.
UNPACKED_MARKER = "unpacked.sha256"


def _check_name(name: str) -> None:
    raw = name.encode("utf-8")
    if not name.endswith(".py") or "/" in name or name.startswith(".") or len(raw) > 255:
        raise ValueError(
            "an image file must be a flat .py name (no folder, at most 255 bytes): " + repr(name)
        )


def pack_files(files: "list[tuple[str, bytes]]") -> bytes:
    """The image body carrying ``files`` (``(name, content)``), to unpack with ``unpack_slot``."""
    parts = []
    for name, content in files:
        _check_name(name)
        raw = name.encode("utf-8")
        parts.append(bytes((len(raw),)) + raw + struct.pack(">I", len(content)) + bytes(content))
    return b"".join(parts)


def _slot_sha256(flash: Flash, slot: int, size: int) -> bytes:
    digest = hashlib.sha256()
    offset = 0
    while offset < size:  # in blocks: the MCU has no RAM for a whole image
        block = flash.read_slot(slot, offset, min(_BLOCK, size - offset))
        if not block:
            break
        digest.update(block)
        offset += len(block)
    return bytes(digest.digest())


def _read_marker(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return bytes(handle.read())
    except OSError:
        return b""


def unpack_slot(flash: Flash, slot: int, folder: str) -> "list[str]":
    """Write the files of the image in ``slot`` into ``folder``; the names written. Nothing is
    written when ``folder`` already holds this image (its marker names the image's SHA-256), so
    a normal power-up costs one hash and no flash wear. The marker goes last: a power loss while
    unpacking leaves no marker, and the next power-up unpacks again. ``ValueError`` when the slot
    holds no image or its body is not an archive of flat .py files."""
    image = slot_image(flash, slot)
    if image is None:
        raise ValueError("slot " + SLOT_NAMES[slot] + " holds no whole image")
    version, size = image
    digest = _slot_sha256(flash, slot, size)
    marker = folder + "/" + UNPACKED_MARKER
    _make_folder(folder)
    if _read_marker(marker) == digest:
        return []
    _remove(marker)
    offset = len(sl.pack_image(version, b""))  # the header's own length
    names = []
    while offset < size:
        head = flash.read_slot(slot, offset, 1)
        name_raw = flash.read_slot(slot, offset + 1, head[0]) if head else b""
        length_raw = flash.read_slot(slot, offset + 1 + len(name_raw), 4)
        if not head or len(name_raw) != head[0] or len(length_raw) != 4:
            raise ValueError("image " + version + ": its file list ends in the middle of an entry")
        name = bytes(name_raw).decode("utf-8")
        _check_name(name)
        length = struct.unpack(">I", bytes(length_raw))[0]
        start = offset + 1 + len(name_raw) + 4
        if start + length > size:
            raise ValueError("image " + version + ": " + name + " runs past the image's end")
        with open(folder + "/" + name, "wb") as out:
            done = 0
            while done < length:
                block = flash.read_slot(slot, start + done, min(_BLOCK, length - done))
                out.write(block)
                done += len(block)
            _sync(out)
        names.append(name)
        offset = start + length
    with open(marker + ".tmp", "wb") as handle:
        handle.write(digest)
        _sync(handle)
    os.rename(marker + ".tmp", marker)
    return names
