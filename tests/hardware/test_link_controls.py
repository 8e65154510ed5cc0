"""Buttons and the status light (protocol v1.2): the device's link state machine with a clock the
test controls, then the simulator's buttons pressed through its control commands and reported over
the real pty to ``HardwareMonitor``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from support import wait_until

from resonera.common import serial_link as sl
from resonera.common.safety_link import LIGHT_RESEND_S, SafetyLink
from resonera.device.hwmonitor import HardwareMonitor
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.scenario import CommandError, execute
from resonera.hardware.sim import Simulator

LIMITS = sl.Limits(2.0, 85.0, 1.5, 50.0, 0.0)


def _hello() -> sl.Frame:
    return sl.Frame(sl.MSG_HELLO, 0, sl.pack_hello(sl.Hello("1.2.0", "b-1", LIMITS)))


def _press(button: int, kind: int, number: int) -> sl.Frame:
    return sl.Frame(sl.MSG_BUTTON, 0, sl.pack_button(sl.ButtonPress(button, kind, number)))


def _lights(frames: list[bytes]) -> list[int]:
    decoder = sl.FrameDecoder()
    return [
        sl.unpack_light("LIGHT", e.body)
        for f in frames
        for e in decoder.feed(f)
        if isinstance(e, sl.Frame) and e.type == sl.MSG_LIGHT
    ]


def test_presses_are_queued_in_order_and_a_lost_one_is_counted() -> None:
    link = SafetyLink()
    link.receive(_hello(), 0.0)
    link.receive(_press(sl.BUTTON_PLAY_PAUSE, sl.PRESS_SHORT, 7), 0.01)
    link.receive(_press(sl.BUTTON_VOLUME_UP, sl.PRESS_SHORT, 9), 0.02)  # number 8 never came
    presses = link.take_buttons()
    assert [(p.name, p.long) for p in presses] == [("play_pause", False), ("vol_up", False)]
    assert link.buttons_lost == 1
    assert link.take_buttons() == []


def test_a_button_frame_that_breaks_the_protocol_counts_as_the_mcu_s_error() -> None:
    link = SafetyLink()
    link.receive(_hello(), 0.0)
    link.receive(sl.Frame(sl.MSG_BUTTON, 0, b"\x09\x00\x00"), 0.01)
    assert link.errors_seen == 1
    assert link.problem == "link garbled: BUTTON names button 9, not one of 1 to 4"
    assert link.take_buttons() == []


def test_light_sent_once_hello_is_known_then_until_confirmed_and_after_a_restart() -> None:
    link = SafetyLink()
    link.request_arm()
    link.set_light(sl.LIGHT_SYNCING)
    assert _lights(link.outgoing(0.0)) == []  # nobody to tell yet
    link.receive(_hello(), 0.05)
    assert _lights(link.outgoing(0.06)) == [sl.LIGHT_SYNCING]
    assert _lights(link.outgoing(0.5)) == []
    assert _lights(link.outgoing(0.06 + LIGHT_RESEND_S)) == [sl.LIGHT_SYNCING]  # unconfirmed
    link.receive(sl.Frame(sl.MSG_LIGHT_SHOWN, 0, sl.pack_light(sl.LIGHT_SYNCING)), 1.1)
    assert _lights(link.outgoing(3.0)) == []
    link.set_light(sl.LIGHT_PLAYING)
    assert _lights(link.outgoing(3.01)) == []  # not without consent
    link.receive(sl.Frame(sl.MSG_STATE, 0, sl.pack_state(sl.State(False, True, 0))), 3.01)
    assert link.consent
    assert _lights(link.outgoing(3.01)) == [sl.LIGHT_PLAYING]
    link.receive(sl.Frame(sl.MSG_LIGHT_SHOWN, 0, sl.pack_light(sl.LIGHT_PLAYING)), 3.02)
    link.set_light(sl.LIGHT_DOSE_REACHED)
    link.receive(_hello(), 3.1)  # unasked: the MCU restarted and shows idle again
    assert _lights(link.outgoing(3.11)) == [sl.LIGHT_DOSE_REACHED]
    with pytest.raises(ValueError, match="no such light state 9"):
        link.set_light(9)


def test_an_older_mcu_is_sent_the_nearest_light_it_knows_and_the_state_is_not_resent() -> None:
    link = SafetyLink()
    link.set_light(sl.LIGHT_SHUT_OUT)
    v12 = sl.Hello("1.2.0", "b-1", LIMITS, sl.PROTOCOL_MAJOR, 2)
    link.receive(sl.Frame(sl.MSG_HELLO, 0, sl.pack_hello(v12)), 0.0)
    assert _lights(link.outgoing(0.01)) == [sl.LIGHT_FAULT]  # a v1.2 MCU knows no shut_out
    link.receive(sl.Frame(sl.MSG_LIGHT_SHOWN, 0, sl.pack_light(sl.LIGHT_FAULT)), 0.02)
    assert _lights(link.outgoing(0.03 + LIGHT_RESEND_S)) == []  # shown as asked: not sent again
    link.receive(_hello(), 2.0)  # a board of v1.3 or newer in its place: the state itself
    assert _lights(link.outgoing(2.01)) == [sl.LIGHT_SHUT_OUT]


# -- over the simulator's pty ------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(BoardConfig(board_id="buttons-board")) as simulator:
        yield simulator
    assert simulator.error is None


@pytest.fixture
def monitor(sim: Simulator) -> Iterator[HardwareMonitor]:
    with HardwareMonitor(sim.port_path, silence_timeout_s=0.5) as mon:
        yield mon


def test_pressed_buttons_reach_the_device_over_the_pty(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    presses: list[sl.ButtonPress] = []
    lock = threading.Lock()

    def on_press(press: sl.ButtonPress) -> None:
        with lock:
            presses.append(press)

    monitor.add_button_listener(on_press)
    monitor.arm(timeout_s=5.0)
    assert execute(sim, "press vol_up") == "ok pressing vol_up"
    wait_until(lambda: len(presses) == 1, 5, "the short press reported")
    assert execute(sim, "press play-pause long") == "ok pressing play_pause (long)"
    wait_until(lambda: len(presses) == 2, 5, "the long press reported")
    with lock:
        assert [(p.name, p.long) for p in presses] == [("vol_up", False), ("play_pause", True)]
    assert monitor.consent  # buttons never touch consent


def test_the_light_follows_the_device_and_shows_a_fault_on_its_own(
    sim: Simulator, monitor: HardwareMonitor
) -> None:
    assert execute(sim, "light?") == "ok light=idle"
    monitor.arm(timeout_s=5.0)
    monitor.set_light(sl.LIGHT_PLAYING)
    wait_until(lambda: execute(sim, "light?") == "ok light=playing", 5, "the light shows playing")
    wait_until(lambda: monitor.light_shown == sl.LIGHT_PLAYING, 5, "LIGHT_SHOWN confirms it")
    assert "light=playing" in execute(sim, "status")
    sim.over_temperature()
    wait_until(lambda: execute(sim, "light?") == "ok light=fault", 5, "the MCU shows the fault")
    wait_until(lambda: not monitor.consent, 5, "consent withdrawn")
    sim.reset()
    monitor.set_light(sl.LIGHT_ATTENUATED)  # still "sounding": not shown without consent
    monitor.set_light(sl.LIGHT_IDLE)
    wait_until(lambda: execute(sim, "light?") == "ok light=idle", 5, "idle shown again")


def test_press_and_light_commands_reject_bad_arguments(sim: Simulator) -> None:
    with pytest.raises(CommandError, match="no such button 'volume'"):
        execute(sim, "press volume")
    with pytest.raises(CommandError, match=r"usage: press BUTTON \[long\]"):
        execute(sim, "press stop longer")
    with pytest.raises(CommandError, match="takes no arguments"):
        execute(sim, "light? now")
