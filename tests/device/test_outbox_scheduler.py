from __future__ import annotations

from resonera.device.outbox import OutboxScheduler


def scheduler(rate: float = 10.0, burst: int = 3) -> OutboxScheduler:
    return OutboxScheduler(resend_after_s=5.0, max_messages_per_s=rate, burst=burst)


def test_sends_oldest_first_within_the_burst() -> None:
    s = scheduler()
    assert s.due(["a", "b", "c", "d"], now=0.0) == ["a", "b", "c"]
    assert s.in_flight == 3


def test_rate_limit_refills_over_time() -> None:
    s = scheduler(rate=10.0, burst=3)
    s.due(["a", "b", "c"], now=0.0)
    assert s.due(["a", "b", "c", "d", "e"], now=0.1) == ["d"]
    assert s.due(["a", "b", "c", "d", "e"], now=0.3) == ["e"]


def test_unacknowledged_messages_are_resent_after_the_timeout() -> None:
    s = scheduler(burst=10)
    s.due(["a", "b"], now=0.0)
    s.acknowledged(["a"])
    assert s.due(["b"], now=4.9) == []
    assert s.due(["b"], now=5.0) == ["b"]


def test_reconnect_makes_everything_unacknowledged_due_again() -> None:
    s = scheduler(burst=10)
    s.due(["a", "b"], now=0.0)
    s.connection_lost()
    assert s.due(["a", "b"], now=1.0) == ["a", "b"]
