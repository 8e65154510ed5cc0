"""Turning batches of received MQTT messages into stored rows, without any MQTT.

``IngestProcessor.process`` takes (topic, payload) pairs, stores the whole batch in one transaction
and says which message ids each device may now delete. Checks on every message, in order:

1. the envelope parses (schema, sizes, ids) and the topic's device and kind are the envelope's own;
2. the device is registered and not revoked;
3. if the device has a registered public key, ``sig`` verifies with it (otherwise the row is stored
   with ``sig_status = "unsigned"``: devices do not sign yet);
4. the body is valid for its kind: ``SessionRecord`` and ``SafetyEventRecord`` (``common.records``,
   what the device wrote), strictly through JSON;
5. the message id is new, or stored (or earlier in the batch) with the same content
   (``content_digest``, kept in the row's ``digest``). The same content again is a duplicate,
   acknowledged again without the checks below; other content under a stored id is refused
   ("message id X reused with different content"). Rows stored before digests were kept count
   as the same content when their kind is the same;
6. the device's times are believed within ``TimeBounds`` of the receive time (the injected
   clock): the envelope's ``time``, a session's ``started_at`` and ``ended_at`` (not before
   ``started_at``), an event's ``at``, a check-in's ``answered_at``, none later than the receive
   time plus ``skew`` nor earlier than it minus ``max_age``;
7. a session (from ``started_at`` to ``ended_at``), an event (by its envelope ``time``, which
   attributes it) or a check-in (``answered_at``) dated in one of the device's assignments (the
   one covering its start, or starting within ``skew`` after it) is refused when that assignment
   had ended (plus ``skew``) before the receive time, so nothing a device sends after leaving a
   patient enters that former patient's record, whatever date it carries, and when the session
   runs on past the assignment's end (it spans a reassignment). One dated outside every
   assignment (before the first, in a gap) is nobody's: stored unattributed, as before (an
   assignment made later for that period attributes it).

A message failing any check goes to the quarantine table with a one-line reason and is counted; the
rest of its batch is stored. One that fails only checks 4 to 7 came from its device, unaltered, and
will never become valid by resending: it is acknowledged (in ``BatchResult.committed``) so the
device drops it from its outbox instead of resending it forever; the quarantine row keeps it.
Every authenticated message (checks 1 to 3 passed) measures the device's clock: the smallest
receive time − envelope time of a batch goes to ``device_state.clock_skew_s``.
``process`` never raises for a bad message:

- an unexpected exception while checking one message (a bug, or input no check foresaw)
  quarantines that message with the exception as its one-line reason, logged with its traceback;
  it is not acknowledged (the device keeps it and resends it later, when a fixed server may take it);
- when storing the batch raises anything but a failure of the database itself (a value the
  database or our code chokes on: ``DataError``, an error binding a value, any other exception),
  the batch is stored again one message at a time, so the rest of the batch is stored and
  acknowledged and only the message that fails is quarantined (as above, not acknowledged).

It does raise (``StoreError``) when the database itself fails (unreachable, locked, schema
missing, ...); then nothing of the batch is committed and nothing may be acknowledged (when that
happens midway through the one-at-a-time retry, the messages before are committed, and storing the
batch again acknowledges them as duplicates). Presence messages (``.../status``,
``online``/``offline``) update ``device_state.online``; they are not acknowledged.

The MQTT side (subscribing, batching, acknowledging) is ``resonera.server.ingest_mqtt``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Connection, and_, case, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError, StatementError

from resonera.common import topics
from resonera.common.envelope import Envelope, check_topic_matches, decode_envelope
from resonera.common.errors import ProtocolError, ResoneraError, describe_validation_error
from resonera.common.records import (
    CheckInRecord,
    DesiredReport,
    SafetyEventRecord,
    SessionRecord,
)
from resonera.server import metrics
from resonera.server.crypto import verify_device_signature
from resonera.server.db import insert_ignore, lock_for_write, upsert
from resonera.server.models import (
    QUARANTINE_PAYLOAD_MAX,
    QUARANTINE_REASON_MAX,
    QUARANTINE_TOPIC_MAX,
    SIG_UNSIGNED,
    SIG_VERIFIED,
    AssignmentRow,
    DeviceCertificateRow,
    DeviceRow,
    DeviceStateRow,
    DoseDailyRow,
    MessageRow,
    QuarantineRow,
    SafetyEventRow,
    SessionRow,
    table_of,
)
from resonera.server.outcomes import parse_checkin, store_checkins
from resonera.server.settings import ServerSettings

log = logging.getLogger(__name__)

_KEY = ("device_id", "message_id")
#: Counter names, always present in ``IngestProcessor.counters``.
COUNTERS = ("received", "stored", "duplicates", "quarantined")
_STATUS_RE: Final = re.compile(rf"^{topics.PREFIX}/({topics.DEVICE_ID_PATTERN})/status$")
_SESSION_COLUMNS: Final = frozenset(table_of(SessionRow).c.keys())
_Record = TypeVar("_Record", bound=BaseModel)


class StoreError(ResoneraError):
    """The database refused or failed a batch; nothing of it was committed."""


@dataclass(frozen=True)
class Received:
    """One message as it came off the broker."""

    topic: str
    payload: bytes


@dataclass
class BatchResult:
    """What a committed batch means for the devices."""

    #: Per device, the message ids now in the store (new and already stored), in arrival order,
    #: then those quarantined for an invalid body. The device may delete exactly these.
    committed: dict[str, list[str]] = field(default_factory=dict)
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0


@dataclass(frozen=True)
class _Device:
    revoked: bool
    public_key: str | None
    #: (key, superseded at) of the device's earlier, unrevoked certificates: what it queued before
    #: a renewal is signed with the key it had then.
    earlier_keys: tuple[tuple[str, datetime], ...] = ()


#: A device's clock may run this far behind the server's when it renews.
RENEWAL_SKEW = timedelta(minutes=10)


@dataclass(frozen=True)
class TimeBounds:
    """How far ingest believes a device's times from the receive time (checks 6 and 7)."""

    #: Later than the receive time by at most this (the device's clock may run ahead); also the
    #: slack at an assignment's ends.
    skew: timedelta = timedelta(minutes=5)
    #: Earlier than the receive time by at most this (a device offline for weeks keeps its
    #: records in its outbox).
    max_age: timedelta = timedelta(days=90)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> TimeBounds:
        return cls(
            skew=timedelta(seconds=settings.device_time_skew_s),
            max_age=timedelta(days=settings.device_time_max_age_days),
        )


#: What a body parses into, by kind (metrics carry none).
_Body = SessionRecord | SafetyEventRecord | DesiredReport | CheckInRecord


@dataclass
class _Valid:
    envelope: Envelope
    sig_status: str
    record: _Body | None = None
    #: ``content_digest`` of the envelope: the content a message id stands for.
    digest: str = ""


@dataclass
class _Plan:
    """A batch sorted into rows, before it touches the database."""

    valid: list[_Valid] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    #: (device, message id) of authentic messages quarantined for their body: acknowledged.
    refused: list[tuple[str, str]] = field(default_factory=list)
    status: dict[str, tuple[bool, datetime]] = field(default_factory=dict)
    #: Presence messages in the batch (not device records: not counted as received).
    presence: int = 0
    #: Per authenticated device, the smallest receive time − envelope time (seconds).
    skew: dict[str, float] = field(default_factory=dict)
    #: The assignments of the batch's devices (read once, for checks and attribution).
    attribution: _Attribution | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class IngestProcessor:
    """Validates and stores batches idempotently. Not thread-safe: one worker calls ``process``."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = _now,
        bounds: TimeBounds = TimeBounds(),
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._bounds = bounds
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    def process(self, batch: Iterable[Received]) -> BatchResult:
        """Store ``batch`` in one transaction; raise ``StoreError`` if the database fails. When
        storing it fails otherwise, store its messages one at a time (see the module's docstring)."""
        now = self._clock()
        messages = list(batch)
        try:
            plan, inserted = self._commit(messages, now)
        except Exception as exc:
            if _database_failed(exc):
                raise StoreError(f"storing a batch failed: {_one_line(exc)}") from exc
            log.exception(
                "storing a batch of %d messages failed (%s); storing them one at a time",
                len(messages),
                _one_line(exc),
            )
            return self._one_at_a_time(messages, now)
        return self._account(messages, plan, inserted, now)

    def _commit(
        self, messages: list[Received], now: datetime
    ) -> tuple[_Plan, set[tuple[str, str]]]:
        with self._engine.begin() as conn:
            lock_for_write(conn)
            plan = self._plan(conn, messages, now)
            inserted = self._store(conn, plan, now)
        return plan, inserted

    def _one_at_a_time(self, messages: list[Received], now: datetime) -> BatchResult:
        """Each message in a transaction of its own; one that still fails is quarantined alone."""
        total = BatchResult()
        for message in messages:
            try:
                plan, inserted = self._commit([message], now)
            except Exception as exc:
                if _database_failed(exc):
                    raise StoreError(f"storing a message failed: {_one_line(exc)}") from exc
                plan, inserted = self._quarantine_alone(message, now, exc), set()
            _merge(total, self._account([message], plan, inserted, now))
        return total

    def _quarantine_alone(self, message: Received, now: datetime, exc: Exception) -> _Plan:
        """``message``, which failed to store, in the quarantine (not acknowledged)."""
        plan = _Plan()
        reason = _unexpected("storing", exc, message)
        _quarantine(plan, message, now, reason, _device_of(message.payload))
        try:
            with self._engine.begin() as conn:
                conn.execute(table_of(QuarantineRow).insert(), plan.quarantine)
        except Exception as again:
            if _database_failed(again):
                raise StoreError(f"quarantining a message failed: {_one_line(again)}") from again
            # Not even its quarantine row stores: it is lost here, but not for good (the device
            # resends what is never acknowledged), and the rest of the batch goes on.
            log.exception("quarantining a message on %r failed too", plan.quarantine[0]["topic"])
        return plan

    def _account(
        self,
        messages: list[Received],
        plan: _Plan,
        inserted: set[tuple[str, str]],
        now: datetime,
    ) -> BatchResult:
        """The result of a committed ``plan``; counters and metrics updated."""
        result = BatchResult(quarantined=len(plan.quarantine))
        seen: set[tuple[str, str]] = set()
        for item in plan.valid:
            key = (item.envelope.device, item.envelope.id)
            if key in seen:
                result.duplicates += 1
                continue
            seen.add(key)
            if key in inserted:
                result.stored += 1
                metrics.INGEST_LAG.observe(max(0.0, (now - item.envelope.time).total_seconds()))
            else:
                result.duplicates += 1
            result.committed.setdefault(key[0], []).append(key[1])
        for key in plan.refused:
            if key not in seen:
                seen.add(key)
                result.committed.setdefault(key[0], []).append(key[1])
        received = len(messages) - plan.presence
        self.counters["received"] += received
        self.counters["stored"] += result.stored
        self.counters["duplicates"] += result.duplicates
        self.counters["quarantined"] += result.quarantined
        metrics.INGEST_RECEIVED.inc(received)
        metrics.INGEST_STORED.inc(result.stored)
        metrics.INGEST_DUPLICATES.inc(result.duplicates)
        metrics.INGEST_QUARANTINED.inc(result.quarantined)
        return result

    # -- sorting ------------------------------------------------------------------------------

    def _plan(self, conn: Connection, messages: list[Received], now: datetime) -> _Plan:
        plan = _Plan()
        parsed: list[tuple[Received, Envelope | str]] = []
        for message in messages:
            status = _STATUS_RE.match(message.topic)
            if status is not None:
                online = message.payload.strip().lower() == b"online"
                plan.status[status.group(1)] = (online, now)
                plan.presence += 1
                continue
            try:
                envelope = decode_envelope(message.payload)
                check_topic_matches(message.topic, envelope)
            except ProtocolError as exc:
                parsed.append((message, str(exc)))
                continue
            except Exception as exc:  # a bug must cost this message, never the batch
                parsed.append((message, _unexpected("checking", exc, message)))
                continue
            parsed.append((message, envelope))
        names = {e.device for _m, e in parsed if isinstance(e, Envelope)} | set(plan.status)
        devices = _load_devices(conn, names)
        for device_id in [d for d in plan.status if d not in devices]:
            del plan.status[device_id]  # presence of unknown devices is not worth a row
        candidates: list[tuple[Received, _Valid]] = []
        for message, outcome in parsed:
            if isinstance(outcome, str):
                _quarantine(plan, message, now, outcome, None)
                continue
            try:
                reason = _check(outcome, devices.get(outcome.device))
            except Exception as exc:
                reason = _unexpected("checking", exc, message)
            if reason is not None:
                _quarantine(plan, message, now, reason, outcome.device)
                continue
            skew = (now - outcome.time).total_seconds()
            plan.skew[outcome.device] = min(skew, plan.skew.get(outcome.device, skew))
            device = devices[outcome.device]
            sig_status = SIG_UNSIGNED if device.public_key is None else SIG_VERIFIED
            try:
                record = _parse_body(outcome, message.payload)
            except ProtocolError as exc:
                _quarantine(plan, message, now, str(exc), outcome.device)
                plan.refused.append((outcome.device, outcome.id))
                continue
            except Exception as exc:  # not acknowledged: the device keeps it for a fixed server
                _quarantine(
                    plan, message, now, _unexpected("checking", exc, message), outcome.device
                )
                continue
            candidates.append((message, _Valid(outcome, sig_status, record)))
        if candidates:
            self._judge(conn, plan, candidates, now)
        return plan

    def _judge(
        self,
        conn: Connection,
        plan: _Plan,
        candidates: list[tuple[Received, _Valid]],
        now: datetime,
    ) -> None:
        """Checks 5 to 7 (see the module's docstring) on messages whose body is valid: what
        passes goes to ``plan.valid``; what fails is quarantined and acknowledged."""
        for _message, item in candidates:
            item.digest = content_digest(item.envelope)
        keys = [(item.envelope.device, item.envelope.id) for _m, item in candidates]
        stored = _stored_digests(conn, keys)
        plan.attribution = _Attribution(conn, {device for device, _id in keys}, self._bounds.skew)
        earlier: dict[tuple[str, str], tuple[str, str]] = {}  # the batch's own: (kind, digest)
        for message, item in candidates:
            envelope = item.envelope
            key = (envelope.device, envelope.id)
            first = earlier.setdefault(key, (envelope.kind, item.digest))
            known = stored.get(key)
            try:
                if first[1] != item.digest:
                    reason: str | None = _reused(envelope, "earlier in this batch", first[0])
                elif known is not None:
                    same = known[1] == item.digest or (known[1] is None and known[0] == first[0])
                    reason = None if same else _reused(envelope, "stored", known[0])
                else:
                    reason = self._time_refusal(item, plan.attribution, now)
            except Exception as exc:  # not acknowledged: the device keeps it for a fixed server
                reason = _unexpected("checking", exc, message)
                _quarantine(plan, message, now, reason, envelope.device)
                continue
            if reason is not None:
                _quarantine(plan, message, now, reason, envelope.device)
                plan.refused.append(key)
                continue
            plan.valid.append(item)

    def _time_refusal(self, item: _Valid, attribution: _Attribution, now: datetime) -> str | None:
        """Why the device's times in ``item`` are not believed (checks 6 and 7); None if they are."""
        bounds = self._bounds
        times = _device_times(item)
        for name, value in times:
            if value > now + bounds.skew:
                return (
                    f"device time {name} {_iso(value)} is later than the receive time "
                    f"{_iso(now)} plus {_span(bounds.skew)}"
                )
            if value < now - bounds.max_age:
                return (
                    f"device time {name} {_iso(value)} is earlier than the receive time "
                    f"{_iso(now)} minus {_span(bounds.max_age)}"
                )
        record = item.record
        if isinstance(record, SessionRecord):
            if record.ended_at < record.started_at:
                return (
                    f"device time body.ended_at {_iso(record.ended_at)} is before "
                    f"body.started_at {_iso(record.started_at)}"
                )
            return attribution.refusal(
                item.envelope.device, "body.started_at", record.started_at, record.ended_at, now
            )
        # The time each is attributed by (``_store``): an event's envelope time, a check-in's
        # answered_at.
        if isinstance(record, SafetyEventRecord):
            name, value = "time", item.envelope.time
        elif isinstance(record, CheckInRecord):
            name, value = "body.answered_at", record.answered_at
        else:
            return None
        return attribution.refusal(item.envelope.device, name, value, value, now)

    # -- storing ------------------------------------------------------------------------------

    def _store(self, conn: Connection, plan: _Plan, now: datetime) -> set[tuple[str, str]]:
        rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        keys: set[tuple[str, str]] = set()
        for item in plan.valid:
            key = (item.envelope.device, item.envelope.id)
            if key not in keys:  # the same message twice in one batch: one row, acked once
                keys.add(key)
                rows[item.envelope.kind].append(_row(item, now))
        attribution = plan.attribution or _Attribution(conn, set(), self._bounds.skew)
        for kind in ("session", "event"):
            for row in rows[kind]:
                at = row["started_at"] if kind == "session" else row["device_time"]
                row["patient_id"] = attribution.patient(row["device_id"], at)
        inserted: set[tuple[str, str]] = set()
        tables = {
            "session": table_of(SessionRow),
            "event": table_of(SafetyEventRow),
            "metrics": table_of(MessageRow),
            "reported": table_of(MessageRow),
            "checkin": table_of(MessageRow),
        }
        new_sessions: list[dict[str, Any]] = []
        for kind, kind_rows in rows.items():
            done = {
                (d, m)
                for d, m in insert_ignore(conn, tables[kind], kind_rows, key=_KEY, returning=_KEY)
            }
            inserted |= done
            if kind == "session":
                new_sessions = [r for r in kind_rows if (r["device_id"], r["message_id"]) in done]
        for item in plan.valid:
            key = (item.envelope.device, item.envelope.id)
            if isinstance(item.record, CheckInRecord) and key in inserted:
                patient = attribution.patient(key[0], item.record.answered_at)
                store_checkins(conn, key[0], patient, [item.record], now=now)
        _add_dose(conn, new_sessions)
        _update_state(conn, plan, now)
        if plan.quarantine:
            conn.execute(table_of(QuarantineRow).insert(), plan.quarantine)
        return inserted


def _quarantine(
    plan: _Plan, message: Received, now: datetime, reason: str, device_id: str | None
) -> None:
    # Both are text columns: one printable line each (a NUL, which PostgreSQL refuses in text, a
    # lone surrogate or a line break from a payload's field name become escapes).
    topic = _printable(message.topic, QUARANTINE_TOPIC_MAX)
    reason = _printable(reason, QUARANTINE_REASON_MAX)
    log.warning("quarantined a message on %r: %s", topic[:200], reason)
    plan.quarantine.append(
        {
            "received_at": now,
            "topic": topic,
            "device_id": device_id,
            "payload": message.payload[:QUARANTINE_PAYLOAD_MAX],
            "reason": reason,
        }
    )


def _printable(text: str, limit: int) -> str:
    """``text`` as one printable line, what is not printable escaped as in ``repr``; at most
    ``limit`` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text[:limit]


def _one_line(exc: BaseException) -> str:
    """``exc`` as one short line: its type and first line (a driver's error, not the SQL)."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return _printable(f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": "), 500)


def _unexpected(doing: str, exc: Exception, message: Received) -> str:
    """Log an exception no check foresaw, with its traceback; the quarantine reason for it."""
    log.error(
        "%s a message on %r failed unexpectedly",
        doing,
        _printable(message.topic, 200),
        exc_info=exc,
    )
    return f"{doing} it failed unexpectedly: {_one_line(exc)}"


def _database_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is the database failing (retrying the batch later may succeed), rather than
    a value in it that the database or our code refuses (retrying it would fail again)."""
    if isinstance(exc, DataError):  # out of range, invalid text, ...: one message's value
        return False
    if isinstance(exc, DBAPIError):  # connection, lock, schema, constraint, ...
        return True
    if isinstance(exc, StatementError):  # a value our code failed to bind, before the database
        return False
    return isinstance(exc, SQLAlchemyError)  # e.g. no connection from the pool in time


def content_digest(envelope: Envelope) -> str:
    """SHA-256 (hex) of what a message id stands for: the envelope as parsed, without ``sig``
    (pydantic's JSON: the model's field order, times in UTC, the body's keys in the order the
    device wrote them). Whitespace, the spelling of a time's offset and the signature do not
    count; a device resends the bytes it stored, so a resend is always the same content. Four
    times cheaper than the canonical JSON that signatures cover (sorted keys)."""
    return hashlib.sha256(envelope.model_dump_json(exclude={"sig"}).encode()).hexdigest()


def _iso(value: datetime) -> str:
    return value.isoformat()


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    return f"{seconds} s"


def _reused(envelope: Envelope, where: str, kind: str) -> str:
    return (
        f"message id {envelope.id} reused with different content "
        f"(a {kind} message with this id is {where})"
    )


def _device_times(item: _Valid) -> list[tuple[str, datetime]]:
    """The device's times in a message, named as in the payload: the envelope's first."""
    times = [("time", item.envelope.time)]
    record = item.record
    if isinstance(record, SessionRecord):
        times += [("body.started_at", record.started_at), ("body.ended_at", record.ended_at)]
    elif isinstance(record, SafetyEventRecord):
        times.append(("body.at", record.at))
    elif isinstance(record, CheckInRecord):
        times.append(("body.answered_at", record.answered_at))
    return times


#: The tables of stored messages with one kind each (``device_message`` has a ``kind`` column).
_DIGEST_TABLES: Final = (("session_record", "session"), ("safety_event", "event"))


def _stored_digests(
    conn: Connection, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, str | None]]:
    """Of ``keys`` (device id, message id), those stored, with their kind and digest (None for
    rows from before digests). One statement per 500 keys over the three tables: the keys as a
    ``VALUES`` table joined to each unique index (``IN`` over pairs scans a whole index on
    SQLite)."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    found: dict[tuple[str, str], tuple[str, str | None]] = {}
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), _DIGEST_KEYS_PER_QUERY):
        chunk = unique[start : start + _DIGEST_KEYS_PER_QUERY]
        rows = ", ".join([f"({mark}, {mark})"] * len(chunk))
        join = "JOIN {table} AS t ON t.device_id = v.d AND t.message_id = v.m"
        selects = [
            f"SELECT '{kind}', t.device_id, t.message_id, t.digest FROM v {join.format(table=name)}"
            for name, kind in _DIGEST_TABLES
        ]
        selects.append(
            "SELECT t.kind, t.device_id, t.message_id, t.digest FROM v "
            + join.format(table="device_message")
        )
        query = f"WITH v(d, m) AS (VALUES {rows}) " + " UNION ALL ".join(selects)
        params = tuple(value for key in chunk for value in key)
        for kind, device_id, message_id, digest in conn.exec_driver_sql(query, params):
            found.setdefault((device_id, message_id), (kind, digest))
    return found


_DIGEST_KEYS_PER_QUERY: Final = 500


def _device_of(payload: bytes) -> str | None:
    """The sender's id in a payload that fails storage (it passed the checks, so it parses)."""
    try:
        return decode_envelope(payload).device
    except Exception:
        return None


def _merge(total: BatchResult, part: BatchResult) -> None:
    for device_id, ids in part.committed.items():
        known = total.committed.setdefault(device_id, [])
        known.extend(i for i in ids if i not in known)
    total.stored += part.stored
    total.duplicates += part.duplicates
    total.quarantined += part.quarantined


def _load_devices(conn: Connection, names: set[str]) -> dict[str, _Device]:
    if not names:
        return {}
    table = table_of(DeviceRow)
    certs = table_of(DeviceCertificateRow)
    earlier: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    superseded = select(certs.c.device_id, certs.c.public_key, certs.c.superseded_at).where(
        certs.c.device_id.in_(names),
        certs.c.superseded_at.is_not(None),
        certs.c.revoked_at.is_(None),
    )
    for cert in conn.execute(superseded):
        earlier[cert.device_id].append((cert.public_key, cert.superseded_at))
    query = select(table.c.id, table.c.revoked, table.c.public_key).where(table.c.id.in_(names))
    return {
        row.id: _Device(bool(row.revoked), row.public_key, tuple(earlier.get(row.id, ())))
        for row in conn.execute(query)
    }


def _check(envelope: Envelope, device: _Device | None) -> str | None:
    """Why the registry or the signature refuses ``envelope``; None when it passes."""
    if device is None:
        return f"device {envelope.device!r} is not registered"
    if device.revoked:
        return f"device {envelope.device!r} is revoked"
    if device.public_key is None:
        return None
    refused = verify_device_signature(envelope, device.public_key)
    if refused is None:
        return None
    for key, superseded_at in device.earlier_keys:
        in_time = envelope.time <= superseded_at + RENEWAL_SKEW
        if in_time and verify_device_signature(envelope, key) is None:
            return None
    return refused


class _Payload(BaseModel, Generic[_Record]):
    """A whole message, of which only the body is validated (the envelope was, on its own)."""

    model_config = ConfigDict(extra="ignore")

    body: _Record


#: Body models validated straight from the payload's JSON: one parse of the bytes instead of
#: re-encoding the envelope's parsed body to JSON and parsing that (a third of the checks' cost).
_FROM_PAYLOAD: Final[dict[str, type[_Payload[Any]]]] = {
    "session": _Payload[SessionRecord],
    "event": _Payload[SafetyEventRecord],
    "reported": _Payload[DesiredReport],
}


def _parse_body(envelope: Envelope, payload: bytes) -> _Body | None:
    fast = _FROM_PAYLOAD.get(envelope.kind)
    if fast is not None:
        try:
            record: _Body = fast.model_validate_json(payload, strict=True).body
        except ValidationError:
            pass  # refused below, in the words of the body's own model (no "body." prefix)
        else:
            return record
    if envelope.kind == "checkin":
        return parse_checkin(envelope.body, envelope.device)
    if envelope.kind == "session":
        return _strict(SessionRecord, envelope.body, "session")
    if envelope.kind == "event":
        return _strict(SafetyEventRecord, envelope.body, "event")
    if envelope.kind == "reported":
        return _strict(DesiredReport, envelope.body, "reported")
    return None


def _strict(model: type[_Record], body: dict[str, Any], kind: str) -> _Record:
    try:
        # Strict, through JSON: "48000" is not an int, but an ISO time string is a datetime.
        return model.model_validate_json(json.dumps(body), strict=True)
    except ValidationError as exc:
        raise ProtocolError(f"invalid {kind} body: {describe_validation_error(exc)}") from None


def _envelope_fields(envelope: Envelope, now: datetime) -> dict[str, Any]:
    return {
        "device_id": envelope.device,
        "message_id": envelope.id,
        "seq": envelope.seq,
        "device_time": envelope.time,
        "received_at": now,
    }


def session_dose(record: SessionRecord, body: dict[str, Any]) -> float:
    """The dose fraction a session used, as the device reported it (0 until devices report it)."""
    value = getattr(record, "dose_fraction", None)
    if value is None:
        value = body.get("dose_fraction")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return 0.0
    return float(value)


def _row(item: _Valid, now: datetime) -> dict[str, Any]:
    envelope = item.envelope
    base = {
        **_envelope_fields(envelope, now),
        "sig_status": item.sig_status,
        "digest": item.digest,
    }
    if isinstance(item.record, SessionRecord):
        # The flat model's own values: no copy as model_dump makes, no per-field generator.
        fields = {k: v for k, v in vars(item.record).items() if k in _SESSION_COLUMNS}
        return {
            **base,
            **fields,
            "patient_id": None,
            "dose_fraction": session_dose(item.record, envelope.body),
        }
    if isinstance(item.record, SafetyEventRecord):
        return {
            **base,
            "patient_id": None,
            "event_type": item.record.type,
            "body": envelope.body,
        }
    body = json.dumps(envelope.body, separators=(",", ":"), ensure_ascii=False)
    return {**base, "kind": envelope.kind, "body": body}


@dataclass(frozen=True)
class _Period:
    start: datetime
    end: datetime | None
    patient_id: str


class _Attribution:
    """Which patient used a device at a time, from the assignments of the batch's devices: the
    assignment covering the time, else one starting within ``skew`` after it (a device clock
    running behind)."""

    def __init__(self, conn: Connection, devices: set[str], skew: timedelta) -> None:
        self._by_device: dict[str, list[_Period]] = defaultdict(list)
        self._skew = skew
        if not devices:
            return
        table = table_of(AssignmentRow)
        query = select(table.c.device_id, table.c.valid_from, table.c.valid_to, table.c.patient_id)
        for row in conn.execute(query.where(table.c.device_id.in_(devices))):
            self._by_device[row.device_id].append(
                _Period(row.valid_from, row.valid_to, row.patient_id)
            )

    def _owner(self, device_id: str, at: datetime) -> _Period | None:
        periods = self._by_device.get(device_id, ())
        for period in periods:
            if period.start <= at and (period.end is None or at < period.end):
                return period
        for period in periods:
            if period.start - self._skew <= at < period.start:
                return period
        return None

    def patient(self, device_id: str, at: datetime) -> str | None:
        owner = self._owner(device_id, at)
        return owner.patient_id if owner is not None else None

    def refusal(
        self, device_id: str, name: str, start: datetime, end: datetime, received: datetime
    ) -> str | None:
        """Why a record from ``start`` to ``end`` received at ``received`` may not be attributed
        by its device times (check 7 of the module's docstring); None if it may."""
        owner = self._owner(device_id, start)
        # Outside every assignment (before the first, in a gap) it is nobody's: stored
        # unattributed, and an assignment made later for that period attributes it.
        if owner is None or owner.end is None:
            return None
        where = (
            f"device time {name} {_iso(start)} is in an assignment of the device that ended at "
            f"{_iso(owner.end)}"
        )
        if received > owner.end + self._skew:
            return (
                f"{where}, before the receive time {_iso(received)}: a device does not write "
                "into a former patient's record"
            )
        if end > owner.end + self._skew:
            return f"{where}, and it runs on to {_iso(end)} (received {_iso(received)})"
        return None


def _add_dose(conn: Connection, sessions: list[dict[str, Any]]) -> None:
    totals: dict[tuple[str, date], list[float]] = {}
    for row in sessions:
        if row["patient_id"] is None:
            continue
        key = (row["patient_id"], row["started_at"].astimezone(UTC).date())
        total = totals.setdefault(key, [0.0, 0.0, 0.0])
        total[0] += row["dose_fraction"]
        total[1] += 1
        total[2] += row["played_s"]
    if not totals:
        return
    table = table_of(DoseDailyRow)
    upsert(
        conn,
        table,
        [
            {
                "patient_id": p,
                "day": d,
                "dose_fraction": t[0],
                "sessions": int(t[1]),
                "played_s": t[2],
            }
            for (p, d), t in sorted(totals.items())
        ],
        key=("patient_id", "day"),
        update={
            "dose_fraction": lambda ex: table.c.dose_fraction + ex.dose_fraction,
            "sessions": lambda ex: table.c.sessions + ex.sessions,
            "played_s": lambda ex: table.c.played_s + ex.played_s,
        },
    )


_LAST_COLUMNS: Final = (
    "last_seq",
    "last_message_id",
    "last_kind",
    "last_device_time",
    "last_received_at",
)


def _state_row(
    device_id: str, latest: Envelope | None, skew: float, now: datetime
) -> dict[str, Any]:
    """A ``device_state`` row: the batch's latest message (none: only quarantined ones, which
    move no ``last_*`` column) and the clock's skew."""
    row: dict[str, Any] = {"device_id": device_id, "clock_skew_s": skew, "clock_skew_at": now}
    if latest is None:
        return (
            row
            | dict.fromkeys(_LAST_COLUMNS)
            | {"last_seq": -1, "last_message_id": "", "last_kind": ""}
        )
    return row | {
        "last_seq": latest.seq,
        "last_message_id": latest.id,
        "last_kind": latest.kind,
        "last_device_time": latest.time,
        "last_received_at": now,
    }


def _update_state(conn: Connection, plan: _Plan, now: datetime) -> None:
    """``device_state``: the highest seq wins, whatever order messages arrived in."""
    table = table_of(DeviceStateRow)
    latest: dict[str, Envelope] = {}
    # Only "applied" moves the reported version: deferred and refused versions are not running.
    reported: dict[str, tuple[Envelope, int]] = {}
    for item in plan.valid:
        env = item.envelope
        if env.device not in latest or env.seq > latest[env.device].seq:
            latest[env.device] = env
        report = item.record
        if (
            isinstance(report, DesiredReport)
            and report.status == "applied"
            and report.desired_version is not None
            and (env.device not in reported or env.seq > reported[env.device][0].seq)
        ):
            reported[env.device] = (env, report.desired_version)
    if plan.skew:  # every device with a valid message has a skew: one statement for both
        upsert(
            conn,
            table,
            [_state_row(d, latest.get(d), skew, now) for d, skew in sorted(plan.skew.items())],
            key=("device_id",),
            # The last_* columns move only for a higher seq; the clock's skew with every batch.
            update={
                name: (
                    lambda ex, name=name: case(
                        (table.c.last_seq < ex.last_seq, ex[name]), else_=table.c[name]
                    )
                )
                for name in _LAST_COLUMNS
            }
            | {
                "clock_skew_s": lambda ex: ex.clock_skew_s,
                "clock_skew_at": lambda ex: ex.clock_skew_at,
            },
        )
    if reported:
        upsert(
            conn,
            table,
            [
                {"device_id": d, "reported_seq": e.seq, "reported_version": version}
                for d, (e, version) in sorted(reported.items())
            ],
            key=("device_id",),
            update={
                "reported_seq": lambda ex: ex.reported_seq,
                "reported_version": lambda ex: ex.reported_version,
            },
            where=lambda ex: table.c.reported_seq < ex.reported_seq,
        )
    if plan.status:
        upsert(
            conn,
            table,
            [
                {"device_id": d, "online": o, "status_at": t}
                for d, (o, t) in sorted(plan.status.items())
            ],
            key=("device_id",),
            update={"online": lambda ex: ex.online, "status_at": lambda ex: ex.status_at},
        )


def rebuild_dose(conn: Connection, patient_id: str) -> None:
    """Recompute ``dose_daily`` of one patient from their sessions (after re-attribution)."""
    dose = table_of(DoseDailyRow)
    sessions = table_of(SessionRow)
    conn.execute(dose.delete().where(dose.c.patient_id == patient_id))
    totals: dict[date, list[float]] = {}
    query = select(sessions.c.started_at, sessions.c.dose_fraction, sessions.c.played_s).where(
        sessions.c.patient_id == patient_id
    )
    for row in conn.execute(query):
        total = totals.setdefault(row.started_at.astimezone(UTC).date(), [0.0, 0.0, 0.0])
        total[0] += row.dose_fraction
        total[1] += 1
        total[2] += row.played_s
    if totals:
        conn.execute(
            dose.insert(),
            [
                {
                    "patient_id": patient_id,
                    "day": d,
                    "dose_fraction": t[0],
                    "sessions": int(t[1]),
                    "played_s": t[2],
                }
                for d, t in sorted(totals.items())
            ],
        )


def attribute_sessions(conn: Connection, assignment: AssignmentRow) -> int:
    """Give the sessions and events of the assignment's device in its period, not yet attributed,
    to its patient; rebuild the patient's dose. Returns the number of sessions attributed."""
    sessions = table_of(SessionRow)
    events = table_of(SafetyEventRow)
    count = 0
    for table, column in ((sessions, sessions.c.started_at), (events, events.c.device_time)):
        in_period = and_(
            table.c.device_id == assignment.device_id,
            table.c.patient_id.is_(None),
            column >= assignment.valid_from,
        )
        if assignment.valid_to is not None:
            in_period = and_(in_period, column < assignment.valid_to)
        result = conn.execute(
            table.update().where(in_period).values(patient_id=assignment.patient_id)
        )
        if table is sessions:
            count = int(result.rowcount or 0)
    if count:
        rebuild_dose(conn, assignment.patient_id)
    return count
