"""Ingest's checks of one message that need no database: the sender's registration and signature
(checks 2 and 3 of ``ingest``'s docstring, on the registry rows ingest read), the body for its kind
(check 4; an agent's update report is a ``common.agent_update.UpdateReport``), the content a
message id stands for (check 5) and the device's times (checks 6 and 7, on the assignments ingest
read). Each returns why it refuses, or raises ``ProtocolError`` for the
body; ``ingest`` quarantines and counts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from resonera.common.agent_update import UpdateReport
from resonera.common.envelope import Envelope
from resonera.common.errors import ProtocolError, describe_validation_error
from resonera.common.records import (
    CheckInRecord,
    DesiredReport,
    SafetyEventRecord,
    SessionRecord,
)
from resonera.server.attribution import Attribution
from resonera.server.crypto import verify_device_signature
from resonera.server.outcomes import parse_checkin
from resonera.server.settings import ServerSettings

_Record = TypeVar("_Record", bound=BaseModel)

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


@dataclass(frozen=True)
class RegisteredDevice:
    """What the registry says of a sender."""

    revoked: bool
    public_key: str | None
    #: (key, superseded at) of the device's earlier, unrevoked certificates: what it queued before
    #: a renewal is signed with the key it had then.
    earlier_keys: tuple[tuple[str, datetime], ...] = ()


#: What a body parses into, by kind (metrics carry none).
Body = SessionRecord | SafetyEventRecord | DesiredReport | CheckInRecord | UpdateReport


@dataclass
class CheckedMessage:
    """A message whose sender and body passed (checks 1 to 4)."""

    envelope: Envelope
    sig_status: str
    record: Body | None = None
    #: ``content_digest`` of the envelope: the content a message id stands for.
    digest: str = ""


def check_sender(envelope: Envelope, device: RegisteredDevice | None) -> str | None:
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


def parse_body(envelope: Envelope, payload: bytes) -> Body | None:
    """The body of ``envelope`` (whose bytes are ``payload``) as its kind's model; ``ProtocolError``
    naming the field when it is not one."""
    fast = _FROM_PAYLOAD.get(envelope.kind)
    if fast is not None:
        try:
            record: Body = fast.model_validate_json(payload, strict=True).body
        except ValidationError:
            pass  # refused below, in the words of the body's own model (no "body." prefix)
        else:
            return record
    if envelope.kind == "checkin":
        return parse_checkin(envelope.body, envelope.device)
    if envelope.kind == "update":
        try:
            return UpdateReport.from_json(envelope.body)
        except ProtocolError as exc:
            raise ProtocolError(f"invalid update body: {exc}") from None
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


def content_digest(envelope: Envelope) -> str:
    """SHA-256 (hex) of what a message id stands for: the envelope as parsed, without ``sig``
    (pydantic's JSON: the model's field order, times in UTC, the body's keys in the order the
    device wrote them). Whitespace, the spelling of a time's offset and the signature do not
    count; a device resends the bytes it stored, so a resend is always the same content. Four
    times cheaper than the canonical JSON that signatures cover (sorted keys)."""
    return hashlib.sha256(envelope.model_dump_json(exclude={"sig"}).encode()).hexdigest()


def reused_id(envelope: Envelope, where: str, kind: str) -> str:
    """The refusal of a message id that stands for other content (check 5)."""
    return (
        f"message id {envelope.id} reused with different content "
        f"(a {kind} message with this id is {where})"
    )


def time_refusal(
    item: CheckedMessage, bounds: TimeBounds, attribution: Attribution, now: datetime
) -> str | None:
    """Why the device's times in ``item`` are not believed (checks 6 and 7); None if they are."""
    for name, value in _device_times(item):
        if value > now + bounds.skew:
            return (
                f"device time {name} {value.isoformat()} is later than the receive time "
                f"{now.isoformat()} plus {_span(bounds.skew)}"
            )
        if value < now - bounds.max_age:
            return (
                f"device time {name} {value.isoformat()} is earlier than the receive time "
                f"{now.isoformat()} minus {_span(bounds.max_age)}"
            )
    record = item.record
    if isinstance(record, SessionRecord):
        if record.ended_at < record.started_at:
            return (
                f"device time body.ended_at {record.ended_at.isoformat()} is before "
                f"body.started_at {record.started_at.isoformat()}"
            )
        return attribution.refusal(
            item.envelope.device, "body.started_at", record.started_at, record.ended_at, now
        )
    # The time each is attributed by (``ingest``'s storing): an event's envelope time, a
    # check-in's answered_at.
    if isinstance(record, SafetyEventRecord):
        name, value = "time", item.envelope.time
    elif isinstance(record, CheckInRecord):
        name, value = "body.answered_at", record.answered_at
    else:
        return None
    return attribution.refusal(item.envelope.device, name, value, value, now)


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    return f"{seconds} s"


def _device_times(item: CheckedMessage) -> list[tuple[str, datetime]]:
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
