"""Which outbox messages to send now: pure logic, driven by a clock (and a random source) the caller
passes in.

At-least-once: a message stays in flight until the server's application ack deletes it; if no ack comes
within ``resend_after_s`` it is sent again (the server stores by message id, so a repeat is harmless),
and each further resend waits twice as long, up to ``max_resend_after_s``, with jitter (±``jitter``/2),
so a server that is down is not hammered and a fleet does not resend in lockstep. After a reconnect
every unacked message is due again, once a random hold-off of up to ``reconnect_jitter_s`` has passed
(the broker that just came back is not stampeded). A token bucket bounds the send rate, so a long
offline backlog drains in steady batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence


class OutboxScheduler:
    def __init__(
        self,
        *,
        resend_after_s: float,
        max_messages_per_s: float,
        burst: int,
        max_resend_after_s: float | None = None,
        jitter: float = 0.2,
        reconnect_jitter_s: float = 0.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.resend_after_s = resend_after_s
        self.max_resend_after_s = max(resend_after_s, max_resend_after_s or resend_after_s)
        self.jitter = jitter
        self.reconnect_jitter_s = reconnect_jitter_s
        self.rate = max_messages_per_s
        self.burst = float(burst)
        self._rng = rng
        self._tokens = float(burst)
        self._last_refill: float | None = None
        self._hold_until: float | None = None
        #: message id → (when it is due again, how many times it was sent)
        self._sent: dict[str, tuple[float, int]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._sent)

    def _refill(self, now: float) -> None:
        if self._last_refill is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last_refill) * self.rate)
        self._last_refill = now

    def resend_delay(self, attempts: int) -> float:
        """How long after its ``attempts``-th send an unacked message waits (before jitter)."""
        return min(self.max_resend_after_s, self.resend_after_s * 2.0 ** max(0, attempts - 1))

    def _jittered(self, delay: float) -> float:
        if self.max_resend_after_s == self.resend_after_s or self.jitter <= 0:
            return delay  # no backoff configured: exact timeouts
        return delay * (1.0 + self.jitter * (self._rng() - 0.5))

    def due(self, pending: Sequence[str], now: float) -> list[str]:
        """From ``pending`` (oldest first), the ids to publish now; marks them in flight."""
        if self._hold_until is not None:
            if now < self._hold_until:
                return []
            self._hold_until = None
        self._refill(now)
        chosen: list[str] = []
        for message_id in pending:
            if self._tokens < 1.0:
                break
            sent = self._sent.get(message_id)
            if sent is not None and now < sent[0]:
                continue
            attempts = (sent[1] if sent is not None else 0) + 1
            self._sent[message_id] = (now + self._jittered(self.resend_delay(attempts)), attempts)
            self._tokens -= 1.0
            chosen.append(message_id)
        return chosen

    def overdue(self, now: float, limit: int) -> list[str]:
        """In-flight ids whose resend is due, the longest overdue first."""
        ready = sorted((due, mid) for mid, (due, _) in self._sent.items() if due <= now)
        return [mid for _, mid in ready[:limit]]

    def next_due_in(self, now: float) -> float | None:
        """Seconds until something may be sent again: the end of a reconnect hold-off, or the
        earliest in-flight message's resend (None: nothing in flight, no hold-off)."""
        if self._hold_until is not None:
            return max(0.0, self._hold_until - now)
        if not self._sent:
            return None
        return max(0.0, min(due for due, _ in self._sent.values()) - now)

    def acknowledged(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            self._sent.pop(message_id, None)

    def connection_lost(self, now: float | None = None) -> None:
        """After a reconnect nothing is known to be in flight: everything unacked is due again,
        after a random hold-off (``now`` given and ``reconnect_jitter_s`` > 0)."""
        self._sent.clear()
        if now is not None and self.reconnect_jitter_s > 0:
            self._hold_until = now + self.reconnect_jitter_s * self._rng()
