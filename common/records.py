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
