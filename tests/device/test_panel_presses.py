"""Buttons always answer (issue 21), on the pure ``Controls`` and the ``Panel`` with a host of
callables, a real mixer, prompts of synthetic sound and a clock the test sets: a press cuts what is
being said and acts at once; presses at random points during prompts never start a session nobody
asked for; a number read back replaces one not yet said; a stop during a question skips it at
once; a question a fault cut off is recorded skipped, never answered by a later press; a refusal is
said and shown before any question is asked."""

from __future__ import annotations

from datetime import datetime

import numpy as np
from factories import ManualClock, press
from hypothesis import given, settings
from hypothesis import strategies as st

from resonera.common import serial_link as sl
from resonera.common.profile import CheckInQuestion, HearingProfile
from resonera.device.audio.prompt_mixer import Clip, PromptMixer
from resonera.device.controls import Answered, Controls
from resonera.device.panel import Panel
from resonera.device.refusals import Refusal, refusal

RATE = 16000
BLOCK = 320  # 20 ms
QUESTION = CheckInQuestion(id="calm", text="How calm?", low_label="not", high_label="very")
SECOND = CheckInQuestion(id="loud", text="How loud?", low_label="silent", high_label="loud")


class Library:
    """Every prompt 0.4 s of a tone (the key's hash picks the pitch): no espeak-ng needed."""

    def clips(self, *keys: str) -> list[Clip]:
        t = np.arange(int(0.4 * RATE)) / RATE
        return [
            Clip(
                key,
                (0.1 * np.sin(2 * np.pi * (300 + hash(key) % 500) * t)).astype(np.float32),
                RATE,
            )
            for key in keys
        ]

    def time_left(self, minutes: int) -> list[Clip]:
        return self.clips("time_left", f"n{minutes}", "minutes")

    def has(self, key: str) -> bool:
        return True

    def question_key(self, question: CheckInQuestion) -> str:
        return f"q-{question.id}"

    def program_key(self, name: str) -> str:
        return f"program-{name}"


class Host:
    """The service as the panel sees it: starts and stops at once, ``refused`` (if set) refuses
    every start, the profile asks ``questions`` before."""

    def __init__(self, questions: tuple[CheckInQuestion, ...] = ()) -> None:
        self.program: str | None = None
        self.starts: list[str] = []
        self.answers: list[Answered] = []
        self.questions = questions
        self.refused: Refusal | None = None
        self.ended: tuple[Refusal | None, bool] | None = None

    def play_from_panel(self, program: str) -> None:
        self.starts.append(program)
        self.program = program

    def stop_playing(self) -> None:
        self.program = None

    def playing_program(self) -> str | None:
        return self.program

    def assigned_programs(self) -> tuple[str, ...]:
        return ("calm", "deep")

    def program_length_s(self, program: str) -> float | None:
        return 600.0

    def dose_fraction(self) -> float:
        return 0.0

    def syncing(self) -> bool:
        return False

    def profile_in_force(self) -> HearingProfile:
        return HearingProfile(checkins=list(self.questions))

    def checkin_answered(self, answer: Answered, at: datetime) -> None:
        self.answers.append(answer)

    def why_cannot_play(self, spec: str | None = None) -> Refusal | None:
        return self.refused

    def ended_why(self) -> tuple[Refusal | None, bool] | None:
        ended, self.ended = self.ended, None
        return ended

    def sessions_waiting(self) -> int:
        return 3


def make_panel(host: Host, clock: ManualClock) -> Panel:
    return Panel(
        Controls(clock=clock), PromptMixer(RATE, clock=clock), Library(), host, clock=clock
    )


def play(panel: Panel, blocks: int) -> None:
    """``blocks`` of 20 ms through the mixer (what the audio thread does meanwhile)."""
    for _ in range(blocks):
        panel.mixer.process(np.zeros((BLOCK, 2), np.float32))


BUTTONS = st.sampled_from(
    [sl.BUTTON_PLAY_PAUSE, sl.BUTTON_STOP, sl.BUTTON_VOLUME_UP, sl.BUTTON_VOLUME_DOWN]
)
STEPS = st.lists(st.tuples(BUTTONS, st.booleans(), st.integers(0, 40)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(steps=STEPS, ask=st.booleans())
def test_presses_at_random_points_during_prompts_never_start_an_unasked_session(
    steps: list[tuple[int, bool, int]], ask: bool
) -> None:
    """Each start needs a play press that asked for one (a short press while idle, a long press:
    the next program) and no stop pressed since, outside a check-in (where stop skips)."""
    host, clock = Host((QUESTION, SECOND) if ask else ()), ManualClock(1000.0)
    panel = make_panel(host, clock)
    asked = 0  # play presses that want a session and are not yet served or taken back
    for button, long, blocks in steps:
        in_checkin = panel.controls.checkin is not None
        idle = host.program is None
        if button == sl.BUTTON_PLAY_PAUSE and not in_checkin and (long or idle):
            asked = 1
        elif button == sl.BUTTON_STOP and not in_checkin:
            asked = 0
        before = len(host.starts)
        panel.handle(press(button, long))
        started = len(host.starts) - before
        assert started <= asked, f"a session nobody asked for, after {button} (long={long})"
        asked -= started
        play(panel, blocks)  # the prompt plays on for a while, or is cut by the next press
        clock.now += blocks * BLOCK / RATE


def test_a_press_cuts_the_prompt_within_one_block_and_acts() -> None:
    host, clock = Host(), ManualClock(1000.0)
    panel = make_panel(host, clock)
    panel.handle(press(sl.BUTTON_VOLUME_UP))  # idle at 0 dB: "maximum volume"
    play(panel, 15)  # the duck ramp (150 ms), then the prompt speaking
    assert panel.mixer.speaking and not panel.mixer.cut_off
    panel.handle(press(sl.BUTTON_VOLUME_DOWN))
    assert panel.mixer.volume_db == -3.0  # acted at once
    out = panel.mixer.process(np.zeros((BLOCK, 2), np.float32))
    assert list(panel.mixer.cut_off) == ["max_volume"]
    assert not panel.mixer.speaking
    assert np.abs(out[-BLOCK // 2 :]).max() == 0.0  # silent before the block ends
    assert np.abs(np.diff(out[:, 0])).max() < 0.05  # faded, no click


def test_the_number_read_back_replaces_one_not_yet_said() -> None:
    host, clock = Host((QUESTION,)), ManualClock(1000.0)
    panel = make_panel(host, clock)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))  # the "before" check-in: the question asked
    for _ in range(3):
        panel.handle(press(sl.BUTTON_VOLUME_UP))  # 6, 7, 8 pressed faster than said
    play(panel, 100)
    said = [key for utterance in panel.mixer.spoken for key in utterance.split("+")]
    assert said == ["n8"]  # the question was cut by the first press; 6 and 7 never lag behind
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert host.answers == [Answered(QUESTION, "before", 8)] and host.starts == ["calm"]


def test_a_stop_during_a_questions_prompt_skips_it_at_once() -> None:
    host, clock = Host((QUESTION, SECOND)), ManualClock(1000.0)
    panel = make_panel(host, clock)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    play(panel, 20)  # the first question is being said
    panel.handle(press(sl.BUTTON_STOP))
    assert host.answers == [Answered(QUESTION, "before", None, "skipped by the person")]
    play(panel, 1)
    assert panel.mixer.cut_off and "q-calm" in panel.mixer.cut_off[0]
    assert panel.controls.checkin is not None and panel.controls.checkin.question == SECOND


def test_a_question_a_fault_cut_off_is_recorded_skipped_not_answered_by_a_later_press() -> None:
    host, clock = Host((QUESTION, SECOND)), ManualClock(1000.0)
    panel = make_panel(host, clock)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    panel.prompt_cut("a fault muted the sound")  # the speaker thread's word: the MCU muted it
    why = "prompt cut off: a fault muted the sound"
    assert host.answers == [
        Answered(QUESTION, "before", None, why),
        Answered(SECOND, "before", None, why),
    ]
    assert panel.controls.checkin is None and host.starts == []  # nor is the session started
    panel.handle(press(sl.BUTTON_VOLUME_UP))  # not an answer: the volume (at its ceiling)
    assert len(host.answers) == 2


def test_a_refusal_is_said_and_shown_before_any_question_and_the_next_press_clears_it() -> None:
    host, clock = Host((QUESTION,)), ManualClock(1000.0)
    host.refused = refusal("daily_limit", "6 session(s) a day is the limit")
    panel = make_panel(host, clock)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert panel.controls.checkin is None and host.answers == [] and host.starts == []
    play(panel, 100)
    assert list(panel.mixer.spoken) == ["refused_daily_limit"]
    assert panel.light(consent=False, attenuated=False) == sl.LIGHT_REFUSED
    panel.handle(press(sl.BUTTON_VOLUME_DOWN))
    assert panel.light(consent=False, attenuated=False) == sl.LIGHT_IDLE


def test_a_refusals_light_goes_out_after_a_while_and_a_lasting_one_stays() -> None:
    host, clock = Host(), ManualClock(1000.0)
    host.refused = refusal("dose_reached")
    panel = make_panel(host, clock)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert panel.light(consent=False, attenuated=False) == sl.LIGHT_DOSE_REACHED
    clock.now += 31.0
    panel.refresh()
    assert panel.light(consent=False, attenuated=False) == sl.LIGHT_IDLE
    host.refused = refusal("storage_full")
    clock.now += 5.0  # read with the programs
    panel.refresh()
    assert panel.light(consent=False, attenuated=False) == sl.LIGHT_BLOCKED


def test_holding_a_volume_button_while_idle_says_ready_and_the_sessions_waiting() -> None:
    host, clock = Host(), ManualClock(1000.0)
    panel = make_panel(host, clock)
    panel.handle(press(sl.BUTTON_VOLUME_UP, long=True))
    play(panel, 200)
    assert list(panel.mixer.spoken) == ["status_ready+n3+sessions_waiting"]


def test_a_session_the_clinicians_new_limits_stopped_says_why_not_just_finished() -> None:
    host, clock = Host(), ManualClock(1000.0)
    panel = make_panel(host, clock)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    play(panel, 200)
    host.program, host.ended = None, (refusal("limits_lowered"), True)
    panel.refresh()
    play(panel, 300)
    assert list(panel.mixer.spoken)[-1] == "stopped_limits_lowered"
    assert "session_end" not in panel.mixer.spoken
    assert panel.light(consent=False, attenuated=False) == sl.LIGHT_REFUSED


def test_a_session_refused_by_its_own_checks_is_not_announced_as_started() -> None:
    host, clock = Host(), ManualClock(1000.0)
    panel = make_panel(host, clock)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))  # "session starting" queued, not yet heard
    host.program, host.ended = None, (refusal("dose_reached", "it would pass 100 %"), False)
    panel.refresh()
    play(panel, 300)
    assert list(panel.mixer.spoken) == ["refused_dose"]
    assert panel.light(consent=False, attenuated=False) == sl.LIGHT_DOSE_REACHED
