"""Which outbox messages to send now: pure logic, driven by a clock the caller passes in.

At-least-once: a message stays in flight until the server's application ack deletes it; if no ack comes
within ``resend_after_s`` it is sent again (the server stores by message id, so a repeat is harmless).
A token bucket bounds the send rate, so a long offline backlog drains in steady batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class OutboxScheduler:
    def __init__(self, *, resend_after_s: float, max_messages_per_s: float, burst: int) -> None:
        self.resend_after_s = resend_after_s
        self.rate = max_messages_per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last_refill: float | None = None
        self._sent_at: dict[str, float] = {}

    @property
    def in_flight(self) -> int:
        return len(self._sent_at)

    def _refill(self, now: float) -> None:
        if self._last_refill is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last_refill) * self.rate)
        self._last_refill = now

    def due(self, pending: Sequence[str], now: float) -> list[str]:
        """From ``pending`` (oldest first), the ids to publish now; marks them in flight."""
        self._refill(now)
        chosen: list[str] = []
        for message_id in pending:
            if self._tokens < 1.0:
                break
            sent = self._sent_at.get(message_id)
            if sent is not None and now - sent < self.resend_after_s:
                continue
            self._sent_at[message_id] = now
            self._tokens -= 1.0
            chosen.append(message_id)
        return chosen

    def acknowledged(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            self._sent_at.pop(message_id, None)

    def connection_lost(self) -> None:
        """After a reconnect nothing is known to be in flight: everything unacked is due again."""
        self._sent_at.clear()
