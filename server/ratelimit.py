"""Failed attempts counted per client address and per subject, in the database, and how long the
next attempt must wait: one ``FailureLimiter`` for sign-ins and for enrollment codes.

Every failure is a ``failed_attempt`` row (``kind``: ``login`` or ``enroll``), so every API process
(and every request running at the same time) counts the same ones. Rows older than the policy's
``window_s`` count for nothing and are dropped. A refused attempt (``Limited``, with the seconds
to wait) is not checked and does not count. Two policies say how long to wait:

- ``ProgressiveDelay`` (sign-ins, ``settings.login``): within the window the first
  ``free_per_client`` failures from one address, and the first ``free_per_subject`` on one subject
  (the email given), cost nothing; from then on the next attempt waits ``first_delay_s`` after the
  last failure, doubling with every further failure, up to ``max_delay_per_client_s`` /
  ``max_delay_per_subject_s``. Nothing is ever locked for good. An address adds at most
  ``free_per_client`` failures to a subject's count, so a subject is slowed down only by failures
  from several addresses: one stranger cannot slow down an account's owner. A sign-in is recorded
  *before* its password is checked (``begin``) and taken out again when it succeeds
  (``succeeded``), so concurrent guesses all count.
- ``FailureQuota`` (enrollment codes, ``settings.enrollment``): at most ``max_per_subject``
  failures on one subject (the serial) and ``max_per_client`` from one address within the window;
  past either, the next attempt waits until the oldest of them leaves the window. A code is
  checked first (``check``) and only a wrong one recorded (``failed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

from sqlalchemy import ColumnElement, delete, func
from sqlmodel import Session, col, select

from resonera.common.clock import Clock, utc_now
from resonera.common.errors import ResoneraError
from resonera.server.models import EMAIL_MAX, FailedAttemptRow
from resonera.server.settings import EnrollmentSettings, LoginLimitSettings

CLIENT_MAX: Final = 100
#: 2**30 s is far beyond any maximum delay; the cap keeps the power finite.
_MAX_DOUBLINGS: Final = 30

#: Whose failures: this address's, or the subject's (the account, the serial).
Scope = Literal["client", "subject"]


@dataclass(frozen=True)
class Failures:
    """The failures of one scope within the window."""

    count: int
    oldest: datetime | None
    last: datetime | None


class LimitPolicy(Protocol):
    """How long the next attempt waits after a scope's failures."""

    @property
    def window_s(self) -> float: ...

    def subject_share(self) -> int | None:
        """The most failures one address adds to a subject's count (None: all of them)."""

    def wait_s(self, scope: Scope, failures: Failures, now: datetime) -> float:
        """Seconds the next attempt still waits (0 or less: none)."""

    def retry_after_s(self, wait_s: float) -> int:
        """A wait as the whole seconds a client is told."""


@dataclass(frozen=True)
class ProgressiveDelay:
    """A delay after the free failures, doubling with each further one (sign-ins)."""

    window_s: float
    free_per_client: int
    free_per_subject: int
    first_delay_s: float
    max_delay_per_client_s: float
    max_delay_per_subject_s: float

    @classmethod
    def for_login(cls, settings: LoginLimitSettings) -> ProgressiveDelay:
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

    def subject_share(self) -> int | None:
        return self.free_per_client

    def wait_s(self, scope: Scope, failures: Failures, now: datetime) -> float:
        if failures.last is None:
            return 0.0
        if scope == "client":
            free, cap = self.free_per_client, self.max_delay_per_client_s
        else:
            free, cap = self.free_per_subject, self.max_delay_per_subject_s
        until = failures.last + timedelta(seconds=self.delay_s(failures.count, free, cap))
        return (until - now).total_seconds()

    def retry_after_s(self, wait_s: float) -> int:
        return max(1, math.ceil(wait_s))


@dataclass(frozen=True)
class FailureQuota:
    """A fixed number of failures per window, then a wait for the oldest to leave it (codes)."""

    window_s: float
    max_per_client: int
    max_per_subject: int

    @classmethod
    def for_enrollment(cls, settings: EnrollmentSettings) -> FailureQuota:
        return cls(
            window_s=settings.window_s,
            max_per_client=settings.max_failures_per_client,
            max_per_subject=settings.max_failures_per_serial,
        )

    def subject_share(self) -> int | None:
        return None

    def wait_s(self, scope: Scope, failures: Failures, now: datetime) -> float:
        limit = self.max_per_client if scope == "client" else self.max_per_subject
        if failures.count < limit or failures.oldest is None:
            return 0.0
        return (failures.oldest + timedelta(seconds=self.window_s) - now).total_seconds()

    def retry_after_s(self, wait_s: float) -> int:
        # the second after the oldest failure leaves the window
        return max(int(wait_s) + 1, 1)


class Limited(ResoneraError):
    """Too many recent failures: come back in ``retry_after_s`` seconds. ``scope`` says whose
    failures: ``client`` (this address) or ``subject`` (e.g. the account)."""

    def __init__(self, scope: Scope, retry_after_s: int) -> None:
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
        """Record an attempt on ``subject`` from ``client`` as a failure and commit it; raise
        ``Limited`` (and take it out again) when the failures before it say to wait first."""
        now = self.clock()
        row = self._record(session, subject, client, now)
        assert row.id is not None
        attempt = Attempt(row.id, row.subject, row.client)
        try:
            self._refuse_if_waiting(session, row.subject, row.client, now, before_id=row.id)
        except Limited:
            session.execute(delete(FailedAttemptRow).where(col(FailedAttemptRow.id) == row.id))
            session.commit()
            raise
        return attempt

    def check(self, session: Session, subject: str, client: str) -> None:
        """Raise ``Limited`` when an attempt on ``subject`` from ``client`` must wait first."""
        self._refuse_if_waiting(
            session, subject[:EMAIL_MAX], client[:CLIENT_MAX], self.clock(), before_id=None
        )

    def failed(self, session: Session, subject: str, client: str) -> None:
        """Record a failed attempt on ``subject`` from ``client`` and commit it."""
        self._record(session, subject, client, self.clock())

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

    def _since(self, now: datetime) -> datetime:
        return now - timedelta(seconds=self.policy.window_s)

    def _record(
        self, session: Session, subject: str, client: str, now: datetime
    ) -> FailedAttemptRow:
        """Drop the rows that left the window (the table stays small), add one and commit: it is
        visible to every other request from now on."""
        session.execute(
            delete(FailedAttemptRow).where(
                col(FailedAttemptRow.kind) == self.kind,
                col(FailedAttemptRow.at) <= self._since(now),
            )
        )
        row = FailedAttemptRow(
            kind=self.kind, subject=subject[:EMAIL_MAX], client=client[:CLIENT_MAX], at=now
        )
        session.add(row)
        session.commit()
        return row

    def _refuse_if_waiting(
        self, session: Session, subject: str, client: str, now: datetime, *, before_id: int | None
    ) -> None:
        """``Limited`` for the scope that must wait longest (the address on a tie), counting the
        failures within the window (recorded before row ``before_id``, when given)."""
        waits = {
            scope: self.policy.wait_s(scope, failures, now)
            for scope, failures in self._failures(session, subject, client, now, before_id).items()
        }
        scope, wait = max(waits.items(), key=lambda item: item[1])
        if wait > 0:
            raise Limited(scope, self.policy.retry_after_s(wait))

    def _failures(
        self, session: Session, subject: str, client: str, now: datetime, before_id: int | None
    ) -> dict[Scope, Failures]:
        counted: list[ColumnElement[bool]] = [
            col(FailedAttemptRow.kind) == self.kind,
            col(FailedAttemptRow.at) > self._since(now),
        ]
        if before_id is not None:
            counted.append(col(FailedAttemptRow.id) < before_id)
        client_count, client_oldest, client_last = session.exec(
            select(
                func.count(), func.min(FailedAttemptRow.at), func.max(FailedAttemptRow.at)
            ).where(*counted, col(FailedAttemptRow.client) == client)
        ).one()
        per_client = session.exec(
            select(
                FailedAttemptRow.client,
                func.count(),
                func.min(FailedAttemptRow.at),
                func.max(FailedAttemptRow.at),
            )
            .where(*counted, col(FailedAttemptRow.subject) == subject)
            .group_by(col(FailedAttemptRow.client))
        ).all()
        share = self.policy.subject_share()
        return {
            "client": Failures(client_count, _aware(client_oldest), _aware(client_last)),
            "subject": Failures(
                sum(count if share is None else min(count, share) for _, count, _, _ in per_client),
                _aware(min((oldest for _, _, oldest, _ in per_client), default=None)),
                _aware(max((last for _, _, _, last in per_client), default=None)),
            ),
        }


def _aware(value: datetime | None) -> datetime | None:
    # an aggregate may come back naive (UTC) on SQLite
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
