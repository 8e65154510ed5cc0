"""HardwareMonitor against the simulator on a real pty, over pyserial: the production code path."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_until

from resonera.common import serial_link as sl
from resonera.common.errors import ResoneraError
from resonera.device.hwmonitor import HardwareMonitor, HardwareNotReady
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.sim import Simulator

# Times the safety MCU's watchdogs or measures recorded sound against real time: the main pass
# only (the dates of their sessions are checked under faketime by the sessions' other tests).
pytestmark = pytest.mark.realtime


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(BoardConfig(board_id="test-board", firmware_version="9.8.7")) as simulator:
        yield simulator
    assert simulator.error is None


@pytest.fixture
def monitor(sim: Simulator) -> Iterator[HardwareMonitor]:
    # Tolerant telemetry timeout: these tests are about other causes; a loaded machine starving
    # the simulator's thread must not turn them into "no TELEMETRY". The 100 ms default is
    # tested by test_silent_mcu_withdraws_consent and tests/device/test_hwmonitor_faults.py.
    with HardwareMonitor(sim.port_path, silence_timeout_s=0.5) as mon:
        yield mon


def test_arm_gives_consent_and_hello(sim: Simulator, monitor: HardwareMonitor) -> None:
    assert not monitor.consent
    hello = monitor.arm(timeout_s=5.0)
    assert monitor.consent
    assert monitor.reason == ""
    assert (hello.board_id, hello.firmware_version) == ("test-board", "9.8.7")
    assert hello.limits.max_amp_temp_c == 85.0
    assert monitor.hello == hello
    assert not sim.muted


def test_over_temperature_withdraws_consent(sim: Simulator, monitor: HardwareMonitor) -> None:
    changes: list[tuple[bool, str]] = []
    monitor.add_listener(lambda consent, reason: changes.append((consent, reason)))
    monitor.arm(timeout_s=5.0)
    sim.over_temperature()
    wait_until(lambda: not monitor.consent, 2, "consent withdrawn")
    assert "temperature" in monitor.reason
    wait_until(lambda: sim.muted, 2, "the simulated amplifier muted")
    wait_until(lambda: changes[-1][0] is False, 2, "the listener told")
    assert "temperature" in changes[-1][1]


def test_arm_refused_while_fault_active_then_rearm(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    monitor.arm(timeout_s=5.0)
    sim.over_current()
    wait_until(lambda: not monitor.consent, 2, "consent withdrawn")
    with pytest.raises(HardwareNotReady, match="supply over current"):
        monitor.arm(timeout_s=5.0)
    # The refusal may trail the device's own verdict (from telemetry); let it arrive before the
    # next ARM, so it is not taken as the answer to that one (see hwmonitor's known limitation).
    wait_until(
        lambda: (monitor.last_fault or (0, ""))[1].startswith("arm refused"), 2, "the refusal"
    )
    sim.reset()
    # The monitor judges an ARM by the last telemetry it has: wait for one from after the reset,
    # not the over-current frame still in hand (a race the faketime run showed).
    wait_until(
        lambda: (t := monitor.telemetry) is not None and t.supply_current_a < 1.5,
        5,
        "telemetry from after the reset",
    )
    monitor.arm(timeout_s=5.0)
    assert monitor.consent


def test_monitor_stop_lets_the_mcu_mute_on_heartbeat_loss(sim: Simulator) -> None:
    monitor = HardwareMonitor(sim.port_path)
    monitor.start()
    monitor.arm(timeout_s=5.0)
    assert not sim.muted
    monitor.stop(request_mute=False)
    assert not monitor.consent
    wait_until(lambda: sim.muted, 5, "the simulator to mute without heartbeats")
    assert sim.fault == sl.FAULT_HEARTBEAT_LOST


def test_monitor_stop_asks_for_mute(sim: Simulator) -> None:
    with HardwareMonitor(sim.port_path) as monitor:
        monitor.arm(timeout_s=5.0)
    wait_until(lambda: sim.muted, 5, "the simulator to mute")
    assert sim.controller.reason == sl.FAULT_DEVICE_REQUEST


@pytest.mark.parametrize("fault", ["send_garbage", "crc_errors"])
def test_garbled_link_withdraws_consent(
    sim: Simulator, monitor: HardwareMonitor, fault: str
) -> None:
    monitor.arm(timeout_s=5.0)
    getattr(sim, fault)()
    wait_until(lambda: not monitor.consent, 2, "consent withdrawn")
    assert monitor.reason.startswith("link garbled: 3 bad frames")


def test_corrupted_telemetry_withdraws_consent(sim: Simulator, monitor: HardwareMonitor) -> None:
    monitor.arm(timeout_s=5.0)
    sim.corrupt_crc(3)  # three TELEMETRY in a row lost: a burst, and 150 ms without telemetry
    wait_until(lambda: not monitor.consent, 2, "consent withdrawn")
    assert monitor.reason.startswith(("link garbled", "no TELEMETRY"))


def test_silent_mcu_withdraws_consent(sim: Simulator) -> None:
    with HardwareMonitor(sim.port_path) as monitor:  # the production 100 ms telemetry timeout
        monitor.arm(timeout_s=5.0)
        sim.go_silent()
        wait_until(lambda: not monitor.consent, 2, "consent withdrawn")
        assert monitor.reason == "no TELEMETRY from the safety MCU for over 100 ms"


def test_unplugged_headphones_withdraw_consent(sim: Simulator, monitor: HardwareMonitor) -> None:
    monitor.arm(timeout_s=5.0)
    sim.unplug_headphones()
    wait_until(lambda: not monitor.consent, 2, "consent withdrawn")
    assert "headphones unplugged" in monitor.reason


def test_a_failing_listener_is_not_fatal(sim: Simulator, monitor: HardwareMonitor) -> None:
    called = threading.Event()

    def bad_listener(consent: bool, reason: str) -> None:
        called.set()
        raise RuntimeError("listener bug")

    monitor.add_listener(bad_listener)
    monitor.arm(timeout_s=5.0)
    wait_until(called.is_set, 2, "the listener called")
    assert monitor.consent


def test_missing_port_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "no-such-tty"
    with pytest.raises(HardwareNotReady) as info:
        HardwareMonitor(str(path)).start()
    message = str(info.value)
    assert message == f"cannot open the safety MCU's serial port {path}: no such device"
    assert isinstance(info.value, ResoneraError)


def test_no_answer_times_out_with_reason() -> None:
    # pyserial's software loopback: our own heartbeats come back, nothing ever answers.
    with HardwareMonitor("loop://") as monitor, pytest.raises(HardwareNotReady) as info:
        monitor.arm(timeout_s=0.5)
    assert str(info.value) == "no answer from the safety MCU on loop:// within 0.5 s"


def test_arm_before_start_is_refused() -> None:
    with pytest.raises(HardwareNotReady, match="not started"):
        HardwareMonitor("loop://").arm(timeout_s=0.1)


# -- what the board is (protocol v1.4) ---------------------------------------------------------------


def test_the_monitor_knows_what_the_board_requires_before_any_arm(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    wait_until(lambda: monitor.board_info is not None, 5, "the board's BOARD")
    board = monitor.board_info
    assert board is not None and (board.requires_headphones, board.headphone_switch) == (True, True)
    assert not sim.controller.armed  # nothing asked of it


def test_a_board_that_does_without_headphones_says_so() -> None:
    with (
        Simulator(BoardConfig(require_headphones=False, headphones_pin=-1)) as sim,
        HardwareMonitor(sim.port_path, silence_timeout_s=0.5) as monitor,
    ):
        wait_until(lambda: monitor.board_info is not None, 5, "the board's BOARD")
        board = monitor.board_info
        assert board is not None and not (board.requires_headphones or board.headphone_switch)
    assert sim.error is None


def test_a_v1_3_board_never_says_and_the_monitor_arms_as_before() -> None:
    with (
        Simulator(protocol_minor=3) as sim,
        HardwareMonitor(sim.port_path, silence_timeout_s=0.5) as monitor,
    ):
        hello = monitor.arm(timeout_s=5.0)
        assert hello.protocol_minor == 3 and monitor.consent
        assert monitor.board_info is None
    assert sim.error is None
