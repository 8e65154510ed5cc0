"""A person's hearing profile: the limits a clinician sets, shared by server (which validates and signs
them into the desired state) and device (which enforces them).

Defaults and bounds come from ``docs/safety.md``: 85 dBA ceiling on headphones (clinician may set
60–90), dose mode 1 for adults, a fallback at 100 % of the weekly allowance below the mode's reference
level (by default 5 dB below: 75 dBA in mode 1, 70 dBA in mode 2), sessions at most 3 h, and ranges
that only narrow the global program ranges, never widen them.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from resonera.common.dose import REFERENCE_DBA, DoseMode
from resonera.common.errors import ConfigError, describe_validation_error
from resonera.common.program_model import BEAT_HZ, CARRIER_HZ, MAX_SESSION_S, TONE_HZ

OutputKind = Literal["headphones", "speaker"]
CheckInPhase = Literal["before", "after"]
#: A clinician asks at most this many check-in questions: each costs the person a button press or
#: a spoken answer at every session.
MAX_CHECKIN_QUESTIONS = 5
CHECKIN_ID_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
#: dB(C), LCeq over any second: every ordinary program at the highest A-weighted maximum (90 dBA)
#: stays under it; 20-40 Hz tones at that maximum do not (docs/safety.md, section 4).
MAX_LEVEL_DBC = 100.0
#: dB(C) peak: 15 dB under EU Directive 2003/10/EC's lower action value for workers (135 dB(C)),
#: the peak WHO's community-noise guidelines (1999) give for children (docs/safety.md, section 4).
MAX_PEAK_DBC = 120.0
#: The fallback a profile gets when it names none: this far below its dose mode's reference level,
#: where an hour adds 0.79 % of the week (at the reference level itself it would add 2.5 %).
FALLBACK_BELOW_REFERENCE_DB: Final = 5.0


def default_fallback_dba(mode: DoseMode) -> float:
    """The fallback level of a profile in ``mode`` that names none."""
    return REFERENCE_DBA[mode] - FALLBACK_BELOW_REFERENCE_DB


class FrequencyRange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    low: float = Field(gt=0.0)
    high: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> FrequencyRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self

    def within(self, bounds: tuple[float, float]) -> bool:
        return bounds[0] <= self.low and self.high <= bounds[1]

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


class CheckInQuestion(BaseModel):
    """A 0–10 question asked before and/or after each session (e.g. relaxation, tinnitus
    loudness). ``better`` says which end is an improvement, so analytics can sign the change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Stable across profile versions: answers are grouped by it.
    id: str = Field(pattern=CHECKIN_ID_PATTERN)
    text: str = Field(min_length=1, max_length=200)
    #: What 0 and 10 mean, spoken and shown with the question.
    low_label: str = Field(min_length=1, max_length=60)
    high_label: str = Field(min_length=1, max_length=60)
    when: Literal["before", "after", "both"] = "both"
    better: Literal["higher", "lower"] = "higher"

    def asked(self, phase: CheckInPhase) -> bool:
        return self.when in (phase, "both")


class HearingProfile(BaseModel):
    """What the device enforces for one person on one output."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    output: OutputKind = "headphones"
    max_level_dba: float = Field(default=85.0, ge=60.0, le=90.0)
    #: Limits on what A-weighting hides (docs/safety.md, section 4), which a clinician may only
    #: lower: the C-weighted level of any second, and the C-weighted peak, at the ear.
    max_level_dbc: float = Field(default=MAX_LEVEL_DBC, ge=60.0, le=MAX_LEVEL_DBC)
    max_peak_dbc: float = Field(default=MAX_PEAK_DBC, ge=80.0, le=MAX_PEAK_DBC)
    dose_mode: DoseMode = 1
    on_dose_reached: Literal["attenuate", "stop"] = "attenuate"
    #: Below the dose mode's reference level; when not given, the mode's default (75 / 70 dBA).
    fallback_level_dba: float = Field(default=75.0, ge=40.0, le=90.0)
    #: Refuse a session whose expected dose would pass 100 % of the allowance.
    refuse_over_allowance: bool = True
    max_session_s: float = Field(default=MAX_SESSION_S, gt=0.0, le=MAX_SESSION_S)
    carrier_hz: FrequencyRange = FrequencyRange(low=CARRIER_HZ[0], high=CARRIER_HZ[1])
    beat_hz: FrequencyRange = FrequencyRange(low=BEAT_HZ[0], high=BEAT_HZ[1])
    tone_hz: FrequencyRange = FrequencyRange(low=TONE_HZ[0], high=TONE_HZ[1])
    #: Binaural beats need headphones: on a speaker, refuse them or render them another way.
    binaural_on_speaker: Literal["refuse", "monaural", "isochronic"] = "refuse"
    #: The check-in the clinician set: asked around every session, answered or skipped.
    checkins: tuple[CheckInQuestion, ...] = Field(default=(), max_length=MAX_CHECKIN_QUESTIONS)
    #: With no program prescribed, the play button plays the device's built-in default program;
    #: a clinician may forbid that, so only what they prescribed ever plays.
    builtin_when_unassigned: bool = True
    #: What counts as a session for adherence and the daily session limit
    #: (``common/session_count.py``): one that played at least this many seconds, or at least
    #: ``counted_session_min_fraction`` of its planned length. The dose counts every second anyway.
    counted_session_min_s: float = Field(default=60.0, ge=0.0, le=MAX_SESSION_S)
    counted_session_min_fraction: float = Field(default=0.10, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _fallback_for_the_mode(cls, data: Any) -> Any:
        """No fallback given: the dose mode's default (``default_fallback_dba``)."""
        if isinstance(data, dict) and "fallback_level_dba" not in data:
            mode = data.get("dose_mode", 1)
            if mode in REFERENCE_DBA:
                return {**data, "fallback_level_dba": default_fallback_dba(mode)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> HearingProfile:
        if self.fallback_level_dba > self.max_level_dba:
            raise ValueError(
                f"fallback_level_dba ({self.fallback_level_dba}) is above max_level_dba "
                f"({self.max_level_dba})"
            )
        reference = REFERENCE_DBA[self.dose_mode]
        if self.fallback_level_dba >= reference:
            raise PydanticCustomError(
                "fallback_not_below_reference",
                f"fallback_level_dba ({self.fallback_level_dba:g} dBA) must be below dose mode "
                f"{self.dose_mode}'s reference level ({reference:g} dBA): at that level the "
                "weekly allowance keeps being used after 100 % (2.5 % an hour); "
                f"{default_fallback_dba(self.dose_mode):g} dBA is the mode's default",
            )
        for name, bounds in (
            ("carrier_hz", CARRIER_HZ),
            ("beat_hz", BEAT_HZ),
            ("tone_hz", TONE_HZ),
        ):
            rng: FrequencyRange = getattr(self, name)
            if not rng.within(bounds):
                raise ValueError(
                    f"{name} may only narrow the safe range {bounds[0]:g}–{bounds[1]:g} Hz"
                )
        ids = [question.id for question in self.checkins]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"checkins: question id {', '.join(repeated)} is used twice")
        return self


def parse_checkins(data: object) -> tuple[CheckInQuestion, ...]:
    """A profile's ``checkins`` alone (the server keeps the rest of a profile free-form); a
    ``ValueError`` naming the field, e.g. ``checkins.0.when: ...``."""
    try:
        return HearingProfile.model_validate({"checkins": data}).checkins
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None


def parse_profile(data: object, source: str = "profile") -> HearingProfile:
    try:
        return HearingProfile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None
