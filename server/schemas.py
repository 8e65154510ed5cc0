"""API shapes, one family per resource (``...Create``, ``...Update``, ``...Public``).

Long on purpose: every family is built from the input bounds at the top (text, JSON, numbers,
times), and one module keeps the whole API's contract in one place to read, as ``models.py`` does
the schema.

Inputs refuse what the database would choke on, so a bad request is a 422, never a 500: strings
are length-bounded, free of NUL and of lone surrogates (JSON can carry ``"\\ud800"``; no encoder can
write it: encryption, the database and the response would fail), floats finite, integers in range,
times time-zone aware with a UTC equivalent (``common.envelope.AwareDatetime``), and free-form JSON
(profiles, programs) bounded in size and depth.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import date, datetime, time, tzinfo
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)

from resonera.common.envelope import AwareDatetime
from resonera.common.prescription import (
    MAX_PRESCRIBED_PROGRAMS,
    BackgroundFile,
    EngineCapabilities,
)
from resonera.common.profile import parse_checkins
from resonera.common.topics import DEVICE_ID_PATTERN
from resonera.server.crypto import check_device_public_key
from resonera.server.models import DISPLAY_NAME_MAX, EMAIL_MAX

Role = Literal["admin", "clinician", "auditor"]
MAX_JSON_BYTES: Final = 64 * 1024
MAX_JSON_DEPTH: Final = 8
INT32_MAX: Final = 2**31 - 1
PASSWORD_MIN: Final = 12  # also in cli.py, which must not import this module


_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")


def server_zone() -> tzinfo:
    """The server's time zone (the machine's: ``TZ`` or ``/etc/localtime``), where a day given
    without a time is placed."""
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def server_zone_name() -> str:
    """The server's time zone as a person reads it (``CET``, ``UTC``)."""
    return datetime.now().astimezone().tzname() or "the server's time zone"


def day_start(day: date) -> datetime:
    """The first instant of ``day`` in the server's time zone (its own offset that day: summer
    time counts), aware; ``ValueError`` where that instant has no UTC equivalent."""
    try:
        return datetime.combine(day, time.min).astimezone()
    except OverflowError:
        raise ValueError(f"{day.isoformat()} cannot be placed in the server's time zone") from None


def _day_in_server_zone(value: Any) -> Any:
    """A day alone (``2026-12-06``) as its first instant in the server's time zone; any other
    value as it came (a time must still carry its offset)."""
    if isinstance(value, str) and _DAY.fullmatch(value):
        try:
            return day_start(date.fromisoformat(value))
        except ValueError as exc:
            raise ValueError(f"is not a day: {exc}") from None
    return value


#: A point in time from outside that may also be a day alone: the day's start in the server's
#: time zone (``server_zone``). A time without its offset stays refused: which zone it meant is
#: not known.
DayOrTime = Annotated[AwareDatetime, BeforeValidator(_day_in_server_zone)]


def _no_nul(value: str) -> str:
    """``value`` if it is text every part of the server can store and send: no NUL, no lone
    surrogate (a ``str`` that is not valid Unicode)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"must be valid Unicode: a lone surrogate ({value[exc.start]!r}) at character {exc.start}"
        ) from None
    return value


def _check_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must not contain NaN or infinite numbers")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        raise ValueError("holds an integer too large to keep exactly")
    if isinstance(value, str):
        _no_nul(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _bounded_json(value: Any) -> Any:
    _check_json(value)
    if len(json.dumps(value)) > MAX_JSON_BYTES:
        raise ValueError(f"is larger than {MAX_JSON_BYTES} bytes as JSON")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
Email = Annotated[
    str,
    Field(min_length=3, max_length=EMAIL_MAX, pattern=r"^[^@\s]+@[^@\s]+$"),
    AfterValidator(lambda v: _no_nul(v).lower()),
]


def _display_name(value: str) -> str:
    """A name as a printed report shows it: one line, spaces at its ends dropped ("" clears it)."""
    _no_nul(value)
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
        raise ValueError("must be one line of text (no tabs, line breaks or control characters)")
    return value.strip()


#: A user's display name; "" means none (the email stands in).
DisplayName = Annotated[str, Field(max_length=DISPLAY_NAME_MAX), AfterValidator(_display_name)]
Password = Annotated[str, Field(min_length=PASSWORD_MIN, max_length=128), AfterValidator(_no_nul)]
DeviceIdStr = Annotated[str, Field(pattern=f"^{DEVICE_ID_PATTERN}$", max_length=64)]
PatientIdStr = Annotated[str, Field(min_length=1, max_length=36, pattern=r"^[0-9a-f-]{1,36}$")]
JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded_json)]
#: A device's signing key, checked by decoding and loading it (``crypto.check_device_public_key``).
DevicePublicKey = Annotated[
    str,
    Field(
        description="base64 (with its = padding) of the DER SubjectPublicKeyInfo of the device "
        "certificate's ECDSA P-256 key (124 characters), or of a raw 32-byte Ed25519 key (44); "
        "signatures are then required"
    ),
    AfterValidator(check_device_public_key),
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# -- errors ----------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable, e.g. not_found, validation_error")
    message: str = Field(description="one sentence for a person")
    details: Any = Field(default=None, description="e.g. the invalid fields")


class ErrorResponse(BaseModel):
    """Every error the API answers, whatever the status: an RFC 9457 problem document
    (``application/problem+json``) with ``error`` as an extension member."""

    type: str = Field(description="'about:blank': the status says what kind of problem it is")
    title: str = Field(description="the status's phrase, e.g. Not Found")
    status: int = Field(description="the HTTP status, as on the response")
    detail: str = Field(description="one sentence for a person (as error.message)")
    error: ErrorBody


# -- auth ------------------------------------------------------------------------------------


class LoginIn(_In):
    email: Email
    password: Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_nul)]


class RefreshIn(_In):
    refresh_token: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_nul)]


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds the access token is valid")


# -- users -----------------------------------------------------------------------------------


class UserCreate(_In):
    email: Email
    password: Password
    role: Role
    display_name: DisplayName = Field(
        default="", description="the name the user signs with (a clinician's printed report)"
    )


class UserUpdate(_In):
    role: Role | None = None
    display_name: DisplayName | None = Field(
        default=None, description='the name the user signs with; "" removes it'
    )
    active: bool | None = None
    password: Password | None = None
    unlock: bool = Field(
        default=False,
        description="lift the account's sign-in delay: forget its failed sign-ins",
    )


class UserPublic(BaseModel):
    id: int
    email: str
    display_name: str | None = None
    role: Role
    active: bool
    created_at: datetime


# -- devices ---------------------------------------------------------------------------------


class DeviceCreate(_In):
    id: DeviceIdStr
    cert_fingerprint: Annotated[Text, Field(max_length=128)] = ""
    public_key: DevicePublicKey | None = None
    note: Annotated[Text, Field(max_length=500)] = ""


class DeviceUpdate(_In):
    cert_fingerprint: Annotated[Text, Field(max_length=128)] | None = None
    public_key: DevicePublicKey | None = None
    revoked: bool | None = None
    note: Annotated[Text, Field(max_length=500)] | None = None


class DevicePublic(BaseModel):
    id: str
    cert_fingerprint: str
    public_key: str | None
    revoked: bool
    note: str
    created_at: datetime
    last_seq: int | None = None
    last_received_at: datetime | None = None
    online: bool | None = None
    desired_version: int | None = None
    reported_version: int | None = None
    #: After a revocation: what was done (CRL, broker reload) and what is left to a person.
    revocation: str | None = None


# -- patients --------------------------------------------------------------------------------


class PatientCreate(_In):
    name: Annotated[Text, Field(min_length=1, max_length=200)]
    birth_date: date
    notes: Annotated[Text, Field(max_length=10_000)] = ""


class PatientUpdate(_In):
    name: Annotated[Text, Field(min_length=1, max_length=200)] | None = None
    birth_date: date | None = None
    notes: Annotated[Text, Field(max_length=10_000)] | None = None


class PatientPublic(BaseModel):
    id: str
    name: str
    birth_date: date
    notes: str
    created_at: datetime
    updated_at: datetime
    clinician_ids: list[int]
    #: When an admin archived the patient (``patient_archive``); None: in care.
    archived_at: datetime | None = None


class LinkIn(_In):
    user_id: Annotated[int, Field(ge=1, le=INT32_MAX)]


# -- assignments -----------------------------------------------------------------------------


_DAY_OR_TIME: Final = (
    "a time with its offset, or a day alone (YYYY-MM-DD): that day's start in the server's time "
    "zone"
)


class AssignmentCreate(_In):
    device_id: DeviceIdStr
    patient_id: PatientIdStr
    valid_from: DayOrTime = Field(description=_DAY_OR_TIME)
    valid_to: DayOrTime | None = Field(default=None, description=_DAY_OR_TIME)


class AssignmentUpdate(_In):
    valid_to: DayOrTime = Field(description=_DAY_OR_TIME)


class AssignmentPublic(BaseModel):
    id: int
    device_id: str
    patient_id: str
    valid_from: datetime
    valid_to: datetime | None
    created_at: datetime
    attributed_sessions: int = 0


# -- desired state ---------------------------------------------------------------------------


class Limits(_In):
    """What the device must never exceed for this patient (it may only lower its own limits)."""

    max_level_dba: Annotated[float, Field(ge=30.0, le=85.0)] = 75.0
    max_session_minutes: Annotated[int, Field(ge=1, le=240)] = 60
    max_sessions_per_day: Annotated[int, Field(ge=1, le=12)] = 3
    weekly_dose_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0


class ProgramRef(_In):
    """A library program to prescribe: its id and a version (omitted: the latest)."""

    library_id: PatientIdStr
    version: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None


def _prescribed_by_id(value: object) -> object:
    # A program object (the old free-form entries) is refused with what to send instead, rather
    # than with the field errors of a shape the caller never meant.
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict) and "library_id" not in item:
                raise ValueError(
                    f"programs[{index}]: programs are prescribed by library id "
                    '({"library_id": "<id>", "version": <n, optional>}), not as program objects'
                )
    return value


class DesiredIn(_In):
    profile: JsonObject = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    programs: Annotated[
        list[ProgramRef],
        Field(max_length=MAX_PRESCRIBED_PROGRAMS),
        BeforeValidator(_prescribed_by_id),
    ] = Field(default_factory=list)
    sessions_per_week: Annotated[int, Field(ge=0, le=28)] = 0

    @field_validator("profile")
    @classmethod
    def _profile_fields_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The device refuses a profile with a bad check-in or setting; say so now, not at the device.
        if "checkins" in value:
            parse_checkins(value["checkins"])
        allowed = value.get("builtin_when_unassigned", True)
        if not isinstance(allowed, bool):
            raise ValueError("builtin_when_unassigned must be true or false")
        return value


ProgramState = Literal["pending", "applied", "refused"]


class DeviceProgramState(BaseModel):
    device_id: str
    desired_version: int = Field(description="the device's desired-state version that carries it")
    state: ProgramState
    reason: str = ""


class PrescribedProgramPublic(BaseModel):
    """One prescribed program and what became of it on the patient's devices."""

    library_id: str | None = Field(description="null: an entry stored before prescriptions")
    version: int | None
    name: str
    sha256: str | None
    backgrounds: list[BackgroundFile] = Field(default_factory=list)
    latest_version: int | None = Field(description="the library's latest version of the program")
    newer_version: bool = Field(description="the library has a version newer than prescribed")
    state: ProgramState = Field(
        description="pending until every device reported it; refused if any device refused it"
    )
    reason: str = Field(default="", description="why it was refused (the device's words)")
    devices: list[DeviceProgramState] = Field(default_factory=list)


class DesiredPublic(BaseModel):
    patient_id: str
    version: int = Field(description="0 before the first change; the ETag")
    profile: dict[str, Any]
    limits: Limits
    programs: list[PrescribedProgramPublic]
    sessions_per_week: int
    created_by: int | None
    created_at: datetime | None
    devices: dict[str, int] = Field(description="device id → desired-state version published")
    capabilities: dict[str, EngineCapabilities] = Field(
        default_factory=dict,
        description="device id → what its engine can play, as it last reported",
    )


# -- what devices reported -------------------------------------------------------------------


class SessionPublic(BaseModel):
    id: int
    device_id: str
    patient_id: str | None
    message_id: str
    seq: int
    device_time: datetime
    received_at: datetime
    session_id: str
    program_name: str
    program_digest: str
    started_at: datetime
    ended_at: datetime
    planned_s: float
    played_s: float
    outcome: str
    reason: str
    sink: str
    sample_rate: int
    peak_dbfs: float
    rms_dbfs: float
    simulation: bool
    hardware_board: str
    dose_fraction: float
    sig_status: str
    #: Times the sound device ran dry during the session (silence played meanwhile).
    underruns: int = 0
    #: The prescribed program's library id and version (null: a built-in or a file played by
    #: hand): two versions of one program are told apart by these.
    program_library_id: str | None = None
    program_version: int | None = None


class SafetyEventPublic(BaseModel):
    id: int
    device_id: str
    patient_id: str | None
    message_id: str
    seq: int
    device_time: datetime
    received_at: datetime
    event_type: str
    body: dict[str, Any]
    sig_status: str


class DoseLedgerResetIn(_In):
    """A clinician's reset of a device's corrupted dose ledger; the reason is kept and audited."""

    reason: Annotated[Text, Field(max_length=500)] = Field(
        description="why the ledger is reset (e.g. what the review of the corruption found)"
    )
    device_id: DeviceIdStr | None = Field(
        default=None, description="one of the patient's current devices; default: all of them"
    )

    @field_validator("reason")
    @classmethod
    def _reason_said(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must say why the ledger is reset")
        return value.strip()


DoseLedgerResetStatus = Literal["pending", "applied", "refused"]


class DoseLedgerResetPublic(BaseModel):
    id: str
    patient_id: str
    device_id: str
    reason: str
    requested_by: int
    requested_by_email: str
    requested_at: datetime
    #: ``pending`` until the device's ``dose_ledger_reset`` safety event arrives.
    status: DoseLedgerResetStatus
    #: From the device's event: when it acted, what it removed, the week before and after
    #: (fractions of the mode-1 allowance; before is ≥ 1 while the ledger was corrupted).
    done_at: datetime | None = None
    removed_rows: int | None = None
    week_fraction_before: float | None = None
    week_fraction_after: float | None = None
    device_note: str = ""


class DoseDay(BaseModel):
    day: date
    dose_fraction: float = Field(description="fraction of the weekly allowance used that day")
    sessions: int
    played_s: float
    rolling_7d: float = Field(description="sum over this day and the 6 before it")


class DoseReport(BaseModel):
    patient_id: str
    mode: Literal[1] = 1
    allowance_fraction: float = Field(description="the weekly allowance: 1.0 = 80 dBA for 40 h")
    rolling_7d: float = Field(description="dose of the last 7 days up to and including today")
    remaining_fraction: float
    days: list[DoseDay]


class AdherenceWeek(BaseModel):
    week_start: date
    done: int
    prescribed: int
    ratio: float | None


class AdherenceReport(BaseModel):
    patient_id: str
    sessions_per_week: int
    weeks: list[AdherenceWeek]


class AuditPublic(BaseModel):
    id: int
    at: datetime
    actor_id: int | None
    actor_email: str
    actor_role: str
    action: str
    resource: str
    resource_id: str
    patient_id: str | None
    method: str
    path: str
    client: str


# -- enrollment ------------------------------------------------------------------------------

#: Upper bound of a PEM certificate request or certificate in an enrollment request.
PEM_MAX: Final = 8192


class EnrollIn(_In):
    serial: Annotated[Text, Field(min_length=1, max_length=64)]
    code: Annotated[Text, Field(min_length=1, max_length=64)]
    csr: Annotated[Text, Field(min_length=1, max_length=PEM_MAX, description="PEM CSR")]
    time: Annotated[
        Text | None,
        Field(default=None, max_length=40, description="the device's clock, ISO 8601 with zone"),
    ] = None


class RenewIn(_In):
    certificate: Annotated[Text, Field(min_length=1, max_length=PEM_MAX)]
    csr: Annotated[Text, Field(min_length=1, max_length=PEM_MAX)]
    time: Annotated[Text, Field(min_length=1, max_length=40, description="ISO 8601, with zone")]
    signature: Annotated[
        Text,
        Field(
            min_length=1,
            max_length=200,
            description="base64 ECDSA-SHA256 by the current key over the canonical JSON of "
            "{certificate, csr, time}",
        ),
    ]


class EnrolledPublic(BaseModel):
    device_id: str
    certificate: str
    chain: str
    server_public_key: str
    broker_host: str
    broker_port: int
    desired_version: int
    not_after: datetime
    #: The keys agent update bundles are signed with: the device pins them (``docs/updates.md``).
    update_public_keys: list[str] = []


# -- program library -------------------------------------------------------------------------


class ProgramIn(_In):
    """A program as text: TOML (``docs/programs.md``) or the same structure in YAML."""

    document: Annotated[str, Field(min_length=1, max_length=64 * 1024), AfterValidator(_no_nul)]
    format: Literal["toml", "yaml"] = "toml"
    # Only bounded here (hostile sizes); the library's ``normalise_tags`` says what a tag may be,
    # as a 422 naming the tag, for the API and the dashboard alike.
    tags: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=100)] | None = (
        Field(
            default=None,
            description="at most 10 words or phrases (letters, digits, spaces, hyphens; 1-32 "
            "characters), stored trimmed, lowercased and de-duplicated; omitted on PUT: kept. "
            "Tags describe the library entry: changing only them makes no new version",
        )
    )


class ProgramPublic(BaseModel):
    id: str
    name: str
    version: int = Field(description="grows by one per change; the ETag to send in If-Match")
    format: str
    document: str
    content_hash: str = Field(description="SHA-256 of the program's canonical form")
    tags: list[str] = Field(description="normalised tags, not versioned")
    duration_s: float
    program: dict[str, Any] = Field(
        description="the checked program as JSON (its definition, as a prescription carries it)"
    )
    created_by: int
    created_at: datetime
    updated_by: int
    updated_at: datetime


class ProgramVersionSummary(BaseModel):
    """One version of a library program, without its text."""

    version: int
    name: str
    sha256: str = Field(description="SHA-256 of the definition's canonical JSON")
    created_by: int
    created_at: datetime


class ProgramVersionPublic(ProgramVersionSummary):
    """One version of a library program: what a patient prescribed this version plays."""

    program_id: str
    format: str
    document: str
    duration_s: float
    definition: dict[str, Any] = Field(description="the program's JSON form, as prescribed")


# -- outcomes (check-ins, adherence, exposure) -----------------------------------------------


class TrendDay(BaseModel):
    day: date
    n: int = Field(description="answers that day (skipped ones not counted)")
    mean: float | None
    skipped: int
    rolling_7d_mean: float | None = Field(
        description="mean of every answer in this day and the 6 before it"
    )
    rolling_7d_n: int


class QuestionTrend(BaseModel):
    question_id: str
    phase: Literal["before", "after"]
    text: str = Field(description="the question as the current profile asks it; '' if removed")
    days: list[TrendDay] = Field(description="days with an answer or a skip, oldest first")


class Change(BaseModel):
    """A before → after change, signed so that a positive mean is an improvement."""

    n: int = Field(description="sessions with both a before and an after answer")
    mean: float | None
    ci95_low: float | None = Field(description="95 % confidence interval (t), only when n ≥ 5")
    ci95_high: float | None
    too_few: bool = Field(description="n < 5: too few observations to read meaning into")
    note: str = ""


class ProgramChange(Change):
    program_name: str
    program_library_id: str | None = Field(
        default=None, description="null: sessions of a built-in or a file played by hand"
    )
    program_version: int | None = None
    question_id: str


class ExposureDay(BaseModel):
    day: date
    sessions: int
    completed: int
    played_s: float
    dose_fraction: float = Field(description="fraction of the weekly allowance used that day")
    mean_rms_dbfs: float | None = Field(description="mean signal RMS level of the day's sessions")
    max_peak_dbfs: float | None


class SkippedCheckIn(BaseModel):
    """A check-in question that got no answer, and why, as the device recorded it."""

    answered_at: datetime = Field(description="when the device recorded the skip")
    session_id: str
    question_id: str
    phase: Literal["before", "after"]
    skip_reason: str | None = Field(
        description="why it was skipped, in the device's words: 'skipped by the person' "
        "(declined), 'no answer in time', or that the device could not ask (no spoken prompt, "
        "the session ended by a fault, ...); null from devices that do not send it"
    )


class PatientOutcomes(BaseModel):
    patient_id: str
    days: int
    first_day: date
    last_day: date
    questions: list[dict[str, Any]] = Field(description="the current profile's check-in questions")
    adherence: AdherenceReport
    trends: list[QuestionTrend]
    programs: list[ProgramChange]
    exposure: list[ExposureDay] = Field(description="days with a session, oldest first")
    skipped_checkins: list[SkippedCheckIn] = Field(
        default_factory=list,
        description="the period's skipped check-ins with why each was skipped, oldest first "
        "(the latest 500 when there are more)",
    )


class CohortProgram(BaseModel):
    program_name: str
    program_library_id: str | None = Field(
        default=None, description="null: sessions of a built-in or a file played by hand"
    )
    program_version: int | None = None
    patients: int
    sessions: int
    completed: int
    completion_rate: float
    improvement: Change


class CohortOutcomes(BaseModel):
    days: int
    first_day: date
    last_day: date
    patients: int = Field(description="patients in the cohort (a clinician's own; all for admin)")
    programs: list[CohortProgram]
