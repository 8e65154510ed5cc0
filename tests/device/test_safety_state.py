from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resonera.common.ids import new_id
from resonera.common.routine_events import NORMAL_END_CAUSE
from resonera.device.safety.state import (
    Event,
    IllegalTransition,
    SafetyStateMachine,
    State,
)
from resonera.device.safety.supervisor import SessionSupervisor
from resonera.device.safety_events import SafetyEventRecorder
from resonera.device.store import DeviceStore


def state_of(machine: SafetyStateMachine) -> State:
    """Read the state afresh (keeps the type checker from assuming it cannot change)."""
    return machine.state


def supervisor_state(supervisor: SessionSupervisor) -> State:
    """Read the state afresh (as ``state_of``)."""
    return supervisor.state


def playing() -> SafetyStateMachine:
    machine = SafetyStateMachine()
    machine.handle(Event.START, 0.0, "person pressed play")
    machine.handle(Event.ARMED, 0.1, "MCU armed")
    return machine


def test_happy_path_records_every_transition_with_its_cause() -> None:
    machine = playing()
    machine.handle(Event.SESSION_END, 60.0, "program ended")
    assert [(t.from_state, t.to_state, t.cause) for t in machine.history] == [
        (State.IDLE, State.ARMING, "person pressed play"),
        (State.ARMING, State.PLAYING, "MCU armed"),
        (State.PLAYING, State.IDLE, "program ended"),
    ]
    assert [t.at for t in machine.history] == [0.0, 0.1, 60.0]


def test_a_fault_latches_until_the_cause_is_gone_and_the_person_starts_again() -> None:
    machine = playing()
    machine.handle(Event.FAULT, 5.0, "amplifier over temperature")
    assert machine.state is State.FAULT and not machine.sound_allowed
    machine.handle(Event.STOP, 6.0)
    assert machine.state is State.FAULT  # stopping does not unlatch
    with pytest.raises(IllegalTransition, match="still present"):
        machine.handle(Event.START, 7.0)
    machine.handle(Event.FAULT_CLEARED, 8.0)
    assert machine.state is State.FAULT  # the cause is gone, but nobody asked to play
    machine.handle(Event.START, 9.0, "person pressed play")
    assert state_of(machine) is State.ARMING


def test_warnings_attenuate_until_all_of_them_clear() -> None:
    machine = playing()
    machine.handle(Event.WARNING, 1.0, "amp warm")
    machine.handle(Event.WARNING, 2.0, "supply current high")
    assert machine.state is State.ATTENUATING
    machine.handle(Event.WARNING_CLEARED, 3.0, "amp warm")
    assert machine.state is State.ATTENUATING
    machine.handle(Event.WARNING_CLEARED, 4.0, "supply current high")
    assert state_of(machine) is State.PLAYING


def test_dose_attenuation_is_not_undone_by_a_cleared_warning() -> None:
    machine = playing()
    machine.handle(Event.DOSE_REACHED, 1.0, "100 % of the weekly allowance")
    machine.handle(Event.WARNING, 2.0, "amp warm")
    machine.handle(Event.WARNING_CLEARED, 3.0, "amp warm")
    assert machine.state is State.ATTENUATING


def test_dose_stop_ends_the_session() -> None:
    machine = playing()
    machine.handle(Event.DOSE_STOP, 1.0, "100 % of the weekly allowance")
    assert machine.state is State.IDLE


def test_no_sound_without_arming() -> None:
    machine = SafetyStateMachine()
    with pytest.raises(IllegalTransition):
        machine.handle(Event.ARMED, 0.0)
    machine.handle(Event.START, 0.0)
    machine.handle(Event.ARM_FAILED, 1.0, "no answer from the safety MCU")
    assert machine.state is State.IDLE and not machine.sound_allowed


def test_simulation_is_marked_on_every_transition() -> None:
    machine = SafetyStateMachine(simulation=True)
    machine.handle(Event.START, 0.0)
    machine.handle(Event.ARMED, 0.0, "simulation: no MCU")
    assert all(t.simulation for t in machine.history)


@given(st.lists(st.sampled_from(list(Event)), max_size=40))
def test_sound_is_only_ever_allowed_after_armed_and_never_straight_after_a_fault(
    events: list[Event],
) -> None:
    machine = SafetyStateMachine()
    for i, event in enumerate(events):
        before = machine.state
        try:
            machine.handle(event, float(i), "cause")
        except IllegalTransition:
            assert machine.state is before  # a refused event changes nothing
            continue
        if event is Event.FAULT:
            assert not machine.sound_allowed
        if machine.sound_allowed and before not in (State.PLAYING, State.ATTENUATING):
            assert event is Event.ARMED


def test_an_event_the_machine_refuses_mutes_the_session_and_says_which() -> None:
    supervisor = SessionSupervisor(None, simulation=False, session_id="s1", clock=lambda: 0.0)
    supervisor.handle(Event.START, "person pressed play")
    supervisor.handle(Event.ARMED, "MCU armed")
    assert supervisor.sound_allowed and supervisor.silence_reason == ""
    assert supervisor.handle(Event.START, "a second start while playing")  # in doubt: muted
    assert supervisor.state is State.FAULT and not supervisor.sound_allowed
    assert "refused 'start'" in supervisor.silence_reason


def test_a_fault_after_the_session_ended_changes_nothing_and_is_not_recorded(
    tmp_path: Path,
) -> None:
    """A session's own release mutes the MCU after its end: that withdrawal reaching the ended
    session's machine is no fault of the session (it read ``idle -> fault`` before issue 21)."""
    store = DeviceStore(tmp_path / "device.db")
    with SafetyEventRecorder(store, "dev-a", simulation=False) as recorder:
        supervisor = SessionSupervisor(recorder, simulation=False, session_id=new_id())
        supervisor.handle(Event.START, "person pressed play")
        supervisor.handle(Event.ARMED, "MCU armed")
        supervisor.handle(Event.SESSION_END, NORMAL_END_CAUSE)
        assert not supervisor.handle(Event.FAULT, "muted on request: muted on the device's request")
        assert supervisor.state is State.IDLE and supervisor.silence_reason
        assert recorder.flush()
        assert store.events() == []  # a normal start and end: counted
        assert recorder.routine_counts()["session_transitions"] == 3
        # the person starts again: a fault is the session's again, and recorded
        supervisor.handle(Event.START, "person pressed play")
        assert supervisor.handle(Event.FAULT, "MCU fault: amplifier over temperature")
        assert supervisor_state(supervisor) is State.FAULT
        assert recorder.flush()
    [fault] = store.events()
    assert (fault.from_state, fault.to_state) == ("arming", "fault")


def test_a_fault_before_any_session_still_latches() -> None:
    machine = SafetyStateMachine()
    machine.handle(Event.FAULT, 0.0, "MCU fault: amplifier over temperature")
    assert machine.state is State.FAULT and not machine.sound_allowed
