"""The bootloader's ``Flash`` kept in files: the RP2040 board's own filesystem (littlefs).

On the board, MicroPython's filesystem already sits in the flash, so the two image slots and the
boot record's two copies are files in one folder rather than raw flash sectors:
``slot_a.bin``, ``slot_b.bin``, ``record_0.bin`` and ``record_1.bin``. Every write is flushed
before it returns (littlefs commits a file's changes when it is flushed or closed, and a power loss
before that leaves the file as it was), and a record copy is written to a temporary file and
renamed over the old copy, so a copy is never half-written; the bootloader's two copies still
cover a power loss between the rename and the next write.

Uses ``os`` only, so the same file runs on CPython (the tests, in a temporary folder).
"""

import os

try:
    from resonera.hardware.firmware.bootloader import (
        DEFAULT_SLOT_SIZE,
        SLOT_NAMES,
        BootRecord,
        Flash,
        pack_record,
    )
except ImportError:  # on the MCU: flat files next to main.py
    from bootloader import (  # type: ignore[import-not-found,no-redef]
        DEFAULT_SLOT_SIZE,
        SLOT_NAMES,
        BootRecord,
        Flash,
        pack_record,
    )

_ST_SIZE = 6  # os.stat's size field: MicroPython's stat is a plain tuple


def _sync(handle: "object") -> None:
    handle.flush()  # type: ignore[attr-defined]
    fsync = getattr(os, "fsync", None)  # CPython; MicroPython's flush already commits (littlefs)
    if fsync is not None:
        fsync(handle.fileno())  # type: ignore[attr-defined]


class FileFlash(Flash):
    """Two image slots and two boot-record copies as files in ``folder`` ("" for the current
    folder, the board's root). Nothing is kept in RAM: a new ``FileFlash`` on the same folder
    (the next power-up) sees exactly what the last one wrote."""

    def __init__(self, slot_size: int = DEFAULT_SLOT_SIZE, folder: str = "") -> None:
        super().__init__(slot_size)
        self.folder = folder
        if folder:
            try:  # noqa: SIM105 - MicroPython has no contextlib
                os.mkdir(folder)
            except OSError:  # it exists (MicroPython has no exist_ok)
                pass

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
