"""Failed attempts counted per client address and per subject, with a progressive delay.

``FailureLimiter`` guards one kind of attempt (``login``: the subject is the email given). Every
attempt is stored in ``failed_attempt`` *before* it is checked, and committed, so every API process
(and every request running at the same time) counts it; a success takes it out again, a failure
leaves it in. Rows older than ``window_s`` count for nothing and are dropped.

Within the window the first ``free_per_client`` failures from one address, and the first
``free_per_subject`` on one subject, cost nothing; from then on the next attempt must wait
``first_delay_s`` after the last failure, doubling with every further failure, up to
``max_delay_per_client_s`` / ``max_delay_per_subject_s``. An attempt made too early is refused
(``Limited``, with the seconds to wait) without being checked and without counting. Nothing is
ever locked for good: waiting always lets one more attempt through.

An address adds at most ``free_per_client`` failures to a subject's count, so a subject is slowed
down only by failures from several addresses: one stranger cannot slow down an account's owner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from resonera.common.clock import Clock, utc_now
from resonera.common.errors import ResoneraError
from resonera.server.models import EMAIL_MAX, FailedAttemptRow
from resonera.server.settings import LoginLimitSettings

CLIENT_MAX: Final = 100
#: 2**30 s is far beyond any maximum delay; the cap keeps the power finite.
_MAX_DOUBLINGS: Final = 30


@dataclass(frozen=True)
class LimitPolicy:
    window_s: float
    free_per_client: int
    free_per_subject: int
    first_delay_s: float
    max_delay_per_client_s: float
    max_delay_per_subject_s: float

    @classmethod
    def for_login(cls, settings: LoginLimitSettings) -> LimitPolicy:
        return cls(
            window_s=settings.window_s,
            free_per_client=settings.free_failures_per_client,
            free_per_subject=settings.free_failures_per_account,
            first_delay_s=settings.first_delay_s,
            max_delay_per_client_s=settings.max_delay_per_client_s,
            max_delay_per_subject_s=settings.max_delay_per_account_s,
        )

    def delay_s(self, failures: int, free: int, cap: float) -> float:
        """How long after the last failure the next attempt waits, after ``failures``."""
        if failures < free:
            return 0.0
        return min(cap, math.ldexp(self.first_delay_s, min(failures - free, _MAX_DOUBLINGS)))


class Limited(ResoneraError):
    """Too many recent failures: come back in ``retry_after_s`` seconds. ``scope`` says whose
    failures: ``client`` (this address) or ``subject`` (e.g. the account)."""

    def __init__(self, scope: str, retry_after_s: int) -> None:
        super().__init__(f"too many failed attempts ({scope}); retry in {retry_after_s} s")
        self.scope = scope
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Attempt:
    """An attempt under way (its row counts as a failure until ``succeeded``)."""

    row_id: int
    subject: str
    client: str


class FailureLimiter:
    """The limits of one ``kind`` of attempt, on ``clock``."""

    def __init__(self, kind: str, policy: LimitPolicy, *, clock: Clock = utc_now) -> None:
        self.kind = kind
        self.policy = policy
        #: Dates the attempts; tests move it instead of waiting.
        self.clock = clock

    def begin(self, session: Session, subject: str, client: str) -> Attempt:
        """Record an attempt on ``subject`` from ``client`` and commit it; raise ``Limited`` (and
        take it out again) when one of the two must wait first."""
        now = self.clock()
        since = now - timedelta(seconds=self.policy.window_s)
        session.execute(
            delete(FailedAttemptRow).where(
                col(FailedAttemptRow.kind) == self.kind, col(FailedAttemptRow.at) <= since
            )
        )
        row = FailedAttemptRow(
            kind=self.kind, subject=subject[:EMAIL_MAX], client=client[:CLIENT_MAX], at=now
        )
        session.add(row)
        session.commit()  # visible to every other request from now on
        assert row.id is not None
        attempt = Attempt(row.id, row.subject, row.client)
        waits = self._waits(session, attempt, now, since)
        scope, wait = max(waits.items(), key=lambda item: item[1])
        if wait > 0:
            session.execute(delete(FailedAttemptRow).where(col(FailedAttemptRow.id) == row.id))
            session.commit()
            raise Limited(scope, max(1, math.ceil(wait)))
        return attempt

    def _waits(
        self, session: Session, attempt: Attempt, now: datetime, since: datetime
    ) -> dict[str, float]:
        """Seconds still to wait, per scope, counting the attempts recorded before this one."""
        earlier = (
            col(FailedAttemptRow.kind) == self.kind,
            col(FailedAttemptRow.at) > since,
            col(FailedAttemptRow.id) < attempt.row_id,
        )
        policy = self.policy
        client_count, client_last = session.exec(
            select(func.count(), func.max(FailedAttemptRow.at)).where(
                *earlier, col(FailedAttemptRow.client) == attempt.client
            )
        ).one()
        per_client = session.exec(
            select(FailedAttemptRow.client, func.count(), func.max(FailedAttemptRow.at))
            .where(*earlier, col(FailedAttemptRow.subject) == attempt.subject)
            .group_by(col(FailedAttemptRow.client))
        ).all()
        subject_count = sum(min(count, policy.free_per_client) for _, count, _ in per_client)
        subject_last = max((last for _, _, last in per_client), default=None)
        waits = {"client": 0.0, "subject": 0.0}
        for scope, count, last, free, cap in (
            (
                "client",
                client_count,
                client_last,
                policy.free_per_client,
                policy.max_delay_per_client_s,
            ),
            (
                "subject",
                subject_count,
                subject_last,
                policy.free_per_subject,
                policy.max_delay_per_subject_s,
            ),
        ):
            if last is None:
                continue
            until = _aware(last) + timedelta(seconds=policy.delay_s(count, free, cap))
            waits[scope] = max(0.0, (until - now).total_seconds())
        return waits

    def succeeded(self, session: Session, attempt: Attempt) -> None:
        """The attempt was right: take it out, with this address's earlier failures on the same
        subject (the owner's own typos; other addresses' failures keep counting). The caller
        commits."""
        session.execute(
            delete(FailedAttemptRow).where(
                col(FailedAttemptRow.kind) == self.kind,
                col(FailedAttemptRow.subject) == attempt.subject,
                col(FailedAttemptRow.client) == attempt.client,
                col(FailedAttemptRow.id) <= attempt.row_id,
            )
        )

    def forget_subject(self, session: Session, subject: str) -> None:
        """Drop every failure on ``subject`` (an admin lifts an account's delay). The caller
        commits."""
        session.execute(
            delete(FailedAttemptRow).where(
                col(FailedAttemptRow.kind) == self.kind,
                col(FailedAttemptRow.subject) == subject[:EMAIL_MAX],
            )
        )


def _aware(value: datetime) -> datetime:
    # as the enrollment limit: an aggregate may come back naive (UTC) on SQLite
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
