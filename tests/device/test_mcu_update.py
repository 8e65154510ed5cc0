"""Updating the safety MCU's firmware through the device's own monitor: ``McuUpdater`` against the
simulator on a real pty, over pyserial. The image is signed with a real Ed25519 key pinned in the
simulated board's configuration; the simulator's flash keeps both slots across its power cycles."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import wait_until

from resonera.common import serial_link as sl
from resonera.device.hwmonitor import HardwareMonitor
from resonera.device.mcu_update import (
    McuUpdateError,
    McuUpdater,
    McuUpdateRefused,
    McuUpdateReport,
    McuUpdateResult,
    SignedImage,
    update_mcu,
)
from resonera.hardware.firmware.bootloader import NO_SLOT, read_boot_record
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.sim import Simulator, build_image, public_key_hex, sign_image

# The MCU's 250 ms heartbeat watchdog and 100 ms telemetry silence decide what the device sees.
pytestmark = pytest.mark.realtime

KEY = Ed25519PrivateKey.generate()
OLD, NEW = "1.4.2", "1.5.0"


def signed(version: str = NEW, size: int = 8 * 1024, key: Ed25519PrivateKey = KEY) -> SignedImage:
    return SignedImage.parse(sign_image(key, build_image(version, size)))


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = BoardConfig(
        board_id="update-board", firmware_version=OLD, update_public_key=public_key_hex(KEY)
    )
    with Simulator(config) as simulator:
        yield simulator
    assert simulator.error is None


@pytest.fixture
def monitor(sim: Simulator) -> Iterator[HardwareMonitor]:
    with HardwareMonitor(sim.port_path, silence_timeout_s=0.5) as mon:
        wait_until(lambda: mon.hello is not None, 5, "HELLO")
        yield mon


class MuteProbe:
    """Samples the simulated amplifier's mute line every millisecond or so, as a scope would."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.samples = 0
        self.unmuted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.samples += 1
            if not self.sim.muted:
                self.unmuted += 1

    def __enter__(self) -> MuteProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(
    monitor: HardwareMonitor, image: SignedImage
) -> tuple[McuUpdateResult, list[McuUpdateReport]]:
    steps: list[McuUpdateReport] = []
    result = McuUpdater(monitor, report=steps.append).run(image)
    return result, steps


def test_an_update_from_1_4_to_the_new_version_succeeds_and_hello_says_so(
    sim: Simulator, monitor: HardwareMonitor, tmp_path: Path
) -> None:
    assert monitor.hello is not None and monitor.hello.firmware_version == OLD
    path = tmp_path / "fw.rsfw"
    path.write_bytes(sign_image(KEY, build_image(NEW, 16 * 1024)))
    steps: list[McuUpdateReport] = []
    result = update_mcu(monitor, path, steps.append)
    assert (result.state, result.from_version, result.to_version, result.reason) == (
        "installed",
        OLD,
        NEW,
        "",
    )
    states = [step.state for step in steps]
    assert states[0] == "installing" and states[-1] == "installed"
    assert states.index("verifying") < states.index("switching")
    assert monitor.hello is not None and monitor.hello.firmware_version == NEW
    assert (sim.firmware_version, sim.running_slot, sim.on_trial) == (NEW, "b", False)
    record = read_boot_record(sim.flash)  # confirmed: every later boot runs it
    assert (record.active, record.trial) == (1, NO_SLOT) and sim.rollbacks == []
    # and a session arms it as before
    monitor.claim("session", 5.0).release()


def test_the_output_stays_muted_for_the_whole_transfer(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    at_switch: list[tuple[int, int]] = []
    updating_seen: list[bool] = []

    def on_report(step: McuUpdateReport) -> None:
        updating_seen.append(sim.updating)
        if step.state == "switching" and not at_switch:
            at_switch.append((probe.samples, probe.unmuted))

    with MuteProbe(sim) as probe:
        result = McuUpdater(monitor, report=on_report).run(signed(size=32 * 1024))
    assert result.state == "installed"
    samples, unmuted = at_switch[0]
    assert samples > 10 and unmuted == 0, "the mute line held from BEGIN to the reboot"
    assert any(updating_seen), "sampled while the MCU was receiving"
    # after the reboot the health check arms it once and mutes it again, nothing more
    assert sim.board.mute_changes == 2 and sim.muted


def test_a_power_loss_at_a_chunk_leaves_the_old_image_and_the_transfer_resumes(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    image = signed(size=24 * 1024)
    sim.power_loss_at_chunk(37)
    result, _ = run(monitor, image)
    assert sim.power_losses == 1
    assert result.state == "installed" and result.resumes >= 1
    assert sim.firmware_version == NEW


def test_a_link_that_stops_mid_transfer_resumes_where_the_mcu_is(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    def on_report(step: McuUpdateReport) -> None:
        if step.state == "installing" and step.detail.startswith(("8", "9", "10")):
            sim.stall(0.4)  # both ways: chunks and answers wait, then flow again

    updater = McuUpdater(monitor, report=on_report, status_timeout_s=0.2)
    result = updater.run(signed(size=24 * 1024))
    assert result.state == "installed" and result.resumes >= 1
    assert sim.firmware_version == NEW


def test_a_power_loss_at_a_chunk_boots_the_old_image(sim: Simulator) -> None:
    """Without the updater: the board's own view after the power loss, then a retry succeeds."""
    sim.power_loss_at_chunk(5)
    with HardwareMonitor(sim.port_path, silence_timeout_s=0.5) as monitor:
        wait_until(lambda: monitor.hello is not None, 5, "HELLO")
        updater = McuUpdater(monitor, status_timeout_s=0.3, max_resyncs=1)
        image = signed()
        monitor.send_update(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(image.begin()))
        for offset in range(0, 6 * sl.UPDATE_CHUNK_MAX, sl.UPDATE_CHUNK_MAX):
            chunk = image.image[offset : offset + sl.UPDATE_CHUNK_MAX]
            monitor.send_update(sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(offset, chunk))
        wait_until(lambda: sim.power_losses == 1 and sim.reboots == 1, 5, "the power loss")
        wait_until(lambda: sim.firmware_version == OLD and not sim.on_trial, 5, "the old image")
        wait_until(
            lambda: monitor.hello is not None and monitor.hello.firmware_version == OLD, 5, "HELLO"
        )
        assert updater.run(image).state == "installed"
    assert sim.firmware_version == NEW


def test_a_power_loss_during_commit_leaves_the_old_image(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    sim.power_loss_in_commit()
    result, _ = run(monitor, signed())
    assert result.state == "failed"
    assert "restarted before it answered the commit" in result.reason
    assert sim.firmware_version == OLD and sim.power_losses == 1
    # a retry goes through
    wait_until(lambda: monitor.hello is not None, 5, "HELLO")
    again, _ = run(monitor, signed())
    assert again.state == "installed" and sim.firmware_version == NEW


def test_a_corrupt_image_is_refused_with_its_reason_and_the_old_one_runs(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    sim.corrupt_write()
    result, _ = run(monitor, signed())
    assert result.state == "failed"
    assert "SHA-256 does not match" in result.reason
    assert sim.firmware_version == OLD and sim.reboots == 0
    monitor.claim("session", 5.0).release()  # the old image still arms


def test_an_image_signed_by_another_key_is_refused_before_anything_is_sent(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    result, _ = run(monitor, signed(key=Ed25519PrivateKey.generate()))
    assert result.state == "failed"
    assert "not signed by the pinned update key" in result.reason
    assert sim.flash.slot_writes == 0 and sim.firmware_version == OLD


def test_a_new_image_that_crashes_is_rolled_back_and_reported(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    sim.fail_image(NEW)
    result, steps = run(monitor, signed())
    assert result.state == "rolled_back"
    assert f"the new firmware {NEW} never said HELLO" in result.reason
    assert steps[-1].state == "rolled_back"
    assert sim.firmware_version == OLD and sim.rollbacks == [NEW]
    assert monitor.hello is not None and monitor.hello.firmware_version == OLD


def test_a_new_image_that_fails_its_health_check_is_rolled_back(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    def on_report(step: McuUpdateReport) -> None:
        if step.detail.startswith("health check"):
            sim.over_temperature()  # the new image reads its sensor wrong: every ARM refused

    result = McuUpdater(monitor, report=on_report, health_timeout_s=1.0).run(signed())
    assert result.state == "rolled_back"
    assert "failed its health check (ARM not answered with armed" in result.reason
    assert "over temperature" in result.reason
    assert f"runs {OLD} again" in result.reason
    assert sim.firmware_version == OLD and sim.rollbacks == [NEW]


def test_update_is_refused_while_a_session_holds_the_mcu(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    claim = monitor.claim("session", 5.0)
    with pytest.raises(McuUpdateRefused, match="in use by session"):
        McuUpdater(monitor).run(signed())
    assert not sim.muted, "the session plays on"
    claim.release()


def test_the_mcu_refuses_begin_while_sound_is_allowed(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    monitor.arm(5.0)  # armed outside any claim: the updater's own check would not see a holder
    monitor.send_update(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(signed().begin()))
    status = monitor.wait_update_status(2.0)
    assert status is not None and status.status == sl.UPDATE_REFUSED_SOUND
    assert not sim.muted and sim.flash.slot_writes == 0


def test_refusals_before_anything_is_sent(sim: Simulator, monitor: HardwareMonitor) -> None:
    with pytest.raises(McuUpdateRefused, match=f"already runs firmware {OLD}"):
        McuUpdater(monitor).run(signed(OLD))
    sim.unplug_headphones()
    wait_until(lambda: monitor.telemetry is not None and not monitor.telemetry.headphones, 2, "")
    with pytest.raises(McuUpdateRefused, match="plug them in first"):
        McuUpdater(monitor).run(signed())
    with pytest.raises(McuUpdateError, match="not a signed firmware image"):
        SignedImage.parse(build_image(NEW))


def test_an_mcu_of_protocol_1_4_has_no_bootloader() -> None:
    with Simulator(protocol_minor=4) as old, HardwareMonitor(old.port_path) as monitor:
        wait_until(lambda: monitor.hello is not None, 5, "HELLO")
        with pytest.raises(McuUpdateRefused, match=r"speaks protocol v1\.4: it has no bootloader"):
            McuUpdater(monitor).run(signed())
