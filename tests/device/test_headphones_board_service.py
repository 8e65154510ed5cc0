"""Headphones unplugged is decided before any check-in, on every board (issue 21, protocol v1.4):
the device service on the simulated safety MCU over its real pty, PyAudio into the PulseAudio null
sink. A v1.4 board says in BOARD that it requires headphones and can see them, so headphones never
plugged in since power-up refuse the very first play press: the light the device sends is the
fault light, no check-in question is asked and the amplifier is never unmuted. A v1.3 board never
says; the device still counts their absence once the board has shown them plugged in."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from device_peer import device_settings
from support import Mosquitto, require_tool, wait_until

from resonera.common import serial_link as sl
from resonera.common.profile import CheckInQuestion, HearingProfile
from resonera.device.refusals import REASONS
from resonera.device.service import DeviceService
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.scenario import execute
from resonera.hardware.sim import Simulator

pytestmark = pytest.mark.realtime

QUESTION = CheckInQuestion(id="calm", text="How calm?", low_label="not", high_label="very")
PROMPTS = [REASONS["headphones_unplugged"].prompt, "checkin_before", "session_start"]


@contextmanager
def service_on(sim: Simulator, mosquitto: Mosquitto, tmp_path: Path) -> Iterator[DeviceService]:
    """The device service (a one-question check-in before every session, its prompts spoken)
    on ``sim``'s pty, the MCU link up and its telemetry heard; closed on leaving."""
    from resonera.device.cli import resolve_program
    from resonera.device.prompts import build_prompts, prompts_dir
    from resonera.engine.audio.calibration import load_calibration_file, packaged_calibration

    require_tool("espeak-ng")
    settings = device_settings(
        mosquitto,
        tmp_path,
        f"phones-{tmp_path.name[-6:]}",
        simulation=False,
        serial_url=sim.port_path,
        sink="pyaudio",
        profile=HearingProfile(checkins=[QUESTION]),
    )
    build_prompts(
        prompts_dir(settings.data_dir),
        load_calibration_file(packaged_calibration()),
        sample_rate=settings.sample_rate,
        keys=PROMPTS,
    )
    service = DeviceService(settings, resolve_program)
    service.start()
    try:
        panel = service.panel
        question = panel.library.question_key(QUESTION) if panel.library is not None else ""
        wait_until(lambda: panel.library is not None and panel.library.has(question), 30, "asked")
        wait_until(lambda: service.status()["safety_link"] == "up", 10, "the MCU link")
        monitor = service.monitor
        assert monitor is not None
        wait_until(lambda: monitor.telemetry is not None, 10, "the MCU's telemetry")
        yield service
    finally:
        service.close()


def lights_sent(sim: Simulator, since: float) -> list[int]:
    """The light states the device sent the simulator (its LIGHT frames) since ``since``."""
    return [state for at, state in sim.lights_asked if at >= since]


def ready_code(service: DeviceService) -> str | None:
    ready = service.status()["ready"]
    return None if ready is None else str(ready["code"])


@pytest.mark.real_clock
def test_headphones_never_plugged_in_refuse_the_first_press_before_any_question(
    mosquitto: Mosquitto, pulse_null_sink: str, tmp_path: Path
) -> None:
    board = BoardConfig(board_id="phones-board", require_headphones=True)
    with (
        Simulator(board, readings={"headphones": False}) as sim,
        service_on(sim, mosquitto, tmp_path) as service,
    ):
        panel, mixer = service.panel, service.panel.mixer
        assert service.monitor is not None
        wait_until(lambda: service.monitor.board_info is not None, 10, "the board's BOARD")  # type: ignore[union-attr]
        # known before anything is pressed: the board said it requires them, and they are out
        wait_until(lambda: ready_code(service) == "headphones_unplugged", 10, "headphones out")

        since = time.monotonic()
        execute(sim, "press play_pause")  # the very first press since power-up
        wait_until(lambda: sl.LIGHT_FAULT in lights_sent(sim, since), 10, "the fault light")
        time.sleep(0.5)  # anything that would follow a press that was let through
        assert panel.controls.checkin is None
        assert not any("checkin" in said for said in mixer.spoken)  # no question asked
        assert sim.board.mute_changes == 0  # the amplifier never unmuted
        assert service.status()["playing"] is None
        assert service.store.sessions() == []

        # plugged in, the same press asks the check-in's question first, as it should
        sim.board.set_headphones(True)
        wait_until(lambda: ready_code(service) is None, 10, "headphones in")
        execute(sim, "press stop")  # the fault shown is acknowledged
        wait_until(lambda: sim.light == sl.LIGHT_IDLE, 10, "the light back to idle")
        execute(sim, "press play_pause")
        wait_until(lambda: panel.controls.checkin is not None, 20, "the 'before' check-in")
        execute(sim, "press stop")  # its question skipped: the session starts
        wait_until(lambda: service.status()["playing"] is not None, 20, "the session")
        execute(sim, "press stop")
        wait_until(lambda: service.status()["playing"] is None, 20, "the stop")
    assert sim.error is None


@pytest.mark.real_clock
def test_a_v1_3_board_is_judged_as_before_from_what_it_has_shown(
    mosquitto: Mosquitto, pulse_null_sink: str, tmp_path: Path
) -> None:
    with (
        Simulator(protocol_minor=3, readings={"headphones": False}) as sim,
        service_on(sim, mosquitto, tmp_path) as service,
    ):
        monitor = service.monitor
        assert monitor is not None and monitor.hello is not None
        assert monitor.hello.protocol_minor == 3
        time.sleep(0.3)  # several telemetry periods: a BOARD would have come
        assert monitor.board_info is None
        # never seen plugged in: whether the board needs them is not known before an ARM
        assert ready_code(service) is None
        sim.board.set_headphones(True)
        wait_until(lambda: (t := monitor.telemetry) is not None and t.headphones, 10, "in")
        assert ready_code(service) is None
        sim.unplug_headphones()  # seen in, now out: their absence counts
        wait_until(lambda: ready_code(service) == "headphones_unplugged", 10, "headphones out")
        since = time.monotonic()
        execute(sim, "press play_pause")
        wait_until(lambda: sl.LIGHT_FAULT in lights_sent(sim, since), 10, "the fault light")
        assert service.panel.controls.checkin is None
        assert sim.controller.frames_rejected == 0  # the device sent the v1.3 board nothing new
    assert sim.error is None
