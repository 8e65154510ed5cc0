"""Turning batches of received MQTT messages into stored rows, without any MQTT.

It stays one module (some 470 lines): the batch's reads, its quarantine and its failure handling
share one transaction and one order of checks; the checks without a database and the writes are
``ingest_checks.py`` and ``ingest_store.py``.

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

The MQTT side (subscribing, batching, acknowledging) is ``resonera.server.ingest_mqtt``. Beside
this module, which reads what the checks need and sorts and accounts for a batch: the checks that
need no database (``ingest_checks``), what a checked batch writes (``ingest_store``), whose a
record is (``attribution``) and the daily dose (``dose_rollup``).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from sqlalchemy import Connection, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError, StatementError
from sqlmodel import Session

from resonera.common import topics
from resonera.common.agent_update import UpdateReport
from resonera.common.envelope import Envelope, check_topic_matches, decode_envelope
from resonera.common.errors import ProtocolError, ResoneraError
from resonera.server import metrics, updates
from resonera.server.attribution import Attribution
from resonera.server.db import lock_for_write
from resonera.server.ingest_checks import (
    CheckedMessage,
    RegisteredDevice,
    TimeBounds,
    check_sender,
    content_digest,
    parse_body,
    reused_id,
    time_refusal,
)
from resonera.server.ingest_store import BatchPlan, store_batch
from resonera.server.models import (
    QUARANTINE_PAYLOAD_MAX,
    QUARANTINE_REASON_MAX,
    QUARANTINE_TOPIC_MAX,
    SIG_UNSIGNED,
    SIG_VERIFIED,
    DeviceCertificateRow,
    DeviceRow,
    QuarantineRow,
    table_of,
)

if TYPE_CHECKING:
    from resonera.server.desired import DesiredService, Outgoing

log = logging.getLogger(__name__)

#: Counter names, always present in ``IngestProcessor.counters``.
COUNTERS = ("received", "stored", "duplicates", "quarantined")
_STATUS_RE: Final = re.compile(rf"^{topics.PREFIX}/({topics.DEVICE_ID_PATTERN})/status$")


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
    #: Desired documents re-issued by what the batch said of agent updates (``updates.py``):
    #: committed with it, to publish now.
    outgoing: list[Outgoing] = field(default_factory=list)


#: The settings' defaults (``device_time_skew_s``, ``device_time_max_age_days``).
_DEFAULT_BOUNDS: Final = TimeBounds()


def _now() -> datetime:
    return datetime.now(UTC)


class IngestProcessor:
    """Validates and stores batches idempotently. Not thread-safe: one worker calls ``process``."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = _now,
        bounds: TimeBounds = _DEFAULT_BOUNDS,
        on_sender_refused: Callable[[str, RegisteredDevice, str], object] | None = None,
        desired: DesiredService | None = None,
    ) -> None:
        """``on_sender_refused(device_id, registered, reason)``: a registered device's message is
        quarantined for its sender (revoked, signature): ``server/notices.py`` tells the device.
        ``desired``: signs the documents agent updates re-issue (``BatchResult.outgoing``); without
        it rollouts still move, and documents are re-issued by the next change the API makes."""
        self._engine = engine
        self._desired = desired
        self._clock = clock
        self._bounds = bounds
        self._on_sender_refused = on_sender_refused
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
    ) -> tuple[BatchPlan, set[tuple[str, str]]]:
        with self._engine.begin() as conn:
            lock_for_write(conn)
            plan = self._plan(conn, messages, now)
            inserted = store_batch(conn, plan, now, skew=self._bounds.skew)
            plan.outgoing = self._updates(conn, plan, inserted, now)
        return plan, inserted

    def _updates(
        self, conn: Connection, plan: BatchPlan, inserted: set[tuple[str, str]], now: datetime
    ) -> list[Outgoing]:
        """The batch's agent versions (telemetry's ``agent_version``) and new update reports,
        recorded in the same transaction; the documents that re-issues (published after it)."""
        seen = updates.IngestedUpdates()
        for item in plan.valid:
            envelope = item.envelope
            if envelope.kind == "metrics":
                seen.saw_version(envelope.device, envelope.seq, envelope.body.get("agent_version"))
            elif (
                isinstance(item.record, UpdateReport)
                and (
                    envelope.device,
                    envelope.id,
                )
                in inserted
            ):
                seen.saw_report(envelope.device, envelope.seq, item.record)
        if not seen.versions and not seen.reports:
            return []
        with Session(bind=conn) as session:  # joins the batch's transaction, never commits it
            recheck = updates.after_ingest(session, seen, now)
            outgoing: list[Outgoing] = []
            if self._desired is not None and recheck.needed:
                outgoing = self._desired.reconcile(session, now, recheck.device_ids)
            session.flush()
        return outgoing

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

    def _quarantine_alone(self, message: Received, now: datetime, exc: Exception) -> BatchPlan:
        """``message``, which failed to store, in the quarantine (not acknowledged)."""
        plan = BatchPlan()
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
        plan: BatchPlan,
        inserted: set[tuple[str, str]],
        now: datetime,
    ) -> BatchResult:
        """The result of a committed ``plan``; counters and metrics updated."""
        result = BatchResult(quarantined=len(plan.quarantine), outgoing=list(plan.outgoing))
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

    def _plan(self, conn: Connection, messages: list[Received], now: datetime) -> BatchPlan:
        plan = BatchPlan()
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
        candidates: list[tuple[Received, CheckedMessage]] = []
        for message, outcome in parsed:
            if isinstance(outcome, str):
                _quarantine(plan, message, now, outcome, None)
                continue
            try:
                reason = check_sender(outcome, devices.get(outcome.device))
            except Exception as exc:
                reason = _unexpected("checking", exc, message)
            if reason is not None:
                _quarantine(plan, message, now, reason, outcome.device)
                registered = devices.get(outcome.device)
                if self._on_sender_refused is not None and registered is not None:
                    self._on_sender_refused(outcome.device, registered, reason)
                continue
            skew = (now - outcome.time).total_seconds()
            plan.skew[outcome.device] = min(skew, plan.skew.get(outcome.device, skew))
            device = devices[outcome.device]
            sig_status = SIG_UNSIGNED if device.public_key is None else SIG_VERIFIED
            try:
                record = parse_body(outcome, message.payload)
            except ProtocolError as exc:
                _quarantine(plan, message, now, str(exc), outcome.device)
                plan.refused.append((outcome.device, outcome.id))
                continue
            except Exception as exc:  # not acknowledged: the device keeps it for a fixed server
                _quarantine(
                    plan, message, now, _unexpected("checking", exc, message), outcome.device
                )
                continue
            candidates.append((message, CheckedMessage(outcome, sig_status, record)))
        if candidates:
            self._judge(conn, plan, candidates, now)
        return plan

    def _judge(
        self,
        conn: Connection,
        plan: BatchPlan,
        candidates: list[tuple[Received, CheckedMessage]],
        now: datetime,
    ) -> None:
        """Checks 5 to 7 (see the module's docstring) on messages whose body is valid: what
        passes goes to ``plan.valid``; what fails is quarantined and acknowledged."""
        for _message, item in candidates:
            item.digest = content_digest(item.envelope)
        keys = [(item.envelope.device, item.envelope.id) for _m, item in candidates]
        stored = _stored_digests(conn, keys)
        plan.attribution = Attribution(conn, {device for device, _id in keys}, self._bounds.skew)
        earlier: dict[tuple[str, str], tuple[str, str]] = {}  # the batch's own: (kind, digest)
        for message, item in candidates:
            envelope = item.envelope
            key = (envelope.device, envelope.id)
            first = earlier.setdefault(key, (envelope.kind, item.digest))
            known = stored.get(key)
            try:
                if first[1] != item.digest:
                    reason: str | None = reused_id(envelope, "earlier in this batch", first[0])
                elif known is not None:
                    same = known[1] == item.digest or (known[1] is None and known[0] == first[0])
                    reason = None if same else reused_id(envelope, "stored", known[0])
                else:
                    reason = time_refusal(item, self._bounds, plan.attribution, now)
            except Exception as exc:  # not acknowledged: the device keeps it for a fixed server
                reason = _unexpected("checking", exc, message)
                _quarantine(plan, message, now, reason, envelope.device)
                continue
            if reason is not None:
                _quarantine(plan, message, now, reason, envelope.device)
                plan.refused.append(key)
                continue
            plan.valid.append(item)


def _quarantine(
    plan: BatchPlan, message: Received, now: datetime, reason: str, device_id: str | None
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
    total.outgoing.extend(part.outgoing)
    total.stored += part.stored
    total.duplicates += part.duplicates
    total.quarantined += part.quarantined


def _load_devices(conn: Connection, names: set[str]) -> dict[str, RegisteredDevice]:
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
        row.id: RegisteredDevice(bool(row.revoked), row.public_key, tuple(earlier.get(row.id, ())))
        for row in conn.execute(query)
    }


#: The tables of stored messages with one kind each (``device_message`` has a ``kind`` column).
_DIGEST_TABLES: Final = (
    ("session_record", "session"),
    ("safety_event", "event"),
    ("update_report", "update"),
)


def _stored_digests(
    conn: Connection, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, str | None]]:
    """Of ``keys`` (device id, message id), those stored, with their kind and digest (None for
    rows from before digests). One statement per 500 keys over the stored messages' tables: the keys as a
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
