"""The safety MCU's firmware carried by the agent's bundle (``device/updater/mcu.py``): a device
service in process, its safety MCU the simulator on a real pty, its broker mosquitto with a peer
that acks like the server. The service runs from slot b on trial, whose bundle left the MCU's
signed firmware in it; once the new agent passed its health check the firmware is flashed, and
each step is reported with ``component`` "mcu". An image the MCU refuses is reported failed and
never tried again for that bundle, not even at the next start; a firmware found during a session
waits for its end. One test runs the chain from ``update build --mcu-firmware`` to the flash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from device_peer import Peer, device_settings
from support import Mosquitto, wait_until

from resonera.common.agent_update import (
    McuFirmware,
    check_bundle,
    extract_firmware,
    extract_wheels,
)
from resonera.common.envelope import decode_envelope
from resonera.device.cli import resolve_program
from resonera.device.service import DeviceService
from resonera.device.settings import DeviceSettings
from resonera.device.updater.slots import FIRMWARE_FILE, MARKER, AgentSlots, Trial
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.sim import Simulator, build_image, public_key_hex, sign_image
from resonera.provisioning.update_build import UpdateBuildError, read_signed_firmware

# the MCU's watchdogs and the health checks run on real time
pytestmark = [pytest.mark.realtime, pytest.mark.real_clock]

KEY = Ed25519PrivateKey.generate()
FOREIGN = Ed25519PrivateKey.generate()
OLD, NEW = "1.5.0", "1.6.0"
SHA = "b" * 64
ROLLOUT = "rollout-mcu"


@dataclass
class Device:
    sim: Simulator
    settings: DeviceSettings
    slots: AgentSlots
    peer: Peer

    def service(self) -> DeviceService:
        """A started service that runs from slot b (as the launcher starts the new agent)."""
        service = DeviceService(self.settings, resolve_program)
        service.updates.prefix = self.slots.path("b")
        service.start()
        return service

    def mcu_reports(self) -> list[dict[str, Any]]:
        bodies = [e.body for e in self.peer.of_kind("update")]
        return [b for b in bodies if b.get("component") == "mcu"]


@pytest.fixture
def device(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Device]:
    with device_on(mosquitto, tmp_path, KEY) as made:
        yield made


@contextmanager
def device_on(mosquitto: Mosquitto, tmp_path: Path, mcu_key: Ed25519PrivateKey) -> Iterator[Device]:
    """A device whose MCU (the simulator, at ``OLD``) pins ``mcu_key``, its agent venv slot a."""
    board = BoardConfig(
        board_id="ota-board", firmware_version=OLD, update_public_key=public_key_hex(mcu_key)
    )
    peer = Peer(mosquitto)
    with Simulator(board) as sim:
        settings = device_settings(
            mosquitto,
            tmp_path,
            f"mcu-ota-{tmp_path.name[-6:]}",
            simulation=False,
            serial_url=sim.port_path,
        )
        slots = AgentSlots.of(settings.data_dir)
        slots.adopt(Path(sys.prefix))
        yield Device(sim, settings, slots, peer)
        assert sim.error is None
    peer.close()


def new_slot_with_firmware(slots: AgentSlots, firmware: bytes) -> None:
    """Slot b as a bundle carrying ``firmware`` leaves it prepared, then switched to on trial."""
    slots.path("b").mkdir()
    (slots.path("b") / FIRMWARE_FILE).write_bytes(firmware)
    marker = {"version": "0.2.0", "sha256": SHA, "update_keys": [], "rollout": ROLLOUT}
    (slots.path("b") / MARKER).write_text(json.dumps(marker))
    slots.switch_to_trial(Trial("b", "0.2.0", "0.1.0", ROLLOUT, SHA, 60.0))


def test_the_new_agent_flashes_the_firmware_of_its_bundle_once_it_is_healthy(
    device: Device,
) -> None:
    new_slot_with_firmware(device.slots, sign_image(KEY, build_image(NEW, 16 * 1024)))
    service = device.service()
    try:
        mcu = service.updates.mcu
        assert mcu is not None
        wait_until(lambda: mcu.outcome is not None, 90, "the MCU's firmware update")
        assert mcu.outcome == "installed"
        # the agent was confirmed first; the MCU now says HELLO with the new firmware
        assert device.slots.state()["good"] == {"slot": "b", "version": "0.2.0"}
        hello = service.monitor.hello if service.monitor is not None else None
        assert hello is not None and hello.firmware_version == NEW
        assert (device.sim.firmware_version, device.sim.on_trial) == (NEW, False)
        wait_until(
            lambda: any(r["state"] == "installed" for r in device.mcu_reports()),
            30,
            "the MCU's installed report at the server",
        )
    finally:
        service.close()
    reports = device.mcu_reports()
    assert [r["state"] for r in reports] == ["installing", "verifying", "switching", "installed"]
    assert {(r["from_version"], r["to_version"], r["rollout"]) for r in reports} == {
        (OLD, NEW, ROLLOUT)
    }
    agent = [e.body for e in device.peer.of_kind("update") if e.body.get("component") == "agent"]
    assert [(r["state"], r["to_version"]) for r in agent] == [("installed", "0.2.0")]


def test_a_foreign_signed_firmware_is_refused_reported_failed_and_never_tried_again(
    device: Device,
) -> None:
    new_slot_with_firmware(device.slots, sign_image(FOREIGN, build_image(NEW, 8 * 1024)))
    service = device.service()
    try:
        mcu = service.updates.mcu
        assert mcu is not None
        wait_until(lambda: mcu.outcome is not None, 90, "the MCU's firmware update")
        assert mcu.outcome == "failed"
        wait_until(
            lambda: any(r["state"] == "failed" for r in device.mcu_reports()),
            30,
            "the MCU's failed report at the server",
        )
    finally:
        service.close()
    assert device.sim.firmware_version == OLD  # the old image runs, never switched
    [failed] = [r for r in device.mcu_reports() if r["state"] == "failed"]
    assert (failed["from_version"], failed["to_version"]) == (OLD, NEW)
    assert "signature" in failed["reason"]
    assert device.slots.firmware_failure("b") is not None

    # the next start of the same agent (off trial now) does not send the image again
    again = device.service()
    try:
        second = again.updates.mcu
        assert second is not None
        wait_until(lambda: second.outcome is not None, 30, "the firmware's second look")
        assert second.outcome == "failed"
        queued = [decode_envelope(m.payload).body for m in again.store.pending(limit=100)]
        assert not [b for b in queued if b.get("component") == "mcu"]
    finally:
        again.close()
    assert device.sim.firmware_version == OLD
    assert [r["state"] for r in device.mcu_reports()].count("failed") == 1


def test_a_firmware_found_during_a_session_is_flashed_only_after_it_ends(device: Device) -> None:
    new_slot_with_firmware(device.slots, b"")  # the agent's trial; its firmware comes below
    (device.slots.path("b") / FIRMWARE_FILE).unlink()
    service = device.service()
    try:
        mcu = service.updates.mcu
        assert mcu is not None
        wait_until(lambda: mcu.outcome == "none", 60, "the agent confirmed, no firmware")
        assert service.play("demo-alpha").startswith("ok playing")
        # what a start finds in the slot (a firmware a power loss left unflashed)
        image = sign_image(KEY, build_image(NEW, 8 * 1024))
        (device.slots.path("b") / FIRMWARE_FILE).write_bytes(image)
        mcu.outcome = None
        mcu.start("b")
        wait_until(lambda: mcu.outcome is not None, 120, "the firmware update after the session")
        assert mcu.outcome == "installed" and device.sim.firmware_version == NEW
        wait_until(lambda: len(device.mcu_reports()) == 4, 30, "the MCU's reports at the server")
    finally:
        service.close()
    [session] = device.peer.of_kind("session")
    assert session.body["outcome"] == "completed"  # never cut short by the update
    mcu_seqs = [e.seq for e in device.peer.of_kind("update") if e.body.get("component") == "mcu"]
    assert min(mcu_seqs) > session.seq  # the update began once the session was over


def test_a_bundle_built_with_the_firmware_prepares_a_slot_whose_agent_flashes_it(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The whole chain but the download and the launcher: ``update build --mcu-firmware``, the
    device's check, the slot prepared (a real venv), then the new agent on trial flashes it."""
    from updates_support import REPO, bundle_target, update_key

    key = update_key()
    signed = tmp_path / "safety-1.6.0.signed"
    signed.write_bytes(sign_image(key.private, build_image(NEW, 8 * 1024)))
    options = {
        "--update-key": key.directory,
        "--source": REPO,
        "--version": "0.2.0",
        "--out": tmp_path / "out",
        "--mcu-firmware": signed,
    }
    argv = [Path(sys.prefix) / "bin" / "resonera-provision", "update", "build"]
    built = subprocess.run(
        [*map(str, argv), *(str(x) for pair in options.items() for x in pair)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "RESONERA_CA_PASSPHRASE": key.passphrase.decode()},
    )
    assert built.returncode == 0, built.stderr
    assert f"safety MCU firmware {NEW}" in built.stdout
    bundle = tmp_path / "out" / "resonera-agent-0.2.0.tar"
    target = bundle_target(bundle, "0.2.0", ROLLOUT)
    verified = check_bundle(bundle, target=target, pinned=key.pinned(), running_version="0.1.0")
    assert verified.manifest.mcu_firmware == McuFirmware("firmware/mcu-firmware.signed", NEW)
    with device_on(mosquitto, tmp_path, key.private) as device:
        slot = device.slots.prepare(
            "0.2.0",
            target.sha256,
            lambda folder: extract_wheels(verified, folder),
            firmware_into=lambda file: extract_firmware(verified, file),
            rollout=ROLLOUT,
        )
        assert slot == "b"
        assert device.slots.path("b").joinpath(FIRMWARE_FILE).read_bytes() == signed.read_bytes()
        device.slots.switch_to_trial(Trial("b", "0.2.0", "0.1.0", ROLLOUT, target.sha256, 60.0))
        service = device.service()
        try:
            mcu = service.updates.mcu
            assert mcu is not None
            wait_until(lambda: mcu.outcome is not None, 90, "the MCU's firmware update")
            assert mcu.outcome == "installed" and device.sim.firmware_version == NEW
            wait_until(lambda: len(device.mcu_reports()) == 4, 30, "the reports at the server")
        finally:
            service.close()
        assert {r["rollout"] for r in device.mcu_reports()} == {ROLLOUT}


def test_update_build_takes_only_a_firmware_signed_by_its_update_key(tmp_path: Path) -> None:
    signed = tmp_path / "fw.signed"
    signed.write_bytes(sign_image(KEY, build_image(NEW, 1024)))
    version, data = read_signed_firmware(signed, KEY)
    assert (version, data) == (NEW, signed.read_bytes())
    with pytest.raises(UpdateBuildError, match="is not signed by this update key"):
        read_signed_firmware(signed, FOREIGN)
    raw = tmp_path / "fw.rsfw"
    raw.write_bytes(build_image(NEW, 1024))  # never signed
    with pytest.raises(UpdateBuildError, match="is not a signed MCU firmware image"):
        read_signed_firmware(raw, KEY)
