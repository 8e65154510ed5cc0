"""Check-ins with buttons (``device/controls.py``): the questions of the profile asked one by one,
the value set with the volume buttons, confirmed with play, skipped with stop or by waiting, with
a clock the test controls; then the device store keeping the answers sealed and queued."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from factories import ManualClock, press
from support import require_tool

from resonera.common import serial_link as sl
from resonera.common.envelope import decode_envelope
from resonera.common.ids import new_id
from resonera.common.profile import CheckInQuestion, HearingProfile
from resonera.common.records import CheckInRecord
from resonera.common.safety_link import LinkEvent
from resonera.device.audio.prompt_mixer import PromptMixer
from resonera.device.controls import (
    CHECKIN_START,
    AgentState,
    Answered,
    Ask,
    Controls,
    SayNumber,
    Start,
)
from resonera.device.panel import Panel
from resonera.device.prompts import (
    PromptLibrary,
    build_checkin_prompts,
    build_prompts,
    checkin_key,
    checkin_text,
)
from resonera.device.store import DeviceStore
from resonera.engine.audio.calibration import load_calibration_file, packaged_calibration

RELAXED = CheckInQuestion(
    id="relaxed", text="How relaxed are you?", low_label="not at all", high_label="completely"
)
LOUDNESS = CheckInQuestion(
    id="loudness",
    text="How loud is your tinnitus?",
    low_label="silent",
    high_label="as loud as it gets",
    when="after",
    better="lower",
)
SLEEP = CheckInQuestion(
    id="sleep", text="How did you sleep?", low_label="badly", high_label="well", when="before"
)
IDLE = AgentState(assigned=("calm-tone",))


def test_the_before_check_in_holds_the_program_until_its_questions_are_answered() -> None:
    controls = Controls(clock=ManualClock(500.0))
    start = Start("calm-tone")
    asked = controls.begin_checkin("before", [RELAXED, LOUDNESS, SLEEP], then=[start])
    # only the questions of this phase, the first with how to answer, from the middle value
    assert asked == [Ask(RELAXED, "before", CHECKIN_START, first=True)]
    assert controls.press(press(sl.BUTTON_VOLUME_UP), IDLE) == [SayNumber(6)]
    assert controls.press(press(sl.BUTTON_VOLUME_UP), IDLE) == [SayNumber(7)]
    assert controls.press(press(sl.BUTTON_VOLUME_DOWN), IDLE) == [SayNumber(6)]
    # play confirms: the answer, then the next question, again from the middle
    assert controls.press(press(sl.BUTTON_PLAY_PAUSE), IDLE) == [
        Answered(RELAXED, "before", 6),
        Ask(SLEEP, "before", CHECKIN_START),
    ]
    done = controls.press(press(sl.BUTTON_PLAY_PAUSE), IDLE)
    assert done == [Answered(SLEEP, "before", CHECKIN_START), start]
    assert controls.checkin is None
    # the buttons mean what they did again
    assert controls.press(press(sl.BUTTON_PLAY_PAUSE), IDLE) == [Start("calm-tone")]


def test_the_value_stays_within_0_and_10_and_is_said_at_either_end() -> None:
    controls = Controls(clock=ManualClock(500.0))
    controls.begin_checkin("after", [LOUDNESS])
    said = [controls.press(press(sl.BUTTON_VOLUME_UP), IDLE) for _ in range(7)]
    assert said[-3:] == [[SayNumber(10)]] * 3
    for _ in range(12):
        controls.press(press(sl.BUTTON_VOLUME_DOWN), IDLE)
    assert controls.press(press(sl.BUTTON_VOLUME_DOWN), IDLE) == [SayNumber(0)]
    assert controls.press(press(sl.BUTTON_PLAY_PAUSE), IDLE) == [Answered(LOUDNESS, "after", 0)]


def test_stop_skips_a_question_and_a_long_press_asks_it_again() -> None:
    controls = Controls(clock=ManualClock(500.0))
    controls.begin_checkin("after", [RELAXED, LOUDNESS])
    controls.press(press(sl.BUTTON_VOLUME_UP), IDLE)
    assert controls.press(press(sl.BUTTON_PLAY_PAUSE, long=True), IDLE) == [
        Ask(RELAXED, "after", 6)
    ]
    assert controls.press(press(sl.BUTTON_STOP), IDLE) == [
        Answered(RELAXED, "after", None, "skipped by the person"),
        Ask(LOUDNESS, "after", CHECKIN_START),
    ]
    # stop in a check-in skips; it does not stop or clear anything
    assert controls.press(press(sl.BUTTON_STOP), IDLE) == [
        Answered(LOUDNESS, "after", None, "skipped by the person")
    ]
    assert controls.checkin is None


def test_a_question_left_unanswered_is_skipped_after_the_timeout() -> None:
    clock = ManualClock(500.0)
    controls = Controls(clock=clock, checkin_timeout_s=60.0)
    controls.begin_checkin("before", [RELAXED, SLEEP], then=[Start("calm-tone")])
    clock.now += 59.0
    assert controls.tick() == []
    controls.press(press(sl.BUTTON_VOLUME_DOWN), IDLE)  # a press restarts the wait
    clock.now += 59.0
    assert controls.tick() == []
    clock.now += 1.0
    assert controls.tick() == [
        Answered(RELAXED, "before", None, "no answer in time"),
        Ask(SLEEP, "before", CHECKIN_START),
    ]
    clock.now += 60.0
    assert controls.tick() == [
        Answered(SLEEP, "before", None, "no answer in time"),
        Start("calm-tone"),  # nobody there to answer: the program starts all the same
    ]
    assert controls.tick() == []


def test_questions_without_a_prompt_are_skipped_at_once_with_the_reason() -> None:
    controls = Controls(clock=ManualClock(500.0))
    why = "espeak-ng is not installed"
    actions = controls.begin_checkin(
        "before", [RELAXED, SLEEP], unavailable={"relaxed": why, "sleep": why}, then=[Start("x")]
    )
    assert actions == [
        Answered(RELAXED, "before", None, why),
        Answered(SLEEP, "before", None, why),
        Start("x"),
    ]
    assert controls.checkin is None
    # nothing to ask in a phase: the program starts at once
    assert Controls().begin_checkin("after", [SLEEP], then=[Start("x")]) == [Start("x")]


def test_a_check_in_under_way_is_not_restarted() -> None:
    controls = Controls(clock=ManualClock(500.0))
    controls.begin_checkin("after", [RELAXED])
    assert controls.begin_checkin("before", [RELAXED], then=[Start("x")]) == []
    assert controls.checkin is not None and controls.checkin.phase == "after"


def test_a_question_is_spoken_with_its_anchors_under_its_texts_hash() -> None:
    assert checkin_text(RELAXED, "en") == (
        "How relaxed are you? 0 means not at all. 10 means completely."
    )
    assert checkin_text(RELAXED, "de").endswith("10 bedeutet completely.")
    assert checkin_key(RELAXED, "en") == checkin_key(RELAXED.model_copy(), "en")
    reworded = RELAXED.model_copy(update={"text": "How calm are you?"})
    assert checkin_key(reworded, "en") != checkin_key(RELAXED, "en")


def test_answers_are_kept_sealed_and_queued_as_checkin_messages(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    answered = CheckInRecord(
        id=new_id(),
        session_id=new_id(),
        device_id="dev-c",
        question_id="relaxed",
        phase="before",
        value=7,
        answered_at=at,
    )
    skipped = answered.model_copy(
        update={
            "id": new_id(),
            "value": None,
            "skipped": True,
            "answered_at": at.replace(minute=1),
            "skip_reason": "no answer in time",
        }
    )
    store.record_checkin("dev-c", answered)
    store.record_checkin("dev-c", skipped)
    assert store.checkins() == [(skipped, "no answer in time"), (answered, "")]
    messages = store.pending()
    assert [message.kind for message in messages] == ["checkin", "checkin"]
    # why it was skipped travels to the server with the record
    assert [decode_envelope(m.payload).body.get("skip_reason") for m in messages] == [
        None,
        "no answer in time",
    ]
    store.close()
    assert b"relaxed" not in (tmp_path / "device.db").read_bytes()  # sealed at rest


def _skip(**fields: object) -> dict[str, object]:
    return {
        "id": new_id(),
        "session_id": new_id(),
        "device_id": "dev-c",
        "question_id": "relaxed",
        "phase": "after",
        "skipped": True,
        "answered_at": "2026-11-02T09:00:00+00:00",
        **fields,
    }


def test_a_skip_reason_is_kept_only_on_a_skipped_check_in_and_only_as_short_plain_text() -> None:
    record = CheckInRecord.model_validate(_skip(skip_reason="skipped by the person"))
    assert record.skip_reason == "skipped by the person"
    assert CheckInRecord.model_validate(_skip()).skip_reason is None  # records from before it
    bad = {
        "skip_reason is only allowed when skipped is true": _skip(
            skipped=False, value=4, skip_reason="no answer in time"
        ),
        "at most 200 characters": _skip(skip_reason="x" * 201),
        "at least 1 character": _skip(skip_reason=""),
        "plain text on one line": _skip(skip_reason="no answer\n<b>in time</b>"),
    }
    for message, body in bad.items():
        with pytest.raises(ValueError, match=message):
            CheckInRecord.model_validate(body)


def test_any_reason_the_device_has_becomes_a_valid_skip_reason() -> None:
    assert CheckInRecord.as_skip_reason("skipped by the person") == "skipped by the person"
    assert CheckInRecord.as_skip_reason(" espeak-ng failed:\n  exit 1\t") == (
        "espeak-ng failed: exit 1"
    )
    long = CheckInRecord.as_skip_reason("a" * 500)
    assert long is not None and len(long) == 200 and long.endswith("…")
    assert CheckInRecord.as_skip_reason(" \n") is None
    CheckInRecord.model_validate(_skip(skip_reason=long))


# -- the panel: real prompts, a real mixer, an agent of callables -----------------------------------

RATE = 44100
FIXED = ["checkin_before", "checkin_after", "checkin_how", "checkin_done", "n5", "n6"]


class Agent:
    """The agent as the panel sees it (``PanelHost``), with a profile that asks two questions;
    the answers it is handed are kept in ``answers``."""

    def __init__(self, answers: list[Answered]) -> None:
        self.program: str | None = None
        self.calls: list[str] = []
        self.answers = answers

    def play_from_panel(self, program: str) -> None:
        self.calls.append(f"start {program}")
        self.program = program

    def stop_playing(self) -> None:
        self.program = None

    def playing_program(self) -> str | None:
        return self.program

    def assigned_programs(self) -> tuple[str, ...]:
        return ("calm-tone",)

    def program_length_s(self, program: str) -> float | None:
        return None

    def dose_fraction(self) -> float:
        return 0.0

    def syncing(self) -> bool:
        return False

    def profile_in_force(self) -> HearingProfile:
        return HearingProfile(checkins=[RELAXED, LOUDNESS])

    def checkin_answered(self, answer: Answered, at: datetime) -> None:
        self.answers.append(answer)

    def why_cannot_play(self, spec: str | None = None) -> None:
        return None  # everything may play

    def ended_why(self) -> None:
        return None

    def sessions_waiting(self) -> int:
        return 0


def spoken(mixer: PromptMixer) -> list[str]:
    """Play the mixer until it has said everything queued; the keys it said, in order."""
    while mixer.speaking:
        mixer.process(np.zeros((RATE // 10, 2), np.float32))
    return [key for utterance in mixer.spoken for key in utterance.split("+")]


def checkin_panel(directory: Path, agent: Agent) -> Panel:
    calibration = load_calibration_file(packaged_calibration())

    def render(questions: Sequence[CheckInQuestion]) -> PromptLibrary:
        build_checkin_prompts(directory, calibration, questions)
        return PromptLibrary(directory, RATE)

    return Panel(
        Controls(),
        PromptMixer(RATE),
        PromptLibrary(directory, RATE),
        agent,
        render_checkins=render,
    )


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    require_tool("espeak-ng")
    directory = tmp_path / "prompts"
    calibration = load_calibration_file(packaged_calibration())
    build_prompts(directory, calibration, sample_rate=RATE, keys=FIXED)
    return directory


def test_the_panel_speaks_the_questions_and_hands_on_the_answers(prompts: Path) -> None:
    answers = list[Answered]()
    agent = Agent(answers)
    panel = checkin_panel(prompts, agent)
    panel.prepare_checkins((RELAXED, LOUDNESS))  # a profile applied: the questions spoken
    assert panel.describe().get("checkin") is None
    relaxed_key = checkin_key(RELAXED, "en")
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert agent.calls == []  # the program waits for the check-in
    assert spoken(panel.mixer) == ["checkin_before", "checkin_how", relaxed_key, "n5"]
    assert panel.describe()["checkin_waiting"] == f"{RELAXED.id} (before the session)"
    panel.handle(press(sl.BUTTON_VOLUME_UP))
    assert spoken(panel.mixer)[-1] == "n6"
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert answers == [Answered(RELAXED, "before", 6)]
    assert agent.calls == ["start calm-tone"]
    assert "checkin_waiting" not in panel.describe()
    assert spoken(panel.mixer)[-1] == "checkin_done"

    agent.program = None  # the session ended: the "after" questions (both of them)
    panel.handle(None)
    assert panel.controls.checkin is not None and panel.controls.checkin.phase == "after"
    panel.handle(press(sl.BUTTON_STOP))
    assert checkin_key(LOUDNESS, "en") in spoken(panel.mixer)  # heard before the next press
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert answers[1:] == [
        Answered(RELAXED, "after", None, "skipped by the person"),
        Answered(LOUDNESS, "after", CHECKIN_START),
    ]


def test_without_espeak_ng_at_apply_time_the_questions_are_recorded_skipped_with_why(
    prompts: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    answers = list[Answered]()
    agent = Agent(answers)
    panel = checkin_panel(prompts, agent)
    monkeypatch.setenv("PATH", str(tmp_path))  # espeak-ng gone from this device
    panel.prepare_checkins((RELAXED, LOUDNESS))  # reported, not raised
    problem = str(panel.describe()["checkin"])
    assert "espeak-ng is not installed" in problem
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert answers == [Answered(RELAXED, "before", None, problem)]
    assert agent.calls == ["start calm-tone"]  # the session is not held up
    assert "checkin_how" not in spoken(panel.mixer)


def test_after_a_fault_the_after_questions_are_recorded_skipped(prompts: Path) -> None:
    answers = list[Answered]()
    agent = Agent(answers)
    panel = checkin_panel(prompts, agent)
    agent.program = "calm-tone"  # started from the control socket: no "before" check-in
    panel.handle(None)
    panel.on_event(LinkEvent("fault", "headphones unplugged", sl.FAULT_HEADPHONES_UNPLUGGED))
    agent.program = None
    panel.handle(None)
    reason = "the session ended by a fault (headphones unplugged)"
    assert answers == [
        Answered(RELAXED, "after", None, reason),
        Answered(LOUDNESS, "after", None, reason),
    ]
    assert panel.controls.checkin is None
