"""Bodies of the records a device syncs, shared so the server parses exactly what the device wrote."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from resonera.common.envelope import INT32_MAX, AwareDatetime, MessageId
from resonera.common.prescription import MAX_PRESCRIBED_PROGRAMS, EngineCapabilities, ProgramReport
from resonera.common.profile import CHECKIN_ID_PATTERN, CheckInPhase
from resonera.common.safety_link_types import LinkEventKind

SessionOutcome = Literal["completed", "stopped", "fault"]
SinkKind = Literal["pyaudio", "wav", "null"]
#: The longest ``CheckInRecord.skip_reason``: a short phrase, shown in a dashboard table cell.
SKIP_REASON_MAX = 200


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


#: Text the server keeps in a column of its own: no NUL (PostgreSQL's ``text`` refuses it, and
#: a database error is not the message's error).
ColumnText = Annotated[str, AfterValidator(_no_nul)]


class SessionRecord(BaseModel):
    """What was played, for how long, how it ended. Levels are of the signal sent to the sink."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    session_id: MessageId
    program_name: ColumnText = Field(min_length=1, max_length=120)
    program_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: The prescribed program's library id and version (None: a built-in or a file played by hand).
    program_library_id: ColumnText | None = Field(default=None, min_length=1, max_length=64)
    program_version: int | None = Field(default=None, ge=1, le=INT32_MAX)
    started_at: AwareDatetime
    ended_at: AwareDatetime
    planned_s: float = Field(ge=0.0)
    played_s: float = Field(ge=0.0)
    outcome: SessionOutcome
    #: Why a session did not complete ("" when it did).
    reason: ColumnText = Field(default="", max_length=500)
    sink: SinkKind
    sample_rate: int = Field(gt=0, le=INT32_MAX)
    peak_dbfs: float = Field(le=0.0)
    rms_dbfs: float = Field(le=0.0)
    #: True when sound played without the safety MCU's consent (explicit simulation mode only).
    simulation: bool
    hardware_board: ColumnText = Field(default="", max_length=120)
    #: The session's exposure, metered at the ear through the calibration: its share of the mode-1
    #: weekly allowance (1.6 Pa²·h; convert with ``common.dose.mode_fraction``), its LAeq and its
    #: loudest one-second A-weighted level.
    dose_fraction: float = Field(default=0.0, ge=0.0)
    laeq_dba: float = Field(default=-100.0, ge=-100.0, le=200.0)
    max_mel_dba: float = Field(default=-100.0, ge=-100.0, le=200.0)
    #: Times the sound device ran dry and played silence meanwhile (PyAudio callback underruns):
    #: a gap the person heard, not a safety fault.
    underruns: int = Field(default=0, ge=0, le=INT32_MAX)


#: What a safety event is about: what the link reports (``common.safety_link_types.LinkEventKind``,
#: which the monitor records as it comes) and what the rest of the device records.
SafetyEventType = Literal[
    LinkEventKind,
    "no_monitor",
    "transition",
    "dose_reached",
    "dose_stop",
    "session_refused",
    "dose_ledger_corrupted",
    "dose_ledger_reset",
]


class HardwareReadings(BaseModel):
    """The safety MCU's last telemetry at the moment of an event."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    amp_temp_c: float
    supply_current_a: float
    output_vrms: float
    dc_offset_mv: float
    #: 0 when the board has no ear-cup microphone.
    ear_spl_db: float
    clip: bool
    headphones: bool
    muted: bool
    armed: bool
    #: The MCU's latched fault code (0 = none).
    fault_code: int = Field(ge=0, le=255)


class HardwareLimits(BaseModel):
    """The limits in force at the moment of an event (the MCU's, lowered by the device)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_output_vrms: float = Field(ge=0.0)
    max_amp_temp_c: float = Field(ge=0.0)
    max_supply_current_a: float = Field(ge=0.0)
    max_dc_offset_mv: float = Field(ge=0.0)
    max_ear_spl_db: float = Field(ge=0.0)


class DoseLedgerReset(BaseModel):
    """A clinician's reset of a corrupted dose ledger as the device carried it out (or refused it),
    with what the ledger held before: the evidence of a safety-relevant change."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: The id the server gave the request (in the signed desired state).
    reset_id: MessageId
    applied: bool
    reason: str = Field(max_length=500)
    requested_by: str = Field(default="", max_length=254)
    #: Minute rows that failed their seal and were removed (0 when refused).
    removed_rows: int = Field(default=0, ge=0)
    corrupted_before: bool
    #: The rolling week before the reset: what the intact rows held, and the fraction of the
    #: (mode 1) allowance the safety chain acted on (≥ 1 while corrupted).
    week_pa2s_before: float = Field(ge=0.0)
    week_fraction_before: float = Field(ge=0.0)
    week_fraction_after: float = Field(ge=0.0)


class LedgerResetReport(BaseModel):
    """The device's answer to one clinician reset request of the dose ledger."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    status: Literal["applied", "refused"]
    reason: str | None = Field(default=None, max_length=500)


class DesiredReport(BaseModel):
    """Body of a ``reported`` message: what the device did with a desired-state version.

    Only ``applied`` means the device now runs that version; ``deferred`` waits for the session
    to end (raised limits), ``refused`` names why (bad signature, rollback, cannot enforce)."""

    model_config = ConfigDict(extra="forbid")

    #: None when the refused document was too broken to name its version.
    desired_version: int | None = Field(default=None, ge=0, le=INT32_MAX)
    status: Literal["applied", "deferred", "refused"]
    reason: str | None = Field(default=None, max_length=500)
    dose_ledger_reset: LedgerResetReport | None = None
    #: What became of each prescribed program of this version, in the clinician's order.
    programs: list[ProgramReport] | None = Field(default=None, max_length=MAX_PRESCRIBED_PROGRAMS)
    #: What the device's engine can play, so the server prescribes only that.
    capabilities: EngineCapabilities | None = None

    @model_validator(mode="after")
    def _applied_names_its_version(self) -> DesiredReport:
        if self.status != "refused" and self.desired_version is None:
            raise ValueError(f"desired_version is required when the status is {self.status}")
        return self


class SafetyEventRecord(BaseModel):
    """One safety event: a consent change, a warning, a fault, a state transition. Synced as an
    ``event`` message; ``simulation`` is True when the device runs without the safety MCU."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    event_id: MessageId
    at: AwareDatetime
    type: SafetyEventType
    cause: str = Field(max_length=500)
    #: The link's fault or mute-reason code (``serial_link.FAULT_*``), 0 when none applies.
    code: int = Field(default=0, ge=0, le=255)
    readings: HardwareReadings | None = None
    limits: HardwareLimits | None = None
    #: Attenuation asked for by warnings at that moment (≤ 0 dB).
    attenuation_db: float = Field(default=0.0, le=0.0)
    #: Board id and firmware ("" before any HELLO, or in simulation without an MCU).
    hardware_board: str = Field(default="", max_length=120)
    simulation: bool
    #: For ``transition``: the safety state machine's states (docs/architecture.md §5).
    from_state: str | None = Field(default=None, max_length=32)
    to_state: str | None = Field(default=None, max_length=32)
    session_id: MessageId | None = None
    #: For ``dose_ledger_reset``: what was reset, by whose request, and the ledger before.
    dose_reset: DoseLedgerReset | None = None


class CheckInRecord(BaseModel):
    """One answer to one check-in question (``profile.CheckInQuestion``) before or after a
    session, or its skipping. Synced as a ``checkin`` message; the server keeps it once per
    (device, ``id``). ``better`` is copied from the question as asked, so a later profile change
    cannot turn an improvement into a worsening."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: MessageId
    session_id: MessageId
    device_id: str = Field(min_length=1, max_length=64)
    question_id: str = Field(pattern=CHECKIN_ID_PATTERN)
    phase: CheckInPhase
    #: The 0–10 answer; None exactly when the person skipped the question.
    value: int | None = Field(default=None, ge=0, le=10)
    skipped: bool = False
    answered_at: AwareDatetime
    better: Literal["higher", "lower"] = "higher"
    #: Why it was skipped, as the device knows it ("skipped by the person", "no answer in time",
    #: the prompt could not be spoken, ...): clinicians tell declining from not being asked.
    #: None when answered, and from devices that predate it.
    skip_reason: str | None = Field(default=None, min_length=1, max_length=SKIP_REASON_MAX)

    @staticmethod
    def as_skip_reason(text: str) -> str | None:
        """``text`` (any reason a device has, an error's text too) as a valid ``skip_reason``:
        one line of printable text, cut to ``SKIP_REASON_MAX``; None when nothing is left."""
        line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
        if len(line) > SKIP_REASON_MAX:
            line = line[: SKIP_REASON_MAX - 1].rstrip() + "…"
        return line or None

    @model_validator(mode="after")
    def _answered_or_skipped(self) -> CheckInRecord:
        if self.skipped and self.value is not None:
            raise ValueError("a skipped check-in has no value")
        if not self.skipped and self.value is None:
            raise ValueError("value (0–10) is required unless skipped is true")
        if self.skip_reason is not None:
            if not self.skipped:
                raise ValueError("skip_reason is only allowed when skipped is true")
            if not self.skip_reason.isprintable():
                raise ValueError(
                    "skip_reason must be plain text on one line (no control characters)"
                )
        return self
