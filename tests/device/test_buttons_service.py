"""Buttons always answer (issue 21), end to end: the device service on the simulated safety MCU
over its real pty, PyAudio into the PulseAudio null sink. A stop during a prompt between sessions
cuts it and starts nothing; a stop during a check-in question skips it at once; a long press of
play during a prompt starts the next program, which then plays on (no phantom "0 s, stopped by
the person" session)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from device_peer import service_on_mcu
from support import Mosquitto, require_tool, wait_until

from resonera.common import serial_link as sl
from resonera.common.profile import CheckInQuestion, HearingProfile
from resonera.device.controls import SKIPPED_BY_PERSON
from resonera.device.prescriptions import BUILTIN_DEFAULT
from resonera.device.service import DeviceService
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.scenario import execute
from resonera.hardware.sim import Simulator

pytestmark = pytest.mark.realtime

QUESTION = CheckInQuestion(id="calm", text="How calm are you?", low_label="not", high_label="very")
PROMPTS = ["max_volume", "session_start", "session_end", "checkin_before", "checkin_how", "n5"]


@contextmanager
def asking_service(
    mosquitto: Mosquitto, tmp_path: Path, name: str, prompts: list[str]
) -> Iterator[tuple[Simulator, DeviceService, str]]:
    """The service on the simulator's pty with a one-question check-in, its prompts spoken, the
    MCU link up: (simulator, service, the question's prompt key)."""
    require_tool("espeak-ng")
    with service_on_mcu(
        mosquitto,
        tmp_path,
        f"{name}-{tmp_path.name[-6:]}",
        BoardConfig(board_id=f"{name}-board"),
        prompt_keys=prompts,
        sink="pyaudio",
        profile=HearingProfile(checkins=[QUESTION]),
    ) as (sim, _settings, service):
        panel = service.panel
        library = panel.library
        assert library is not None
        question = library.question_key(QUESTION)
        wait_until(lambda: panel.library is not None and panel.library.has(question), 30, "asked")
        wait_until(lambda: service.status()["safety_link"] == "up", 10, "the MCU link")
        yield sim, service, question


@pytest.mark.real_clock
def test_presses_during_prompts_act_at_once_and_start_nothing_unasked(
    mosquitto: Mosquitto, pulse_null_sink: str, tmp_path: Path
) -> None:
    with asking_service(mosquitto, tmp_path, "buttons", PROMPTS) as (sim, service, question):
        panel, mixer = service.panel, service.panel.mixer

        def speaking_between_sessions(key: str) -> bool:
            current = mixer._current  # what the person hears now
            return sim.controller.armed and current is not None and key in current.text

        # a stop during "maximum volume": cut, nothing started
        execute(sim, "press vol_up")
        wait_until(lambda: speaking_between_sessions("max_volume"), 20, "'maximum volume' said")
        execute(sim, "press stop")
        wait_until(lambda: "max_volume" in mixer.cut_off, 5, "the prompt cut")
        wait_until(lambda: sim.muted, 10, "the MCU muted again")
        assert service.status()["playing"] is None

        # a stop during the check-in's question: skipped at once (then the program it held)
        execute(sim, "press play_pause")
        wait_until(lambda: speaking_between_sessions(question), 30, "the question being said")
        execute(sim, "press stop")
        wait_until(lambda: any(question in cut for cut in mixer.cut_off), 5, "the question cut")
        wait_until(lambda: service.status()["playing"] == BUILTIN_DEFAULT, 20, "the program")
        execute(sim, "press stop")
        wait_until(lambda: service.status()["playing"] is None, 20, "the stop")

        # a long press of play during a prompt: the next program starts and plays on
        wait_until(lambda: panel.controls.checkin is not None, 30, "the 'after' check-in")
        execute(sim, "press stop")  # its question skipped
        wait_until(lambda: panel.controls.checkin is None, 10, "the check-in over")
        execute(sim, "press vol_up")
        wait_until(lambda: speaking_between_sessions("max_volume"), 20, "'maximum volume' again")
        execute(sim, "press play_pause long")
        wait_until(lambda: panel.controls.checkin is not None, 20, "the 'before' check-in")
        time.sleep(0.3)  # the long press is sent while held: the person lets go first
        execute(sim, "press play_pause")  # 5, confirmed
        wait_until(lambda: service.status()["playing"] is not None, 20, "the next program")
        time.sleep(1.0)  # nothing stops it behind the person's back
        assert service.status()["playing"] is not None
        assert service.status()["safety_state"] == "playing"
        execute(sim, "press stop")
        wait_until(lambda: service.status()["playing"] is None, 20, "the stop")
        status = service.status()
        assert status["safety_state"] == "idle" and status["ready"] is None
        assert status["shut_out"] is None and isinstance(status["sessions_waiting"], int)
        sessions = sorted(service.store.sessions(), key=lambda s: s.started_at)
        answers = sorted(service.store.checkins(), key=lambda pair: pair[0].answered_at)
    assert len(sessions) == 2 and sessions[-1].played_s >= 0.5  # asked for, and it played
    assert [(r.phase, r.value, reason) for r, reason in answers] == [
        ("before", None, SKIPPED_BY_PERSON),
        ("after", None, SKIPPED_BY_PERSON),
        ("before", 5, ""),
    ]


@pytest.mark.real_clock
def test_a_question_a_fault_cuts_off_is_recorded_skipped_and_no_later_press_answers_it(
    mosquitto: Mosquitto, pulse_null_sink: str, tmp_path: Path
) -> None:
    with asking_service(mosquitto, tmp_path, "cutoff", [*PROMPTS, "refused_fault"]) as (
        sim,
        service,
        question,
    ):
        panel, mixer = service.panel, service.panel.mixer

        execute(sim, "press play_pause")
        wait_until(
            lambda: sim.controller.armed and question in getattr(mixer._current, "text", ""),
            30,
            "the question being said",
        )
        sim.over_temperature()  # the MCU mutes mid-question
        wait_until(lambda: panel.controls.checkin is None, 10, "the check-in abandoned")
        execute(sim, "press vol_up")  # what would have been an answer, had it not ended
        execute(sim, "press play_pause")  # still hot: refused, and said why on the light
        wait_until(lambda: sim.light == sl.LIGHT_FAULT, 10, "the fault's light")
        assert service.status()["playing"] is None
        answers = [(r.phase, r.value, reason) for r, reason in service.store.checkins()]
    assert answers == [("before", None, "prompt cut off: a fault muted the sound")]
