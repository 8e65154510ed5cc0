"""The bootloader's flash as files (hardware/firmware/flash_files.py, the RP2040's littlefs), on
CPython in a temporary folder: an update survives a power-up as a new ``FileFlash`` on the same
files, and a power loss at every chunk or while the boot record is written boots the old image."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resonera.common import serial_link as sl
from resonera.hardware.firmware import bootloader as bl
from resonera.hardware.firmware.ed25519 import MicroEd25519Check
from resonera.hardware.firmware.flash_files import (
    UNPACKED_MARKER,
    FileFlash,
    pack_files,
    unpack_slot,
)
from resonera.hardware.sim import build_image, sign_image
from resonera.hardware.sim_board import PowerLoss, SimFlash

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes_raw()
OLD, NEW = "1.4.2", "1.5.0"
SLOT_SIZE = 16 * 1024
CHUNK = 100


class BrownOutFileFlash(SimFlash, FileFlash):
    """``FileFlash`` with the simulator's power losses: a write broken off half-way, in the file."""

    def __init__(self, folder: Path) -> None:
        SimFlash.__init__(self, SLOT_SIZE)  # which runs FileFlash.__init__ on the current folder
        folder.mkdir(exist_ok=True)
        self.folder = str(folder)


def power_up(folder: Path) -> tuple[FileFlash, bl.Bootloader]:
    """What the board does at power-up: nothing from before but the files."""
    flash = FileFlash(SLOT_SIZE, str(folder))
    choice = bl.boot(flash)
    assert choice is not None, "nothing bootable"
    return flash, bl.Bootloader(flash, choice, PUBLIC, MicroEd25519Check())


def signed(version: str = NEW, size: int = 1200) -> tuple[sl.UpdateBegin, bytes]:
    signature, image = sl.unpack_signed_image(sign_image(KEY, build_image(version, size)))
    return sl.UpdateBegin(len(image), hashlib.sha256(image).digest(), version, signature), image


def factory(folder: Path) -> BrownOutFileFlash:
    flash = BrownOutFileFlash(folder)
    flash.install_factory(build_image(OLD))
    return flash


def send(loader: bl.Bootloader, image: bytes) -> None:
    for offset in range(0, len(image), CHUNK):
        status = loader.chunk(offset, image[offset : offset + CHUNK])
        assert status.status == sl.UPDATE_CHUNK_OK, status.describe()


def test_an_update_written_to_files_boots_on_trial_and_stays_once_confirmed(
    tmp_path: Path,
) -> None:
    factory(tmp_path)
    _, loader = power_up(tmp_path)
    begin, image = signed()
    assert loader.begin(begin, sound_allowed=False).status == sl.UPDATE_READY
    send(loader, image)
    assert loader.commit().status == sl.UPDATE_COMMITTED
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "record_0.bin",
        "record_1.bin",
        "slot_a.bin",
        "slot_b.bin",
    ]
    assert (tmp_path / "slot_b.bin").read_bytes() == image
    _, loader = power_up(tmp_path)
    assert (loader.running.version, loader.running.trial) == (NEW, True)
    assert loader.confirm().status == sl.UPDATE_CONFIRMED
    _, loader = power_up(tmp_path)
    assert (loader.running.version, loader.running.trial) == (NEW, False)


def test_a_power_loss_at_every_chunk_boots_the_old_image_and_a_retry_succeeds(
    tmp_path: Path,
) -> None:
    begin, image = signed()
    chunks = -(-len(image) // CHUNK)
    for n in range(1, chunks + 1):
        folder = tmp_path / str(n)
        flash = factory(folder)
        choice = bl.boot(flash)
        assert choice is not None
        loader = bl.Bootloader(flash, choice, PUBLIC, MicroEd25519Check())
        assert loader.begin(begin, sound_allowed=False).status == sl.UPDATE_READY
        flash.lose_power_at_chunk(n)
        with pytest.raises(PowerLoss):
            send(loader, image)
        assert (folder / "slot_b.bin").stat().st_size < len(image)  # the torn write is on disk
        _, loader = power_up(folder)
        assert (loader.running.version, loader.running.trial) == (OLD, False), f"chunk {n}"
        assert loader.chunk(0, image[:CHUNK]).status == sl.UPDATE_REFUSED_NO_TRANSFER
        assert loader.begin(begin, sound_allowed=False).next_offset == 0
        send(loader, image)
        assert loader.commit().status == sl.UPDATE_COMMITTED
        _, loader = power_up(folder)
        assert (loader.running.version, loader.running.trial) == (NEW, True), f"chunk {n}"


def test_a_power_loss_while_the_boot_record_is_written_boots_the_old_image(
    tmp_path: Path,
) -> None:
    flash = factory(tmp_path)
    choice = bl.boot(flash)
    assert choice is not None
    loader = bl.Bootloader(flash, choice, PUBLIC, MicroEd25519Check())
    begin, image = signed()
    loader.begin(begin, sound_allowed=False)
    send(loader, image)
    flash.lose_power_at_record()
    with pytest.raises(PowerLoss):
        loader.commit()
    _, loader = power_up(tmp_path)
    assert (loader.running.version, loader.running.trial) == (OLD, False)


def test_an_empty_folder_boots_nothing_and_writes_outside_a_slot_are_refused(
    tmp_path: Path,
) -> None:
    flash = FileFlash(SLOT_SIZE, str(tmp_path / "update"))
    assert bl.boot(flash) is None  # a board with no image stays muted
    with pytest.raises(ValueError, match="outside slot a"):
        flash.write_slot(0, 10, b"x")
    flash.write_slot(0, 0, b"abc")
    with pytest.raises(ValueError, match="outside slot a"):
        flash.write_slot(0, 3, bytes(SLOT_SIZE))
    assert flash.read_slot(0, 1, 5) == b"bc" and flash.slot_length(1) == 0


# -- the image body: the application's files, unpacked at power-up ---------------------------------

FIRMWARE = Path(__file__).resolve().parents[2] / "hardware" / "firmware"


def app_image(version: str) -> bytes:
    files = [(name, (FIRMWARE / name).read_bytes()) for name in ("logic.py", "config.py")]
    return sl.pack_image(version, pack_files(files))


def test_the_booted_slot_unpacks_its_files_once_and_again_after_a_torn_unpack(
    tmp_path: Path,
) -> None:
    flash = FileFlash(SLOT_SIZE * 8, str(tmp_path / "update"))
    flash.install_factory(app_image(OLD))
    signature, image = sl.unpack_signed_image(sign_image(KEY, app_image(NEW)))
    choice = bl.boot(flash)
    assert choice is not None
    loader = bl.Bootloader(flash, choice, PUBLIC, MicroEd25519Check())
    begin = sl.UpdateBegin(len(image), hashlib.sha256(image).digest(), NEW, signature)
    assert loader.begin(begin, sound_allowed=False).status == sl.UPDATE_READY
    for offset in range(0, len(image), sl.UPDATE_CHUNK_MAX):
        loader.chunk(offset, image[offset : offset + sl.UPDATE_CHUNK_MAX])
    assert loader.commit().status == sl.UPDATE_COMMITTED
    booted = bl.boot(flash)
    assert booted is not None and (booted.slot, booted.version) == (1, NEW)
    folder = tmp_path / "slot_b"
    assert unpack_slot(flash, booted.slot, str(folder)) == ["logic.py", "config.py"]
    assert (folder / "logic.py").read_bytes() == (FIRMWARE / "logic.py").read_bytes()
    assert unpack_slot(flash, booted.slot, str(folder)) == []  # already there: no flash wear
    (folder / UNPACKED_MARKER).unlink()  # a power loss before the marker was written
    (folder / "config.py").write_bytes(b"torn")
    assert unpack_slot(flash, booted.slot, str(folder)) == ["logic.py", "config.py"]
    assert (folder / "config.py").read_bytes() == (FIRMWARE / "config.py").read_bytes()


@pytest.mark.parametrize(
    "body,problem",
    [
        (b"\x08logic.py\x00\x00\x00\x10abc", "logic.py runs past the image's end"),
        (b"\x08logic.py\x00\x00", "ends in the middle of an entry"),
        (b"\x0a../evil.py\x00\x00\x00\x00", "must be a flat .py name"),
    ],
)
def test_an_image_body_that_is_no_file_archive_is_refused_with_its_reason(
    tmp_path: Path, body: bytes, problem: str
) -> None:
    flash = FileFlash(SLOT_SIZE, str(tmp_path))
    flash.install_factory(sl.pack_image(OLD, body))
    with pytest.raises(ValueError, match=re.escape(problem)):
        unpack_slot(flash, 0, str(tmp_path / "slot_a"))
    with pytest.raises(ValueError, match=re.escape("a flat .py name")):
        pack_files([("sub/logic.py", b"")])


# -- main.py's boot step, run by CPython on the files as copied onto a board -----------------------

# The RP2040's ``machine`` and ``time.ticks_ms``, just enough for main.py to boot and build its
# board; the watchdog's construction ends the run (it comes right before the endless loop) and
# says which image booted and where ``logic`` was imported from.
MACHINE_STAND_IN = """
import sys, time
time.ticks_ms = lambda: int(time.monotonic() * 1000)
time.ticks_diff = lambda a, b: a - b
class _Part:
    OUT = IN = PULL_UP = 0
    def __init__(self, *args, **kwargs): pass
    def __getattr__(self, name): return lambda *args, **kwargs: 0
Pin = UART = ADC = PWM = _Part
def reset(): raise SystemExit("reset")
class WDT:
    def __init__(self, timeout):
        main = sys.modules["__main__"]
        choice = main._CHOICE
        print("booted", choice.version, "slot", choice.slot, "trial", choice.trial)
        print("logic from", sys.modules["logic"].__file__)
        raise SystemExit(0)
"""
BOARD_FILES = [
    FIRMWARE / "main.py",
    FIRMWARE / "bootloader.py",
    FIRMWARE / "ed25519.py",
    FIRMWARE / "flash_files.py",
    FIRMWARE / "logic.py",
    FIRMWARE / "config.py",
    FIRMWARE.parents[1] / "common" / "serial_link.py",
]


def run_main(board: Path) -> str:
    # -S: no site-packages, so nothing of resonera's package; only the flat files, as on the board
    done = subprocess.run(
        [sys.executable, "-S", "-E", "main.py"],
        cwd=board,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_main_boots_the_factory_image_then_an_update_from_its_own_slot(tmp_path: Path) -> None:
    for path in BOARD_FILES:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "machine.py").write_text(MACHINE_STAND_IN)
    (tmp_path / "board.json").write_text('{"firmware_version": "' + OLD + '"}')
    out = run_main(tmp_path)  # the first power-up: slot a made from the root's files
    assert "booted " + OLD + " slot 0 trial False" in out
    assert "slot_a/logic.py" in out.split("logic from ")[1]
    flash = FileFlash(bl.DEFAULT_SLOT_SIZE, str(tmp_path / "update"))
    choice = bl.boot(flash)
    assert choice is not None
    loader = bl.Bootloader(flash, choice, PUBLIC, MicroEd25519Check())
    signature, image = sl.unpack_signed_image(sign_image(KEY, app_image(NEW)))
    begin = sl.UpdateBegin(len(image), hashlib.sha256(image).digest(), NEW, signature)
    assert loader.begin(begin, sound_allowed=False).status == sl.UPDATE_READY
    assert loader.chunk(0, image).status == sl.UPDATE_CHUNK_OK
    assert loader.commit().status == sl.UPDATE_COMMITTED
    out = run_main(tmp_path)
    assert "booted " + NEW + " slot 1 trial True" in out
    assert "slot_b/logic.py" in out.split("logic from ")[1]
    out = run_main(tmp_path)  # never confirmed: rolled back
    assert "booted " + OLD + " slot 0 trial False" in out
