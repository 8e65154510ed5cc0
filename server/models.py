"""Tables (``...Row``). API shapes live in ``resonera.server.schemas``.

Long on purpose: one table per class, all in one module, because Alembic and
``test_migrations_match_the_models`` compare this one metadata; split up it would scatter the schema.

Every device message is keyed by (device_id, message_id), never by time: storing the same message
twice is a no-op (insert-or-ignore). Times are stored in UTC and come back time-zone aware. The
schema is owned by Alembic (``resonera.server.migrations``); a change here needs a migration, and
``tests/server/test_server_migrations.py`` fails until the two agree.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

DEVICE_ID_MAX = 64
MESSAGE_ID_MAX = 36
PATIENT_ID_MAX = 36
EMAIL_MAX = 254
#: A user's display name (how a clinician signs a report).
DISPLAY_NAME_MAX = 120
#: Quarantined payloads are kept up to this size (enough to see what was wrong).
QUARANTINE_PAYLOAD_MAX = 64 * 1024
QUARANTINE_TOPIC_MAX = 1024
QUARANTINE_REASON_MAX = 2000

#: A device cohort's name, an agent version (PEP 440 text), a rollout's id.
COHORT_MAX = 64
AGENT_VERSION_MAX = 64
ROLLOUT_ID_MAX = 36
UPDATE_REASON_MAX = 500

ROLES = ("admin", "clinician", "auditor")
SIG_UNSIGNED = "unsigned"
SIG_VERIFIED = "verified"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (no zones) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite stores text without a zone; keep it naive UTC there so text order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fk(target: str, *, length: int = 0, index: bool = False) -> Any:
    """A required foreign-key column (``RESTRICT``: nothing referenced is deleted under a row)."""
    kind: Any = String(length) if length else Integer()
    return Field(
        sa_column=Column(kind, ForeignKey(target, ondelete="RESTRICT"), nullable=False, index=index)
    )


# -- people ----------------------------------------------------------------------------------


class UserRow(SQLModel, table=True):
    __tablename__ = "app_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=EMAIL_MAX, unique=True)
    #: The name the user signs with (a clinician's printed report); None: the email stands in.
    display_name: str | None = Field(default=None, max_length=DISPLAY_NAME_MAX)
    password_hash: str = Field(max_length=200)
    role: str = Field(max_length=16)
    active: bool = True
    created_at: datetime = Field(sa_type=UTCDateTime)


class FailedAttemptRow(SQLModel, table=True):
    """A failed attempt at something ``ratelimit.FailureLimiter`` guards (``kind``: ``login`` or
    ``enroll``), by what it aimed at (``subject``: the email given, the serial) and where it came
    from (``client``: the address). Kept in the database so every API process counts the same
    attempts; rows older than the limiter's window count for nothing and are dropped."""

    __tablename__ = "failed_attempt"
    __table_args__ = (
        Index("ix_failed_attempt_kind_client_at", "kind", "client", "at"),
        Index("ix_failed_attempt_kind_subject_at", "kind", "subject", "at"),
        Index("ix_failed_attempt_at", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)
    subject: str = Field(max_length=EMAIL_MAX)
    client: str = Field(max_length=100)
    at: datetime = Field(sa_type=UTCDateTime)


class RefreshTokenRow(SQLModel, table=True):
    """A refresh token, by its SHA-256 only; revoked on use (rotation), logout or by an admin."""

    __tablename__ = "refresh_token"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = _fk("app_user.id", index=True)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class PatientRow(SQLModel, table=True):
    """Identifying fields are ciphertext (``crypto.FieldCipher``): ``<key id>:<base64>``."""

    __tablename__ = "patient"

    id: str = Field(primary_key=True, max_length=PATIENT_ID_MAX)
    name_enc: str = Field(sa_type=Text)
    birth_date_enc: str = Field(sa_type=Text)
    notes_enc: str = Field(sa_type=Text)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    #: When an admin archived the patient (treatment over): left out of the clinicians' lists and
    #: the cohort, given no new device, every record kept (None: in care).
    archived_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ClinicianPatientRow(SQLModel, table=True):
    """Which clinician may see and change which patient."""

    __tablename__ = "clinician_patient"

    user_id: int = Field(
        sa_column=Column(ForeignKey("app_user.id", ondelete="RESTRICT"), primary_key=True)
    )
    patient_id: str = Field(
        sa_column=Column(
            String(PATIENT_ID_MAX),
            ForeignKey("patient.id", ondelete="RESTRICT"),
            primary_key=True,
            index=True,
        )
    )
    created_at: datetime = Field(sa_type=UTCDateTime)


# -- devices ---------------------------------------------------------------------------------


class DeviceRow(SQLModel, table=True):
    """The registry: only registered, unrevoked devices are ingested. ``public_key`` (base64 raw
    Ed25519) turns on signature checks for the device; set at provisioning."""

    __tablename__ = "device"

    id: str = Field(primary_key=True, max_length=DEVICE_ID_MAX)
    cert_fingerprint: str = Field(default="", max_length=128)
    public_key: str | None = Field(default=None, max_length=128)
    revoked: bool = False
    note: str = Field(default="", max_length=500)
    created_at: datetime = Field(sa_type=UTCDateTime)
    #: The named group an admin put the device in (a rollout may target one); None: none.
    cohort: str | None = Field(default=None, max_length=COHORT_MAX)


class AssignmentRow(SQLModel, table=True):
    """A patient uses a device from ``valid_from`` until ``valid_to`` (open: still in use)."""

    __tablename__ = "assignment"
    __table_args__ = (Index("ix_assignment_device_from", "device_id", "valid_from"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = _fk("device.id", length=DEVICE_ID_MAX)
    patient_id: str = _fk("patient.id", index=True, length=PATIENT_ID_MAX)
    valid_from: datetime = Field(sa_type=UTCDateTime)
    valid_to: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)


class PatientConfigRow(SQLModel, table=True):
    """One version of a patient's profile, limits and programs; rows are never updated."""

    __tablename__ = "patient_config"
    __table_args__ = (UniqueConstraint("patient_id", "version", name="uq_patient_config_version"),)

    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = _fk("patient.id", length=PATIENT_ID_MAX)
    version: int
    profile: dict[str, Any] = Field(sa_type=JSON)
    limits: dict[str, Any] = Field(sa_type=JSON)
    programs: list[dict[str, Any]] = Field(sa_type=JSON)
    sessions_per_week: int = 0
    created_by: int = _fk("app_user.id")
    created_at: datetime = Field(sa_type=UTCDateTime)


class DeviceDesiredRow(SQLModel, table=True):
    """The signed document last published (retained) on ``topics.desired(device)``; its version
    grows per device, so a device never sees a lower one, whichever patient it serves."""

    __tablename__ = "device_desired"

    device_id: str = Field(
        sa_column=Column(
            String(DEVICE_ID_MAX), ForeignKey("device.id", ondelete="RESTRICT"), primary_key=True
        )
    )
    version: int
    patient_id: str | None = Field(default=None, max_length=PATIENT_ID_MAX)
    patient_version: int | None = None
    document: str = Field(sa_type=Text)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class DeviceStateRow(SQLModel, table=True):
    """Latest per device, by sequence number (never arrival order), and presence."""

    __tablename__ = "device_state"

    device_id: str = Field(primary_key=True, max_length=DEVICE_ID_MAX)
    last_seq: int = -1
    last_message_id: str = Field(default="", max_length=MESSAGE_ID_MAX)
    last_kind: str = Field(default="", max_length=16)
    last_device_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_received_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reported_seq: int = -1
    reported_version: int | None = None
    online: bool | None = None
    status_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: The device's clock against the server's: receive time − envelope time in seconds, the
    #: smallest of the latest batch (positive: the device is behind, or its messages waited in
    #: its outbox; negative: it is ahead), and when it was measured.
    clock_skew_s: float | None = None
    clock_skew_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: The device's latest report on a desired-state version, whatever its status (``reported_*``
    #: above moves only for ``applied``): a document refused whole refuses each of its programs.
    report_seq: int = -1
    report_version: int | None = None
    report_status: str | None = Field(default=None, max_length=16)
    report_reason: str | None = Field(default=None, max_length=500)
    #: What the device's engine can play (``common.prescription.EngineCapabilities`` as JSON), as
    #: its latest report carrying them said; prescriptions are checked against it.
    capabilities: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    capabilities_seq: int = -1


class ProgramReportRow(SQLModel, table=True):
    """What a device did with one prescribed program of one of its desired-state versions
    (``common.prescription.ProgramReport``): applied, or refused and why. The report with the
    highest seq wins, whatever order they arrived in."""

    __tablename__ = "program_report"

    device_id: str = Field(primary_key=True, max_length=DEVICE_ID_MAX)
    desired_version: int = Field(primary_key=True)
    library_id: str = Field(primary_key=True, max_length=64)
    program_version: int
    sha256: str = Field(max_length=64)
    status: str = Field(max_length=16)
    reason: str = Field(default="", max_length=500)
    seq: int
    received_at: datetime = Field(sa_type=UTCDateTime)


# -- enrollment ------------------------------------------------------------------------------


class EnrollmentRow(SQLModel, table=True):
    """A board's serial an admin registered, with its one-time code (SHA-256 only), its expiry
    and when it was used; ``device_id`` is bound at registration (rows from before that rule may
    have none, and their codes are refused). ``reprovision``: the admin allowed this code to give
    a device id the server already knew a new identity."""

    __tablename__ = "enrollment"

    serial: str = Field(primary_key=True, max_length=64)
    device_id: str | None = Field(default=None, max_length=DEVICE_ID_MAX)
    reprovision: bool = Field(default=False)
    code_hash: str = Field(max_length=64)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)


class DeviceCertificateRow(SQLModel, table=True):
    """Every certificate issued to a device (enrollment, renewal, factory bundle): renewal is
    allowed only from the newest unrevoked one."""

    __tablename__ = "device_certificate"

    fingerprint: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(max_length=DEVICE_ID_MAX, index=True)
    serial_number: str = Field(max_length=40)
    #: base64 DER of the certificate's key: messages a device queued before a renewal carry
    #: signatures by its previous key.
    public_key: str = Field(max_length=128)
    how: str = Field(max_length=16)
    not_after: datetime = Field(sa_type=UTCDateTime)
    issued_at: datetime = Field(sa_type=UTCDateTime)
    superseded_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# -- what devices send -----------------------------------------------------------------------


class SessionRow(SQLModel, table=True):
    """A session record as the device reported it, with the envelope fields that identify it.
    ``patient_id`` is the patient the device was assigned to when the session started."""

    __tablename__ = "session_record"
    __table_args__ = (
        UniqueConstraint("device_id", "message_id", name="uq_session_record_device_message"),
        Index("ix_session_record_patient_started", "patient_id", "started_at"),
        Index("ix_session_record_device_started", "device_id", "started_at"),
        # The fleet panel's counts of the last 15 minutes and hour (fleet_alerts.py).
        Index("ix_session_record_received", "received_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=DEVICE_ID_MAX)
    message_id: str = Field(max_length=MESSAGE_ID_MAX)
    seq: int
    device_time: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    patient_id: str | None = Field(default=None, max_length=PATIENT_ID_MAX)
    session_id: str = Field(max_length=MESSAGE_ID_MAX)
    program_name: str = Field(max_length=120)
    program_digest: str = Field(max_length=64)
    #: The prescribed program's library id and version (None: a built-in or a file played by hand).
    program_library_id: str | None = Field(default=None, max_length=64)
    program_version: int | None = None
    started_at: datetime = Field(sa_type=UTCDateTime)
    ended_at: datetime = Field(sa_type=UTCDateTime)
    planned_s: float
    played_s: float
    outcome: str = Field(max_length=16)
    reason: str = Field(default="", max_length=500)
    sink: str = Field(max_length=16)
    sample_rate: int
    peak_dbfs: float
    rms_dbfs: float
    simulation: bool
    hardware_board: str = Field(default="", max_length=120)
    #: Fraction of the weekly sound allowance (mode 1) the session used, as the device reported.
    dose_fraction: float = 0.0
    sig_status: str = Field(default=SIG_UNSIGNED, max_length=16)
    #: ``ingest_checks.content_digest`` of the message: a message id sent again with other content is
    #: told from a resend (None: stored before digests were kept).
    digest: str | None = Field(default=None, max_length=64)
    #: Times the sound device ran dry (silence played meanwhile), as the device reported.
    underruns: int = 0


class SafetyEventRow(SQLModel, table=True):
    __tablename__ = "safety_event"
    __table_args__ = (
        UniqueConstraint("device_id", "message_id", name="uq_safety_event_device_message"),
        Index("ix_safety_event_patient_time", "patient_id", "device_time"),
        Index("ix_safety_event_received", "received_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=DEVICE_ID_MAX, index=True)
    message_id: str = Field(max_length=MESSAGE_ID_MAX)
    seq: int
    device_time: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    patient_id: str | None = Field(default=None, max_length=PATIENT_ID_MAX)
    event_type: str = Field(default="", max_length=64)
    body: dict[str, Any] = Field(sa_type=JSON)
    sig_status: str = Field(default=SIG_UNSIGNED, max_length=16)
    #: ``ingest_checks.content_digest`` of the message: a message id sent again with other content is
    #: told from a resend (None: stored before digests were kept).
    digest: str | None = Field(default=None, max_length=64)


class MessageRow(SQLModel, table=True):
    """``metrics`` and ``reported`` messages, kept whole (the body as JSON text)."""

    __tablename__ = "device_message"
    __table_args__ = (
        UniqueConstraint("device_id", "message_id", name="uq_device_message_device_message"),
        Index("ix_device_message_received", "received_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=DEVICE_ID_MAX, index=True)
    message_id: str = Field(max_length=MESSAGE_ID_MAX)
    kind: str = Field(max_length=16, index=True)
    seq: int
    device_time: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    body: str = Field(sa_type=Text)
    sig_status: str = Field(default=SIG_UNSIGNED, max_length=16)
    #: ``ingest_checks.content_digest`` of the message: a message id sent again with other content is
    #: told from a resend (None: stored before digests were kept).
    digest: str | None = Field(default=None, max_length=64)


class DoseDailyRow(SQLModel, table=True):
    """Per patient and UTC day: the summed dose fraction of the sessions that started that day.
    Kept up to date by ingest (new sessions only, so resending adds nothing) and rebuilt for a
    patient when an assignment attributes older sessions."""

    __tablename__ = "dose_daily"

    patient_id: str = Field(primary_key=True, max_length=PATIENT_ID_MAX)
    day: date = Field(sa_column=Column(Date(), primary_key=True))
    dose_fraction: float = 0.0
    sessions: int = 0
    played_s: float = 0.0


class QuarantineRow(SQLModel, table=True):
    """A message ingest refused, and why; the payload is cut to ``QUARANTINE_PAYLOAD_MAX``."""

    __tablename__ = "quarantine"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(sa_type=UTCDateTime, index=True)
    topic: str = Field(max_length=QUARANTINE_TOPIC_MAX)
    device_id: str | None = Field(default=None, max_length=DEVICE_ID_MAX)
    payload: bytes = Field(sa_type=LargeBinary)
    reason: str = Field(max_length=QUARANTINE_REASON_MAX)


class DoseLedgerResetRow(SQLModel, table=True):
    """A clinician's request to reset a device's corrupted dose ledger. It travels in the device's
    signed desired state until the device's ``dose_ledger_reset`` safety event (naming ``id``)
    says it was applied or refused; rows are never updated."""

    __tablename__ = "dose_ledger_reset"
    __table_args__ = (Index("ix_dose_ledger_reset_device_at", "device_id", "requested_at"),)

    id: str = Field(primary_key=True, max_length=MESSAGE_ID_MAX)
    patient_id: str = _fk("patient.id", index=True, length=PATIENT_ID_MAX)
    device_id: str = _fk("device.id", length=DEVICE_ID_MAX)
    reason: str = Field(max_length=500)
    requested_by: int = _fk("app_user.id")
    requested_by_email: str = Field(default="", max_length=EMAIL_MAX)
    requested_at: datetime = Field(sa_type=UTCDateTime)


class AuditRow(SQLModel, table=True):
    """Who did what to which patient's data, when, from where. Append-only: no API edits it."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_patient_at", "patient_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    actor_id: int | None = None
    actor_email: str = Field(default="", max_length=EMAIL_MAX)
    actor_role: str = Field(default="", max_length=16)
    action: str = Field(max_length=64)
    resource: str = Field(max_length=64)
    resource_id: str = Field(default="", max_length=128)
    patient_id: str | None = Field(default=None, max_length=PATIENT_ID_MAX)
    method: str = Field(default="", max_length=8)
    path: str = Field(default="", max_length=500)
    client: str = Field(default="", max_length=100)


# -- program library -------------------------------------------------------------------------


class ProgramLibraryRow(SQLModel, table=True):
    """A program as a clinician wrote it (TOML or YAML text), checked as the device checks it:
    the latest version (every version is a ``ProgramVersionRow``). ``version`` grows by one per
    change (the API's ETag); ``content_hash`` is the program's digest (``Program.digest()``), so
    reformatting the text alone keeps cached previews. ``tags`` describe the library entry (for
    finding it), not the sound: normalised by ``programs.normalise_tags``, changed in place without
    a new version."""

    __tablename__ = "program_library"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=120, unique=True)
    version: int = 1
    document: str = Field(sa_type=Text)
    format: str = Field(max_length=8)
    content_hash: str = Field(max_length=64)
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
    created_by: int = _fk("app_user.id")
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_by: int = _fk("app_user.id")
    updated_at: datetime = Field(sa_type=UTCDateTime)


class ProgramVersionRow(SQLModel, table=True):
    """One version of a library program, never updated: the document as written, its checked
    definition (the program's JSON form, what a prescription carries), the definition's SHA-256
    (``common.prescription.definition_sha256``, equal to ``Program.digest()``), who made it and
    when. A patient keeps the version prescribed to them while the library moves on."""

    __tablename__ = "program_version"
    __table_args__ = (UniqueConstraint("program_id", "version", name="uq_program_version"),)

    id: int | None = Field(default=None, primary_key=True)
    program_id: str = _fk("program_library.id", length=36)
    version: int
    name: str = Field(max_length=120)
    document: str = Field(sa_type=Text)
    format: str = Field(max_length=8)
    definition: dict[str, Any] = Field(sa_type=JSON)
    sha256: str = Field(max_length=64)
    created_by: int = _fk("app_user.id")
    created_at: datetime = Field(sa_type=UTCDateTime)


class KeyRotationRow(SQLModel, table=True):
    """A run of ``resonera-server rotate-patient-key``: re-encrypting every patient field under
    ``key_id``, in batches of patients in id order. ``after_patient_id`` is the last patient of the
    last committed batch, so a killed run resumes there; ``finished_at`` is set when no field is
    left under another key."""

    __tablename__ = "key_rotation"

    id: int | None = Field(default=None, primary_key=True)
    key_id: str = Field(max_length=32, index=True)
    started_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    after_patient_id: str = Field(default="", max_length=PATIENT_ID_MAX)
    patients: int = 0
    fields: int = 0
    started_by: str = Field(default="", max_length=EMAIL_MAX)


class CheckInRow(SQLModel, table=True):
    """One check-in answer (``common.records.CheckInRecord``), kept once per (device, record
    id). ``value`` is None when the person skipped; ``higher_is_better`` is the question's
    direction as asked. ``patient_id`` is the patient the device served when it was answered."""

    __tablename__ = "checkin"
    __table_args__ = (
        UniqueConstraint("device_id", "record_id", name="uq_checkin_device_record"),
        # Covering: the outcome views read answers from the index alone, not the scattered rows.
        Index(
            "ix_checkin_patient_answered",
            "patient_id",
            "answered_at",
            "session_id",
            "question_id",
            "phase",
            "value",
            "higher_is_better",
            "skipped",
        ),
        Index("ix_checkin_session", "session_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=DEVICE_ID_MAX)
    record_id: str = Field(max_length=MESSAGE_ID_MAX)
    session_id: str = Field(max_length=MESSAGE_ID_MAX)
    patient_id: str | None = Field(default=None, max_length=PATIENT_ID_MAX)
    question_id: str = Field(max_length=32)
    phase: str = Field(max_length=8)
    value: int | None = None
    skipped: bool = False
    higher_is_better: bool = True
    answered_at: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    #: Why the device recorded it skipped (``CheckInRecord.skip_reason``); None when answered
    #: or sent by a device that predates it.
    skip_reason: str | None = Field(default=None, max_length=200)


# -- agent updates (issue 25, docs/updates.md) --------------------------------------------------


class AgentBundleRow(SQLModel, table=True):
    """An uploaded agent bundle, checked (signature, members) and kept in the bundle store under
    its SHA-256 (``<data_dir>/updates/<sha256>``); rows are never updated."""

    __tablename__ = "agent_bundle"

    version: str = Field(primary_key=True, max_length=AGENT_VERSION_MAX)
    sha256: str = Field(max_length=64, unique=True)
    size: int = Field(sa_type=BigInteger)
    #: The signed manifest as it was in the bundle (its ``sig`` included).
    manifest: dict[str, Any] = Field(sa_type=JSON)
    min_previous_version: str | None = Field(default=None, max_length=AGENT_VERSION_MAX)
    uploaded_by: int = _fk("app_user.id")
    uploaded_by_email: str = Field(default="", max_length=EMAIL_MAX)
    uploaded_at: datetime = Field(sa_type=UTCDateTime)


class RolloutRow(SQLModel, table=True):
    """A staged rollout of one bundle: to a named cohort or to a stable share of the fleet
    (``updates.bucket``), paused by ingest when too many of its devices fail. ``state``: active,
    paused, completed or cancelled (``updates.ROLLOUT_STATES``)."""

    __tablename__ = "rollout"

    id: str = Field(primary_key=True, max_length=ROLLOUT_ID_MAX)
    version: str = _fk("agent_bundle.version", length=AGENT_VERSION_MAX)
    cohort: str | None = Field(default=None, max_length=COHORT_MAX)
    percentage: int | None = None
    #: Paused when failures among the targeted devices are more than this share of them ...
    failure_threshold: float = 0.2
    #: ... and at least this many.
    min_failures: int = 2
    state: str = Field(max_length=16, index=True)
    paused_reason: str | None = Field(default=None, max_length=UPDATE_REASON_MAX)
    #: Failures reported before this (the last resume) no longer count toward a pause.
    resumed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_by: int = _fk("app_user.id")
    created_by_email: str = Field(default="", max_length=EMAIL_MAX)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class DeviceUpdateRow(SQLModel, table=True):
    """Where each device stands with agent updates: the version it runs (its telemetry's
    ``agent_version``, or an update it reported installed or rolled back; the highest seq wins),
    the target its current desired document carries (None: none), and its latest update report."""

    __tablename__ = "device_update"

    device_id: str = Field(
        sa_column=Column(
            String(DEVICE_ID_MAX), ForeignKey("device.id", ondelete="RESTRICT"), primary_key=True
        )
    )
    agent_version: str | None = Field(default=None, max_length=AGENT_VERSION_MAX)
    agent_version_seq: int = -1
    target_rollout: str | None = Field(default=None, max_length=ROLLOUT_ID_MAX)
    target_version: str | None = Field(default=None, max_length=AGENT_VERSION_MAX)
    report_rollout: str | None = Field(default=None, max_length=ROLLOUT_ID_MAX, index=True)
    report_version: str | None = Field(default=None, max_length=AGENT_VERSION_MAX)
    state: str | None = Field(default=None, max_length=16)
    reason: str | None = Field(default=None, max_length=UPDATE_REASON_MAX)
    report_seq: int = -1
    report_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class UpdateReportRow(SQLModel, table=True):
    """Every update report a device sent (up kind ``update``, ``common.agent_update.UpdateReport``),
    stored once per (device, message id) like the other device messages: the history behind
    ``device_update`` and the failure counts of metrics and alerts."""

    __tablename__ = "update_report"
    __table_args__ = (
        UniqueConstraint("device_id", "message_id", name="uq_update_report_device_message"),
        Index("ix_update_report_received", "received_at"),
        Index("ix_update_report_rollout_state", "rollout", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=DEVICE_ID_MAX, index=True)
    message_id: str = Field(max_length=MESSAGE_ID_MAX)
    seq: int
    device_time: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    #: The rollout as the device named it (not a foreign key: a device's word, kept as sent).
    rollout: str = Field(max_length=AGENT_VERSION_MAX)
    state: str = Field(max_length=16)
    from_version: str = Field(max_length=AGENT_VERSION_MAX)
    to_version: str = Field(max_length=AGENT_VERSION_MAX)
    reason: str | None = Field(default=None, max_length=UPDATE_REASON_MAX)
    #: "agent" or "mcu" (the safety MCU's firmware from the bundle; versions are the firmware's).
    component: str = Field(default="agent", max_length=8)
    sig_status: str = Field(default=SIG_UNSIGNED, max_length=16)
    digest: str | None = Field(default=None, max_length=64)


def table_of(model: type[SQLModel]) -> Any:
    """The ``sqlalchemy.Table`` of a table model."""
    return model.__table__  # type: ignore[attr-defined]
