"""The bootloader in the simulator on a real pty, spoken to with plain pyserial and the codec (no
device code): an image built and signed by ``resonera-hwsim image build``, sent frame by frame;
the simulator's control commands for the update faults."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import wait_until

from resonera.common import serial_link as sl
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.scenario import CommandError, execute
from resonera.hardware.sim import Simulator, build_image, public_key_hex, sign_image

# The simulator's own watchdogs run against real time while the frames go back and forth.
pytestmark = pytest.mark.realtime

HWSIM = str(Path(sys.executable).with_name("resonera-hwsim"))
KEY = Ed25519PrivateKey.generate()


class Peer:
    """A minimal device: pyserial, the codec, and what arrived."""

    def __init__(self, path: str) -> None:
        self.port = serial.serial_for_url(path, baudrate=115200, timeout=0)
        self.port.reset_input_buffer()
        self.decoder = sl.FrameDecoder(synced=False)
        self.frames: list[sl.Frame] = []
        self.seq = 0

    def send(self, msg_type: int, body: bytes = b"") -> None:
        self.port.write(sl.encode_frame(msg_type, self.seq, body))
        self.seq += 1

    def take(self, msg_type: int) -> list[sl.Frame]:
        got = [e for e in self.decoder.feed(self.port.read(65536)) if isinstance(e, sl.Frame)]
        self.frames += got
        found = [f for f in self.frames if f.type == msg_type]
        self.frames = [f for f in self.frames if f.type != msg_type]
        return found

    def answer(self, msg_type: int, body: bytes = b"") -> sl.UpdateStatus:
        self.send(msg_type, body)
        found = self.wait_for(sl.MSG_UPDATE_STATUS, "UPDATE_STATUS")
        return sl.unpack_update_status(found[0].body)

    def wait_for(self, msg_type: int, what: str) -> list[sl.Frame]:
        found: list[sl.Frame] = []

        def arrived() -> bool:
            found.extend(self.take(msg_type))
            return bool(found)

        wait_until(arrived, 5, what)
        return found


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = BoardConfig(firmware_version="1.4.2", update_public_key=public_key_hex(KEY))
    with Simulator(config) as simulator:
        yield simulator
    assert simulator.error is None


@pytest.fixture
def peer(sim: Simulator) -> Iterator[Peer]:
    p = Peer(sim.port_path)
    yield p
    p.port.close()


def _built_image(tmp_path: Path, version: str) -> tuple[bytes, bytes]:
    key_file = tmp_path / "update.pem"
    key_file.write_bytes(
        KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out = tmp_path / "fw.rsfw"
    command = [HWSIM, "image", "build", "--version", version, "--key", str(key_file)]
    done = subprocess.run(
        [*command, "--out", str(out), "--size", "3000"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"firmware {version}" in done.stdout
    printed = subprocess.run(
        [HWSIM, "image", "key", "--key", str(key_file)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.stdout.strip() == public_key_hex(KEY)
    return sl.unpack_signed_image(out.read_bytes())


def test_a_built_image_goes_over_the_pty_and_the_new_version_says_hello(
    sim: Simulator, peer: Peer, tmp_path: Path
) -> None:
    signature, image = _built_image(tmp_path, "1.5.0")
    begin = sl.UpdateBegin(len(image), hashlib.sha256(image).digest(), "1.5.0", signature)
    peer.send(sl.MSG_HEARTBEAT, sl.pack_heartbeat(0))
    assert peer.answer(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin)).status == sl.UPDATE_READY
    assert execute(sim, "firmware?").endswith("updating=yes rollbacks=0")
    peer.send(sl.MSG_ARM)
    fault = sl.unpack_fault(peer.wait_for(sl.MSG_FAULT, "ARM refused")[0].body)
    assert fault == (sl.FAULT_UPDATING, "arm refused: updating")
    assert sim.muted
    for offset in range(0, len(image), sl.UPDATE_CHUNK_MAX):
        chunk = sl.pack_update_chunk(offset, image[offset : offset + sl.UPDATE_CHUNK_MAX])
        assert peer.answer(sl.MSG_UPDATE_CHUNK, chunk).status == sl.UPDATE_CHUNK_OK
        assert sim.muted
    peer.take(sl.MSG_HELLO)
    assert peer.answer(sl.MSG_UPDATE_COMMIT).status == sl.UPDATE_COMMITTED
    hellos = peer.wait_for(sl.MSG_HELLO, "HELLO")
    assert sl.unpack_hello(hellos[0].body).firmware_version == "1.5.0"  # said unasked, at boot
    assert execute(sim, "firmware?") == "ok firmware=1.5.0 slot=b trial=yes updating=no rollbacks=0"
    assert peer.answer(sl.MSG_UPDATE_CONFIRM).status == sl.UPDATE_CONFIRMED
    assert execute(sim, "firmware?").startswith("ok firmware=1.5.0 slot=b trial=no")
    assert "firmware=1.5.0 slot=b protocol=v1.5" in execute(sim, "status")


def test_a_crashing_image_is_rolled_back_by_the_watchdog(sim: Simulator, peer: Peer) -> None:
    signature, image = sl.unpack_signed_image(sign_image(KEY, build_image("1.5.0")))
    begin = sl.UpdateBegin(len(image), hashlib.sha256(image).digest(), "1.5.0", signature)
    assert execute(sim, "fail-image 1.5.0") == "ok firmware 1.5.0 crashes at boot"
    peer.answer(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(begin))
    peer.answer(sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(0, image))
    assert peer.answer(sl.MSG_UPDATE_COMMIT).status == sl.UPDATE_COMMITTED
    wait_until(lambda: sim.rollbacks == ["1.5.0"], 5, "the rollback")
    assert execute(sim, "firmware?") == "ok firmware=1.4.2 slot=a trial=no updating=no rollbacks=1"
    assert sim.muted


def test_update_fault_commands_check_their_arguments(sim: Simulator) -> None:
    assert execute(sim, "power-loss-at-chunk 4") == "ok power loss in chunk 4 from now"
    assert execute(sim, "power-loss-in-commit") == "ok"
    assert execute(sim, "corrupt-write") == "ok"
    with pytest.raises(CommandError, match="usage: fail-image VERSION"):
        execute(sim, "fail-image")
    with pytest.raises(CommandError, match="expected one count from 1 to 1000"):
        execute(sim, "power-loss-at-chunk zero")


def test_image_build_refuses_a_key_that_is_not_one(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("hello")
    done = subprocess.run(
        [
            HWSIM,
            "image",
            "build",
            "--version",
            "2",
            "--key",
            str(bad),
            "--out",
            str(tmp_path / "x"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "is not an unencrypted PEM private key" in done.stderr
    assert not (tmp_path / "x").exists()
