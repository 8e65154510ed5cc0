"""The controls state machine (``device/controls.py``): button presses and state changes →
actions, with a clock the test controls (no device, no threads); then the ``Panel``
(``device/panel.py``) carrying them out with a real mixer and real prompts."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from factories import ManualClock, press
from support import require_tool, wait_until

from resonera.common import serial_link as sl
from resonera.common.errors import ResoneraError
from resonera.common.profile import HearingProfile
from resonera.common.safety_link import LinkEvent
from resonera.device.audio.prompt_mixer import PromptMixer
from resonera.device.controls import (
    NOTHING_ASSIGNED,
    AgentState,
    Answered,
    ClearFault,
    Controls,
    Pause,
    Prompt,
    Refuse,
    Resume,
    SayProgram,
    SayStatus,
    SetVolume,
    Start,
    Stop,
    light_for,
)
from resonera.device.panel import MAX_PAUSE_S, Panel
from resonera.device.prescriptions import NOTHING_MAY_PLAY
from resonera.device.prompts import (
    PromptLibrary,
    PromptsError,
    build_program_name_prompts,
    build_prompts,
    program_name_key,
)
from resonera.device.refusals import Refusal
from resonera.engine.audio.calibration import load_calibration_file, packaged_calibration

ASSIGNED = ("calm-alpha", "deep-theta", "focus-beta")
RATE = 44100


def test_play_pause_starts_the_first_assigned_program_then_pauses_and_resumes() -> None:
    controls = Controls()
    idle = AgentState(assigned=ASSIGNED)
    assert controls.press(press(sl.BUTTON_PLAY_PAUSE), idle) == [Start("calm-alpha")]
    playing = AgentState(program="calm-alpha", assigned=ASSIGNED)
    assert controls.press(press(sl.BUTTON_PLAY_PAUSE), playing) == [Pause()]
    paused = AgentState(program="calm-alpha", paused=True, assigned=ASSIGNED)
    assert controls.press(press(sl.BUTTON_PLAY_PAUSE), paused) == [Resume()]


def test_nothing_assigned_is_said_not_silently_ignored() -> None:
    controls = Controls()
    for long in (False, True):
        assert controls.press(press(sl.BUTTON_PLAY_PAUSE, long), AgentState()) == [
            Refuse(NOTHING_ASSIGNED)
        ]


def test_a_long_press_skips_to_the_next_assigned_program_and_wraps() -> None:
    controls = Controls()
    skip = press(sl.BUTTON_PLAY_PAUSE, long=True)
    playing = AgentState(program="deep-theta", assigned=ASSIGNED)
    assert controls.press(skip, playing) == [Stop(), Start("focus-beta")]
    last = AgentState(program="focus-beta", assigned=ASSIGNED)
    assert controls.press(skip, last) == [Stop(), Start("calm-alpha")]
    idle_after = AgentState(assigned=ASSIGNED, last_program="calm-alpha")
    assert controls.press(skip, idle_after) == [Start("deep-theta")]
    reassigned = AgentState(program="old-program", assigned=ASSIGNED)
    assert controls.press(skip, reassigned) == [Stop(), Start("calm-alpha")]


def test_stop_stops_and_when_idle_acknowledges_a_fault() -> None:
    controls = Controls()
    paused = AgentState(program="calm-alpha", paused=True)
    assert controls.press(press(sl.BUTTON_STOP), paused) == [Stop()]
    faulted = AgentState(fault=sl.FAULT_OVER_TEMPERATURE)
    assert controls.press(press(sl.BUTTON_STOP, long=True), faulted) == [ClearFault()]
    assert controls.press(press(sl.BUTTON_STOP), AgentState()) == []


def test_volume_steps_ramp_inside_the_limits_and_the_ceiling_is_said() -> None:
    controls = Controls(step_db=3.0, floor_db=-9.0, volume_db=-6.0, ramp_s=0.25)
    state = AgentState(program="calm-alpha")
    up, down = press(sl.BUTTON_VOLUME_UP), press(sl.BUTTON_VOLUME_DOWN)
    assert controls.press(up, state) == [SetVolume(-3.0, 0.25)]
    assert controls.press(up, state) == [SetVolume(0.0, 0.25)]
    assert controls.press(up, state) == [Prompt("max_volume")]  # never past 0 dB
    assert controls.volume_db == 0.0
    assert [controls.press(down, state) for _ in range(4)] == [
        [SetVolume(-3.0, 0.25)],
        [SetVolume(-6.0, 0.25)],
        [SetVolume(-9.0, 0.25)],
        [],  # at the floor: nothing more to turn down, and no silence by accident
    ]
    assert Controls(step_db=5.0, floor_db=-20.0, volume_db=-2.0).press(up, state) == [
        SetVolume(0.0, 0.25)  # a step that would pass the ceiling stops at it
    ]


def test_bad_volume_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="ceiling_db ≤ 0 dB"):
        Controls(ceiling_db=3.0)
    with pytest.raises(ValueError, match="step_db > 0"):
        Controls(step_db=0.0)
    assert Controls(volume_db=12.0).volume_db == 0.0


def test_holding_a_volume_button_says_the_time_left() -> None:
    clock = ManualClock(1000.0)
    controls = Controls(clock=clock)
    state = AgentState(program="calm-alpha", ends_at=clock.now + 605.0)
    held = press(sl.BUTTON_VOLUME_DOWN, long=True)
    assert controls.press(held, state) == [Prompt("time_left", minutes=11)]
    clock.now += 600.0
    assert controls.press(press(sl.BUTTON_VOLUME_UP, long=True), state) == [
        Prompt("time_left", minutes=1)
    ]
    clock.now += 60.0
    assert controls.press(held, state) == [Prompt("time_left", minutes=0)]
    assert controls.press(held, AgentState()) == [SayStatus()]  # idle: ready, or why not
    assert controls.volume_db == 0.0  # a held volume button does not change the volume


def test_prompts_for_session_start_end_and_a_fault_the_person_can_fix() -> None:
    controls = Controls()
    idle, playing = AgentState(), AgentState(program="calm-alpha")
    assert controls.changed(idle, playing) == [Prompt("session_start"), SayProgram("calm-alpha")]
    assert controls.changed(playing, AgentState(program="calm-alpha", paused=True)) == []
    assert controls.changed(playing, idle) == [Prompt("session_end")]
    hot = AgentState(fault=sl.FAULT_OVER_TEMPERATURE)
    assert controls.changed(playing, hot) == [Prompt("fault_amplifier_hot")]
    unplugged = AgentState(fault=sl.FAULT_HEADPHONES_UNPLUGGED)
    assert controls.changed(playing, unplugged) == [Prompt("fault_headphones_unplugged")]
    assert controls.changed(playing, AgentState(fault=sl.FAULT_LINK_GARBLED)) == []
    skipped = AgentState(program="deep-theta")
    assert controls.changed(playing, skipped) == [Prompt("session_start"), SayProgram("deep-theta")]


def test_80_and_100_percent_of_the_allowance_are_each_said_once_per_week() -> None:
    controls = Controls()

    def at(fraction: float) -> AgentState:
        return AgentState(program="calm-alpha", dose_fraction=fraction)

    assert controls.changed(at(0.5), at(0.79)) == []
    assert controls.changed(at(0.79), at(0.8)) == [Prompt("dose_80")]
    assert controls.changed(at(0.8), at(0.95)) == []
    assert controls.changed(at(0.95), at(1.02)) == [Prompt("dose_100")]
    assert controls.changed(at(1.02), at(1.5)) == []
    assert controls.changed(at(1.5), at(0.3)) == []  # the window rolled on
    assert controls.changed(at(0.3), at(1.1)) == [Prompt("dose_80"), Prompt("dose_100")]


def test_the_light_follows_the_state() -> None:
    assert light_for(AgentState()) == sl.LIGHT_IDLE
    assert light_for(AgentState(syncing=True)) == sl.LIGHT_SYNCING
    assert light_for(AgentState(program="p", syncing=True)) == sl.LIGHT_PLAYING
    assert light_for(AgentState(program="p", attenuated=True)) == sl.LIGHT_ATTENUATED
    assert light_for(AgentState(program="p", paused=True)) == sl.LIGHT_IDLE
    assert light_for(AgentState(program="p", dose_fraction=1.0)) == sl.LIGHT_DOSE_REACHED
    faulted = AgentState(fault=sl.FAULT_HEADPHONES_UNPLUGGED, dose_fraction=1.0)
    assert light_for(faulted) == sl.LIGHT_FAULT


# -- the Panel: the controls bound to an agent, a real mixer and real prompts -----------------------


class Agent:
    """The agent as the panel sees it (``PanelHost``): start, stop, what plays, the person's
    programs of 150 s each and ``dose[0]`` of the week used."""

    def __init__(self) -> None:
        self.program: str | None = None
        self.calls: list[str] = []
        self.assigned: tuple[str, ...] = ASSIGNED
        self.dose: list[float] = []

    def play_from_panel(self, program: str) -> None:
        self.calls.append(f"start {program}")
        self.program = program

    def stop_playing(self) -> None:
        self.calls.append("stop")
        self.program = None

    def playing_program(self) -> str | None:
        return self.program

    def assigned_programs(self) -> tuple[str, ...]:
        return self.assigned

    def program_length_s(self, program: str) -> float | None:
        return 150.0

    def dose_fraction(self) -> float:
        return self.dose[0] if self.dose else 0.0

    def syncing(self) -> bool:
        return False

    def profile_in_force(self) -> HearingProfile:
        return HearingProfile()

    def checkin_answered(self, answer: Answered, at: datetime) -> None:
        raise AssertionError(f"no check-in was asked, yet {answer} came at {at}")

    def why_cannot_play(self, spec: str | None = None) -> Refusal | None:
        return None if self.assigned else NOTHING_ASSIGNED

    def ended_why(self) -> tuple[Refusal | None, bool] | None:
        return None

    def sessions_waiting(self) -> int:
        return 0


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> PromptLibrary:
    require_tool("espeak-ng")
    directory = tmp_path_factory.mktemp("prompts")
    keys = [
        "first_use", "session_start", "max_volume", "fault_amplifier_hot", "dose_80",
        "time_left", "n2", "minutes",
    ]  # fmt: skip
    build_prompts(directory, load_calibration_file(packaged_calibration()), sample_rate=RATE,
                  keys=keys)  # fmt: skip
    return PromptLibrary(directory, RATE)


def spoken(mixer: PromptMixer) -> list[str]:
    """Play the mixer until it has said everything queued; what it said."""
    while mixer.speaking:
        mixer.process(np.zeros((RATE // 10, 2), np.float32))
    return list(mixer.spoken)


def make_panel(
    library: PromptLibrary,
    tmp_path: Path,
    agent: Agent,
    clock: ManualClock,
    dose: list[float] | None = None,
    *,
    notice_given: bool = False,
    speak_idle: Callable[[PromptMixer], None] | None = None,
    render_names: Callable[[Sequence[str]], PromptLibrary] | None = None,
) -> Panel:
    """A panel on ``agent``, ``dose[0]`` of the week used; with ``notice_given`` the first-use
    notice was said before; ``speak_idle`` speaks between sessions."""
    if notice_given:
        (tmp_path / "notice-given").touch()
    agent.dose = dose if dose is not None else agent.dose
    return Panel(
        Controls(clock=clock),
        PromptMixer(RATE, clock=clock),
        library,
        agent,
        speak_idle=speak_idle,
        notice_marker=tmp_path / "notice-given",
        render_names=render_names,
        clock=clock,
    )


def test_the_panel_starts_speaks_and_shows_the_light(
    library: PromptLibrary, tmp_path: Path
) -> None:
    agent, clock, dose = Agent(), ManualClock(1000.0), [0.1]
    panel = make_panel(library, tmp_path, agent, clock, dose)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert agent.calls == ["start calm-alpha"]
    assert panel.light(consent=True, attenuated=False) == sl.LIGHT_PLAYING
    assert panel.light(consent=True, attenuated=True) == sl.LIGHT_ATTENUATED
    assert spoken(panel.mixer) == ["first_use", "session_start"]
    assert (tmp_path / "notice-given").exists()  # said once, ever
    panel.handle(press(sl.BUTTON_VOLUME_UP))
    assert spoken(panel.mixer)[2:] == ["max_volume"]
    clock.now += 30.0
    panel.handle(press(sl.BUTTON_VOLUME_DOWN, long=True))
    assert spoken(panel.mixer)[3:] == ["time_left+n2+minutes"]  # 150 s program, 30 s in
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert panel.mixer.paused and panel.state.paused
    assert panel.light(consent=True, attenuated=False) == sl.LIGHT_IDLE
    assert panel.describe() == {"light": "idle", "paused": True, "volume_db": 0.0, "prompts": True}
    panel.handle(press(sl.BUTTON_STOP))
    assert agent.calls[-1] == "stop"
    assert not panel.mixer.paused  # the next session does not start paused


def test_a_fault_shows_on_the_light_and_its_reason_waits_for_the_next_session(
    library: PromptLibrary, tmp_path: Path
) -> None:
    agent, clock, dose = Agent(), ManualClock(1000.0), [0.1]
    panel = make_panel(library, tmp_path, agent, clock, dose, notice_given=True)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert spoken(panel.mixer) == ["session_start"]  # the session said it
    panel.on_event(LinkEvent("fault", "MCU fault: amplifier over temperature", 1))
    agent.program = None  # the session ended on the fault
    panel.refresh()
    assert panel.light(consent=False, attenuated=False) == sl.LIGHT_FAULT
    clock.now += 3600.0  # long after: the reason is kept, not expired
    panel.handle(press(sl.BUTTON_PLAY_PAUSE, long=True))
    assert agent.calls == ["start calm-alpha", "start deep-theta"]
    assert panel.light(consent=True, attenuated=False) == sl.LIGHT_PLAYING
    assert spoken(panel.mixer)[1:] == ["fault_amplifier_hot", "session_start"]


def test_the_panel_tells_80_percent_of_the_allowance(
    library: PromptLibrary, tmp_path: Path
) -> None:
    agent, clock, dose = Agent(), ManualClock(1000.0), [0.5]
    panel = make_panel(library, tmp_path, agent, clock, dose, notice_given=True)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    dose[0] = 0.82
    panel.refresh()
    assert "dose_80" not in spoken(panel.mixer)  # read again only every 10 s
    clock.now += 10.0
    panel.refresh()
    assert spoken(panel.mixer)[-1] == "dose_80"


def test_a_session_paused_too_long_is_stopped(library: PromptLibrary, tmp_path: Path) -> None:
    agent, clock, dose = Agent(), ManualClock(1000.0), [0.0]
    panel = make_panel(library, tmp_path, agent, clock, dose)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    clock.now += MAX_PAUSE_S - 1
    panel.refresh()
    assert agent.calls == ["start calm-alpha"]
    clock.now += 1
    panel.refresh()
    assert agent.calls == ["start calm-alpha", "stop"]
    assert not panel.mixer.paused and panel.state.program is None


def test_between_sessions_a_prompt_is_spoken_at_once_or_waits_if_the_mcu_refuses(
    library: PromptLibrary, tmp_path: Path
) -> None:
    agent, clock = Agent(), ManualClock(1000.0)
    heard: list[list[str]] = []
    tried: list[bool] = []

    def speak_idle(mixer: PromptMixer) -> None:
        tried.append(True)
        if len(tried) > 1:
            raise ResoneraError("arm refused: amplifier over temperature")
        heard.append(spoken(mixer))

    agent.assigned = ()
    panel = make_panel(library, tmp_path, agent, clock, notice_given=True, speak_idle=speak_idle)
    panel.start()  # prompts between sessions are spoken on the panel's speaker thread
    try:
        panel.on_press(press(sl.BUTTON_VOLUME_UP))  # idle, at the ceiling
        wait_until(lambda: heard == [["max_volume"]], 10, "'maximum volume' said at once")
        panel.on_press(press(sl.BUTTON_VOLUME_UP))
        wait_until(lambda: len(tried) == 2, 10, "the MCU asked again, and refusing")
        assert heard == [["max_volume"]]
        assert panel.mixer.speaking  # waits for the next session (or expires)
    finally:
        panel.close()


def test_a_closed_panel_speaks_nothing_between_sessions(
    library: PromptLibrary, tmp_path: Path
) -> None:
    heard: list[list[str]] = []
    agent = Agent()
    panel = Panel(
        Controls(),
        PromptMixer(RATE),
        library,
        agent,
        speak_idle=lambda mixer: heard.append(spoken(mixer)),
        notice_marker=tmp_path / "notice-given",
    )
    panel.start()
    panel.close()  # the service is shutting down: its monitor and sink are going away
    panel.handle(press(sl.BUTTON_VOLUME_UP))
    assert heard == []
    assert panel.mixer.speaking  # queued, for no one: it expires with the mixer


def test_the_panel_says_each_prescribed_programs_name_as_the_button_starts_it(
    library: PromptLibrary, tmp_path: Path
) -> None:
    directory = tmp_path / "prompts"
    shutil.copytree(library.directory, directory)  # the module's cache stays as it was
    agent, clock = Agent(), ManualClock(1000.0)

    def render_names(names: Sequence[str]) -> PromptLibrary:
        calibration = load_calibration_file(packaged_calibration())
        build_program_name_prompts(directory, calibration, names)
        return PromptLibrary(directory, RATE)

    panel = make_panel(
        PromptLibrary(directory, RATE),
        tmp_path,
        agent,
        clock,
        notice_given=True,
        render_names=render_names,
    )
    panel.prepare_program_names(["calm-alpha", "deep-theta"])  # when they were applied
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert spoken(panel.mixer) == ["session_start", program_name_key("calm-alpha")]
    panel.handle(press(sl.BUTTON_PLAY_PAUSE, long=True))  # the next one
    assert agent.calls == ["start calm-alpha", "stop", "start deep-theta"]
    assert spoken(panel.mixer)[2:] == ["session_start", program_name_key("deep-theta")]
    panel.handle(press(sl.BUTTON_PLAY_PAUSE, long=True))  # focus-beta: no name was spoken
    assert spoken(panel.mixer)[4:] == ["session_start"]


def test_without_espeak_ng_the_names_are_not_said_the_programs_play_and_it_is_logged_once(
    library: PromptLibrary, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent, clock = Agent(), ManualClock(1000.0)

    def no_espeak(_names: Sequence[str]) -> PromptLibrary:
        raise PromptsError("espeak-ng is not installed (Debian: apt install espeak-ng)")

    panel = make_panel(library, tmp_path, agent, clock, notice_given=True, render_names=no_espeak)
    for _ in range(3):  # at every start and every document applied
        panel.prepare_program_names(["calm-alpha"])
    warnings = [r for r in caplog.records if "names are not spoken" in r.getMessage()]
    assert len(warnings) == 1 and "espeak-ng is not installed" in warnings[0].getMessage()
    assert "espeak-ng" in str(panel.describe()["program_names"])
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert agent.calls == ["start calm-alpha"]
    assert spoken(panel.mixer) == ["session_start"]


def test_with_nothing_to_play_the_button_says_so_and_logs_why(
    library: PromptLibrary, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "prompts"
    shutil.copytree(library.directory, directory)
    build_prompts(
        directory,
        load_calibration_file(packaged_calibration()),
        sample_rate=RATE,
        keys=["no_program"],
    )
    agent, clock = Agent(), ManualClock(1000.0)
    agent.assigned = ()  # none prescribed, and the built-in default not allowed
    panel = make_panel(PromptLibrary(directory, RATE), tmp_path, agent, clock, notice_given=True)
    panel.handle(press(sl.BUTTON_PLAY_PAUSE))
    assert agent.calls == [] and spoken(panel.mixer) == ["no_program"]
    assert NOTHING_MAY_PLAY in caplog.text  # the log says why, the light shows it
    assert panel.light(consent=False, attenuated=False) == sl.LIGHT_REFUSED
