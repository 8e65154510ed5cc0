"""Bodies of the records a device syncs, shared so the server parses exactly what the device wrote."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from resonera.common.envelope import AwareDatetime, MessageId

SessionOutcome = Literal["completed", "stopped", "fault"]
SinkKind = Literal["pyaudio", "wav", "null"]


class SessionRecord(BaseModel):
    """What was played, for how long, how it ended. Levels are of the signal sent to the sink."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    session_id: MessageId
    program_name: str = Field(min_length=1, max_length=120)
    program_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    started_at: AwareDatetime
    ended_at: AwareDatetime
    planned_s: float = Field(ge=0.0)
    played_s: float = Field(ge=0.0)
    outcome: SessionOutcome
    #: Why a session did not complete ("" when it did).
    reason: str = Field(default="", max_length=500)
    sink: SinkKind
    sample_rate: int = Field(gt=0)
    peak_dbfs: float = Field(le=0.0)
    rms_dbfs: float = Field(le=0.0)
    #: True when sound played without the safety MCU's consent (explicit simulation mode only).
    simulation: bool
    hardware_board: str = Field(default="", max_length=120)
    #: The session's exposure, metered at the ear through the calibration: its share of the mode-1
    #: weekly allowance (1.6 Pa²·h; convert with ``common.dose.mode_fraction``), its LAeq and its
    #: loudest one-second A-weighted level.
    dose_fraction: float = Field(default=0.0, ge=0.0)
    laeq_dba: float = Field(default=-100.0, ge=-100.0, le=200.0)
    max_mel_dba: float = Field(default=-100.0, ge=-100.0, le=200.0)


#: What a safety event is about. The monitor writes the link's events (see
#: ``resonera.common.safety_link.EVENT_KINDS``); the safety state machine writes ``transition``.
SafetyEventType = Literal[
    "link_up",
    "link_down",
    "mcu_restarted",
    "incompatible",
    "consent_granted",
    "consent_withdrawn",
    "fault",
    "warning",
    "warning_cleared",
    "limits_lowered",
    "limits_refused",
    "no_monitor",
    "transition",
    "dose_reached",
    "dose_stop",
    "session_refused",
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
    #: For ``transition``: the safety state machine's states (architecture.md §4).
    from_state: str | None = Field(default=None, max_length=32)
    to_state: str | None = Field(default=None, max_length=32)
    session_id: MessageId | None = None
