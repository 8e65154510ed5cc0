"""The MQTT message envelope and the application ack (docs/architecture.md §2).

Every device → server message is one JSON ``Envelope``; the server answers each committed batch with an
``Ack`` naming the message ids it stored. Parsing is strict: unknown fields, wrong types, a device id
that is not usable in a topic or a naive timestamp are refused with a message that says which field is
wrong. Nothing here touches a socket.

``AwareDatetime`` is the one type for a point in time from outside: envelopes, record bodies
(``common.records``) and the server API's parameters and bodies. A time with an offset at either end
of the calendar (``0001-01-01T00:00:00+01:00``, ``9999-12-31T23:59:59-01:00``) parses but has no UTC
equivalent (``astimezone`` raises ``OverflowError``, which pydantic lets through: one such message
stalled ingest, one such parameter answered 500); here it is a validation error naming the field,
and every valid time comes out in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from resonera.common import topics
from resonera.common.errors import ProtocolError, describe_validation_error
from resonera.common.ids import is_time_ordered_id, new_id

SCHEMA_VERSION: Final = 1
#: Larger payloads are refused before parsing: no device message needs more.
MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_ACK_IDS: Final = 1000
#: The largest integer a message may carry where the server keeps it in a column (PostgreSQL's
#: ``integer``): a larger one would fail the database, not the check.
INT32_MAX: Final = 2**31 - 1


def _check_message_id(value: str) -> str:
    if not is_time_ordered_id(value):
        raise ValueError("must be a lowercase UUIDv7 (time-ordered) string")
    return value


def _check_device_id(value: str) -> str:
    try:
        return topics.check_device_id(value)
    except ProtocolError as exc:
        raise ValueError(str(exc)) from exc


def to_utc(value: datetime) -> datetime:
    """``value`` in UTC; a validation error (in a model) when it is naive or has no UTC equivalent."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise PydanticCustomError(
            "timezone_aware", "must carry a time zone offset (e.g. 2026-01-01T12:00:00Z)"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "datetime_out_of_range",
            "is out of range: {value} is outside the years 1 to 9999 in UTC",
            {"value": value.isoformat()},
        ) from None


_M = TypeVar("_M", bound=BaseModel)

MessageId = Annotated[str, AfterValidator(_check_message_id)]
DeviceId = Annotated[str, AfterValidator(_check_device_id)]
#: An aware time, converted to UTC; naive and out-of-range times are validation errors.
AwareDatetime = Annotated[datetime, AfterValidator(to_utc)]


class Envelope(BaseModel):
    """One device message. ``seq`` grows by one per message of a device, so "latest" never depends on
    arrival order; ``id`` is unique and time-ordered, the key for idempotent storage."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1]
    id: MessageId
    device: DeviceId
    seq: int = Field(ge=0, le=INT32_MAX)
    time: Annotated[AwareDatetime, Field(strict=False)]
    kind: topics.UpKind
    body: dict[str, Any]
    #: Detached signature by the device key (base64); verified by the server once devices are keyed.
    sig: str | None = None

    @classmethod
    def create(
        cls,
        *,
        device: str,
        seq: int,
        kind: topics.UpKind,
        body: dict[str, Any],
        time: datetime | None = None,
    ) -> Envelope:
        """A new envelope with a fresh time-ordered id, stamped now unless ``time`` is given."""
        return cls(
            v=SCHEMA_VERSION,
            id=new_id(),
            device=device,
            seq=seq,
            time=time or datetime.now(UTC),
            kind=kind,
            body=body,
        )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Ack(BaseModel):
    """Server → device: these message ids are committed; the device may delete them from its outbox."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def of(cls, ids: list[str]) -> Ack:
        return cls(v=SCHEMA_VERSION, ids=ids)

    v: Literal[1]
    ids: list[MessageId] = Field(min_length=1, max_length=MAX_ACK_IDS)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def _decode(model: type[_M], payload: bytes, what: str) -> _M:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            f"{what} of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise ProtocolError(f"malformed {what}: {describe_validation_error(exc)}") from exc


def decode_envelope(payload: bytes) -> Envelope:
    """Parse and validate an envelope; raise ``ProtocolError`` saying what is wrong."""
    return _decode(Envelope, payload, "envelope")


def decode_ack(payload: bytes) -> Ack:
    """Parse and validate an ack; raise ``ProtocolError`` saying what is wrong."""
    return _decode(Ack, payload, "ack")


def check_topic_matches(topic: str, envelope: Envelope) -> None:
    """The topic's device and kind must be the envelope's own (a device cannot speak for another)."""
    device_id, kind = topics.parse_up(topic)
    if device_id != envelope.device:
        raise ProtocolError(
            f"topic names device {device_id!r} but the envelope names {envelope.device!r}"
        )
    if kind != envelope.kind:
        raise ProtocolError(f"topic names kind {kind!r} but the envelope names {envelope.kind!r}")
