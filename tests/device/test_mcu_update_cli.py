"""``resonera-device mcu-update FILE`` as a technician runs it at the bench: the real command, the
simulated MCU on its pty, a firmware image signed with the key its board pins. It prints each step
and ends with the firmware the MCU runs; a second run of the same image, a file that is not an
image are refused with one line each."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from device_peer import config_file

from resonera.device.settings import DeviceSettings
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.sim import Simulator, build_image, public_key_hex, sign_image

# the MCU's heartbeat watchdog (250 ms) runs while the command holds the port
pytestmark = pytest.mark.realtime

BIN = Path(sys.executable).parent / "resonera-device"
KEY = Ed25519PrivateKey.generate()
OLD, NEW = "1.4.2", "1.5.1"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = BoardConfig(
        board_id="bench-board", firmware_version=OLD, update_public_key=public_key_hex(KEY)
    )
    with Simulator(config) as simulator:
        yield simulator
    assert simulator.error is None


def mcu_update(config: Path, image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "mcu-update", str(image), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_bench_command_flashes_the_mcu_and_refuses_what_it_should(
    sim: Simulator, tmp_path: Path
) -> None:
    settings = DeviceSettings.model_validate(
        {"device_id": "bench-1", "data_dir": tmp_path / "data", "serial_url": sim.port_path}
    )
    config = config_file(settings, tmp_path / "device.toml")
    image = tmp_path / f"firmware-{NEW}.signed"
    image.write_bytes(sign_image(KEY, build_image(NEW, 6 * 1024)))

    done = mcu_update(config, image)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"installing  {OLD} -> {NEW}")
    assert lines[-1].startswith(f"the safety MCU runs firmware {NEW} (was {OLD})")

    again = mcu_update(config, image)  # the MCU's HELLO now names the new firmware
    assert again.returncode == 1
    assert f"already runs firmware {NEW}" in again.stderr

    notes = tmp_path / "notes.signed"
    notes.write_bytes(b"not an image")
    refused = mcu_update(config, notes)
    assert refused.returncode == 1
    assert "notes.signed" in refused.stderr and "Traceback" not in refused.stderr
