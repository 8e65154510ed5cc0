"""The course of an agent update as a pure state machine (``device/updater/machine.py``): events in,
actions out, driven by event types alone."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from resonera.common.agent_update import AgentUpdateTarget
from resonera.device.updater.machine import (
    MAX_BACKOFF_S,
    MAX_CORRUPT_DOWNLOADS,
    Discard,
    Downloaded,
    DownloadFailed,
    Fetch,
    Prepare,
    Prepared,
    Rejected,
    Report,
    RetryAfter,
    RetryDue,
    SessionEnded,
    SessionStarted,
    Switch,
    SwitchRefused,
    TargetSeen,
    UpdateMachine,
    Verified,
    Verify,
)

pytestmark = pytest.mark.dateless

NEXT = AgentUpdateTarget("0.2.0", "a" * 64, 1000, "r1")
OTHER = AgentUpdateTarget("0.3.0", "b" * 64, 2000, "r2")


def reports(actions: Sequence[object]) -> list[str]:
    return [a.state for a in actions if isinstance(a, Report)]


def test_an_update_runs_download_verify_install_and_switches_when_no_session_plays() -> None:
    m = UpdateMachine("0.1.0")
    assert m.handle(TargetSeen(NEXT)) == [Report("downloading", NEXT), Fetch(NEXT)]
    assert m.handle(Downloaded(NEXT.sha256)) == [Report("verifying", NEXT), Verify(NEXT)]
    assert m.handle(Verified(NEXT.sha256)) == [Report("installing", NEXT), Prepare(NEXT)]
    assert m.handle(Prepared(NEXT.sha256, "b")) == [Report("switching", NEXT), Switch(NEXT, "b")]
    assert m.phase == "switching"
    # too late to change course: the switch is under way
    assert m.handle(TargetSeen(None)) == []
    assert m.handle(TargetSeen(OTHER)) == []


def test_the_switch_waits_for_the_session_to_end_and_for_one_starting_at_its_instant() -> None:
    m = UpdateMachine("0.1.0")
    m.handle(TargetSeen(NEXT))
    m.handle(SessionStarted())
    m.handle(Downloaded(NEXT.sha256))
    m.handle(Verified(NEXT.sha256))  # installing goes on during a session (at a lowered priority)
    assert m.handle(Prepared(NEXT.sha256, "b")) == []
    assert m.phase == "ready"
    assert m.handle(SessionEnded()) == [Report("switching", NEXT), Switch(NEXT, "b")]
    assert m.handle(SwitchRefused()) == []  # a press at the very instant: wait again
    assert m.phase == "ready"
    assert m.handle(SessionEnded()) == [Report("switching", NEXT), Switch(NEXT, "b")]


def test_nothing_is_done_for_no_target_the_running_version_or_a_target_given_up() -> None:
    m = UpdateMachine("0.2.0", given_up={OTHER.sha256})
    assert m.handle(TargetSeen(None)) == []
    assert m.handle(TargetSeen(NEXT)) == []  # already runs 0.2.0
    assert m.handle(TargetSeen(OTHER)) == []  # rolled back before: not tried again
    assert m.phase == "idle"


def test_a_refused_bundle_fails_once_is_dropped_and_not_tried_again() -> None:
    m = UpdateMachine("0.1.0")
    m.handle(TargetSeen(NEXT))
    m.handle(Downloaded(NEXT.sha256))
    actions = m.handle(Rejected(NEXT.sha256, "the manifest is not signed by a pinned update key"))
    assert actions == [
        Report("failed", NEXT, "the manifest is not signed by a pinned update key"),
        Discard(NEXT),
    ]
    assert m.handle(TargetSeen(None)) == []  # nothing left to drop
    assert m.handle(TargetSeen(NEXT)) == []  # the same bundle asked again
    assert reports(m.handle(TargetSeen(OTHER))) == ["downloading"]  # another one is tried


def test_network_failures_back_off_without_end_and_corrupt_downloads_fail() -> None:
    m = UpdateMachine("0.1.0")
    m.handle(TargetSeen(NEXT))
    delays = []
    for _ in range(10):
        [retry] = m.handle(DownloadFailed(NEXT.sha256, "cannot reach the server"))
        assert isinstance(retry, RetryAfter)
        delays.append(retry.delay_s)
        assert m.handle(RetryDue()) == [Fetch(NEXT)]
    assert delays[:3] == [5.0, 10.0, 20.0] and delays[-1] == MAX_BACKOFF_S
    for _ in range(MAX_CORRUPT_DOWNLOADS - 1):
        assert isinstance(
            m.handle(DownloadFailed(NEXT.sha256, "SHA-256 differs", corrupt=True))[0], RetryAfter
        )
    actions = m.handle(DownloadFailed(NEXT.sha256, "SHA-256 differs", corrupt=True))
    assert reports(actions) == ["failed"] and Discard(NEXT) in actions
    assert m.phase == "failed"


def test_a_withdrawn_or_replaced_target_drops_what_was_prepared_and_late_results_are_ignored() -> (
    None
):
    m = UpdateMachine("0.1.0")
    m.handle(TargetSeen(NEXT))
    m.handle(Downloaded(NEXT.sha256))
    m.handle(Verified(NEXT.sha256))
    assert m.handle(TargetSeen(OTHER)) == [
        Discard(NEXT),
        Report("downloading", OTHER),
        Fetch(OTHER),
    ]
    assert m.handle(Prepared(NEXT.sha256, "b")) == []  # the replaced target's late result
    assert m.handle(Downloaded(OTHER.sha256)) == [Report("verifying", OTHER), Verify(OTHER)]
    m2 = UpdateMachine("0.1.0")
    m2.handle(TargetSeen(NEXT))
    assert m2.handle(TargetSeen(None)) == [Discard(NEXT)]
    assert m2.handle(Downloaded(NEXT.sha256)) == []  # the withdrawn download's result
    assert m2.handle(Prepared(NEXT.sha256, "b")) == []


def test_a_slot_already_prepared_from_the_bundle_skips_to_the_switch() -> None:
    m = UpdateMachine("0.1.0")
    m.handle(TargetSeen(NEXT))
    assert m.handle(Prepared(NEXT.sha256, "a")) == [Report("switching", NEXT), Switch(NEXT, "a")]
