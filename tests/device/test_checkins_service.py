"""A check-in answered with the buttons alone, end to end: the clinician's questions arrive in the
signed desired state and are spoken into the prompt cache with espeak-ng; the simulator's buttons,
pressed over its real pty, answer one question before the session (the program waits) and one
after it, the questions and numbers are spoken through PyAudio into the PulseAudio null sink, and
the answers end up sealed in the device store and sent as ``checkin`` messages. The session, the
prompts between sessions and the check-ins all go through the service's one safety monitor: the
MCU's port is opened once for the service's life."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import serial
from device_peer import Peer, ServerKey, config_file, service_on_mcu
from support import Mosquitto, require_tool, wait_until

from resonera.common.prescription import prescribe
from resonera.common.profile import CheckInQuestion
from resonera.common.program import builtin_program
from resonera.common.records import CheckInRecord
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.scenario import execute

# Times the safety MCU's watchdogs or measures recorded sound against real time: the main pass
# only (the dates of their sessions are checked under faketime by the sessions' other tests).
pytestmark = pytest.mark.realtime

BIN = Path(sys.executable).parent / "resonera-device"
PROGRAM = "calm-tone"
QUESTIONS = [
    {
        "id": "relaxed",
        "text": "How relaxed are you?",
        "low_label": "not at all",
        "high_label": "completely",
        "when": "before",
    },
    {
        "id": "loudness",
        "text": "How loud is your tinnitus?",
        "low_label": "silent",
        "high_label": "very loud",
        "when": "after",
        "better": "lower",
    },
]
RELAXED, LOUDNESS = (CheckInQuestion.model_validate(q) for q in QUESTIONS)
FIXED = [
    "checkin_before",
    "checkin_after",
    "checkin_how",
    "checkin_done",
    "session_start",
    "session_end",
]


def test_one_question_before_and_one_after_are_answered_with_buttons_and_stored(
    mosquitto: Mosquitto,
    peer: Peer,
    pulse_null_sink: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_tool("espeak-ng")
    opened: list[str] = []
    open_port = serial.serial_for_url

    def counted(url: str, *args: Any, **kwargs: Any) -> serial.SerialBase:
        opened.append(url)
        return open_port(url, *args, **kwargs)

    monkeypatch.setattr(serial, "serial_for_url", counted)
    key = ServerKey()
    device = f"checkin-{tmp_path.name[-6:]}"
    with service_on_mcu(
        mosquitto,
        tmp_path,
        device,
        BoardConfig(board_id="checkin-board"),
        prompt_keys=[*FIXED, *(f"n{n}" for n in range(11))],
        sink="pyaudio",
        server_public_key=key.public_b64,
    ) as (sim, settings, service):
        mixer, panel = service.panel.mixer, service.panel

        def spoken(key: str) -> int:  # an utterance's keys are joined with "+"
            said = [*mixer.spoken, *mixer.cut_off]  # a press cuts what it answers (issue 21)
            return sum(utterance.split("+").count(key) for utterance in said)

        def asking(phase: str) -> bool:
            checkin = panel.controls.checkin
            return checkin is not None and checkin.phase == phase

        def value() -> int | None:
            checkin = panel.controls.checkin
            return checkin.value if checkin is not None else None

        def playing() -> object:
            return service.status()["playing"]

        peer.publish_desired(
            device,
            key.payload(
                device,
                1,
                programs=[
                    prescribe("lib-calm", 1, builtin_program(PROGRAM)).model_dump(mode="json")
                ],
                profile={"max_level_dba": 80.0, "checkins": QUESTIONS},
            ),
        )
        # the clinician's texts are spoken into the cache when the profile is applied
        wait_until(
            lambda: (
                panel.library is not None
                and all(
                    panel.library.has(panel.library.question_key(q)) for q in (RELAXED, LOUDNESS)
                )
            ),
            60,
            "the questions' prompts",
        )
        wait_until(lambda: service.status()["safety_link"] == "up", 10, "the MCU link")
        relaxed_key = panel.library.question_key(RELAXED) if panel.library else ""

        execute(sim, "press play_pause")
        # questions and numbers are said over silence between sessions, presses waiting their
        # turn on the panel's thread; a busy machine can drop the MCU link mid-prompt (the
        # rest is said with the next prompt), so the steps wait on the panel's state and what
        # was said is checked at the end
        wait_until(lambda: asking("before"), 60, "the question")
        assert value() == 5 and playing() is None  # the program waits for the check-in
        execute(sim, "press vol_up")
        wait_until(lambda: value() == 6, 30, "6 chosen")
        execute(sim, "press vol_up")
        wait_until(lambda: value() == 7, 30, "7 chosen")
        execute(sim, "press play_pause")  # 7 confirmed: the program starts
        wait_until(lambda: playing() == PROGRAM, 30, "the program to start")
        wait_until(lambda: sim.controller.armed, 20, "the session to arm")

        execute(sim, "press stop")
        wait_until(lambda: playing() is None, 30, "the stop")
        wait_until(lambda: asking("after"), 60, "the 'after' question")
        execute(sim, "press vol_down")
        wait_until(lambda: value() == 4, 30, "4 chosen")
        execute(sim, "press play_pause")
        wait_until(lambda: len(peer.of_kind("checkin")) == 2, 30, "the answers sent")
        # the questions' own prompts reached the sink (if not at once, with a later prompt)
        wait_until(lambda: spoken(relaxed_key) >= 1, 30, "the 'before' question said")
        # questions, numbers and the session: one opener of the MCU's port, never a hand-over
        assert opened == [sim.port_path]
        assert service.monitor is not None and service.monitor.reconnects == 0

    store = settings.open_store()
    [session] = store.sessions()
    answers = sorted(store.checkins(), key=lambda pair: pair[0].answered_at)
    assert [(r.question_id, r.phase, r.value, r.skipped, reason) for r, reason in answers] == [
        ("relaxed", "before", 7, False, ""),
        ("loudness", "after", 4, False, ""),
    ]
    assert {r.session_id for r, _ in answers} == {session.session_id}
    assert answers[1][0].better == "lower"
    sent = [CheckInRecord.model_validate(e.body) for e in peer.of_kind("checkin")]
    assert sorted(sent, key=lambda r: r.answered_at) == [r for r, _ in answers]
    store.close()

    history = subprocess.run(
        [str(BIN), "history", "--config", str(config_file(settings, tmp_path / "device.toml"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = history.splitlines()
    assert any("relaxed" in line and "before" in line and "7/10" in line for line in lines)
    assert any("loudness" in line and "after" in line and "4/10" in line for line in lines)
