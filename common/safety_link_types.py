"""What the safety link deals in: the MCU's hard limits, what its HELLO says, the warning policy,
the events the link reports and its states. Plain values; the state machine is ``safety_link.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from resonera.common import serial_link as sl

#: Telemetry fields with a limit, in ``HardLimits`` order.
LIMIT_FIELDS = tuple(check[0] for check in sl.LIMIT_CHECKS)


class LinkState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    HELLO_RECEIVED = "hello_received"
    ARMED = "armed"


@dataclass(frozen=True)
class HardLimits:
    """The MCU's hard limits. ``max_ear_spl_db == 0`` means the board has no ear-cup microphone."""

    max_output_vrms: float
    max_amp_temp_c: float
    max_supply_current_a: float
    max_dc_offset_mv: float
    max_ear_spl_db: float

    def values(self) -> tuple[float, float, float, float, float]:
        return (
            self.max_output_vrms,
            self.max_amp_temp_c,
            self.max_supply_current_a,
            self.max_dc_offset_mv,
            self.max_ear_spl_db,
        )

    def to_wire(self) -> sl.Limits:
        return sl.Limits(*self.values())

    @classmethod
    def from_wire(cls, limits: sl.Limits) -> HardLimits:
        return cls(*limits.values())

    def lowered_to(self, other: HardLimits) -> HardLimits:
        """Each limit the lower of the two; a limit of 0 (no sensor) stays 0."""
        return HardLimits(
            *(
                mine if mine <= 0 else (min(mine, theirs) if theirs > 0 else mine)
                for mine, theirs in zip(self.values(), other.values(), strict=True)
            )
        )


@dataclass(frozen=True)
class HelloInfo:
    """What the MCU said about itself in HELLO (``limits`` updated by an accepted LIMITS)."""

    protocol_major: int
    protocol_minor: int
    firmware_version: str
    board_id: str
    limits: HardLimits

    @classmethod
    def from_message(cls, hello: sl.Hello) -> HelloInfo:
        return cls(
            hello.protocol_major,
            hello.protocol_minor,
            hello.firmware_version,
            hello.board_id,
            HardLimits.from_wire(hello.limits),
        )


@dataclass(frozen=True)
class WarningPolicy:
    """When a reading nears its limit: within ``margins[field]`` (absolute, in the field's unit) or,
    for fields not named there, within ``fraction`` of the limit. The default warns 10 °C below the
    temperature limit and at 90 % of the others. The attenuation grows linearly from 0 dB at the
    start of the margin to ``max_attenuation_db`` at the limit; a warning clears once the reading
    is ``hysteresis`` (a fraction of the margin) back below the start of the margin."""

    margins: Mapping[str, float] = field(default_factory=lambda: {"amp_temp_c": 10.0})
    fraction: float = 0.1
    max_attenuation_db: float = 12.0
    hysteresis: float = 0.2

    def __post_init__(self) -> None:
        unknown = set(self.margins) - set(LIMIT_FIELDS)
        if unknown:
            raise ValueError(f"no such limit field: {', '.join(sorted(unknown))}")
        if not 0.0 <= self.fraction < 1.0 or self.max_attenuation_db < 0 or self.hysteresis < 0:
            raise ValueError("fraction must be in [0, 1), attenuation and hysteresis ≥ 0")

    def margin(self, name: str, limit: float) -> float:
        return self.margins.get(name, limit * self.fraction)


@dataclass(frozen=True)
class LinkEvent:
    """Something the device should record. ``kind`` is one of ``EVENT_KINDS``."""

    kind: LinkEventKind
    cause: str
    code: int = sl.FAULT_NONE


#: What the link reports (a ``LinkEvent``'s ``kind``); ``common.records.SafetyEventType`` adds
#: what the rest of the device records.
LinkEventKind = Literal[
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
]
EVENT_KINDS: Final[tuple[LinkEventKind, ...]] = get_args(LinkEventKind)
