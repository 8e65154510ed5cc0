"""The outbox scheduler's resend backoff, jitter and reconnect hold-off, with a clock and a random
source the test controls."""

from __future__ import annotations

import itertools

from resonera.device.outbox import OutboxScheduler


def scheduler(rng: float = 0.5, reconnect_jitter_s: float = 0.0) -> OutboxScheduler:
    return OutboxScheduler(
        resend_after_s=2.0,
        max_messages_per_s=1000.0,
        burst=100,
        max_resend_after_s=10.0,
        jitter=0.2,
        reconnect_jitter_s=reconnect_jitter_s,
        rng=lambda: rng,
    )


def test_unacked_resends_back_off_doubling_up_to_the_ceiling() -> None:
    s = scheduler()  # rng 0.5: no jitter
    sent_at = []
    now = 0.0
    while now < 60.0:
        if s.due(["a"], now):
            sent_at.append(now)
        now = round(now + 0.1, 1)
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert [round(g, 1) for g in gaps[:5]] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_spreads_resends_within_its_band() -> None:
    early, late = scheduler(rng=0.0), scheduler(rng=1.0)
    for s in (early, late):
        s.due(["a"], 0.0)
    assert early.next_due_in(0.0) == 2.0 * 0.9
    assert late.next_due_in(0.0) == 2.0 * 1.1


def test_an_ack_stops_the_resends() -> None:
    s = scheduler()
    s.due(["a"], 0.0)
    s.acknowledged(["a"])
    assert s.next_due_in(0.0) is None
    assert s.overdue(100.0, limit=10) == []


def test_after_a_reconnect_everything_is_due_after_a_random_hold_off() -> None:
    s = scheduler(rng=0.25, reconnect_jitter_s=4.0)
    s.due(["a", "b"], 0.0)
    s.connection_lost(now=10.0)
    assert s.next_due_in(10.0) == 1.0
    assert s.due(["a", "b"], 10.5) == []
    assert s.due(["a", "b"], 11.0) == ["a", "b"]


def test_overdue_lists_the_longest_waiting_first() -> None:
    s = scheduler()
    s.due(["a"], 0.0)
    s.due(["b"], 1.0)
    assert s.overdue(2.5, limit=10) == ["a"]
    assert s.overdue(5.0, limit=10) == ["a", "b"]
    assert s.overdue(5.0, limit=1) == ["a"]
