"""The program model (first version): named programs made of timed steps of tone layers.

Ranges come from ``shared/docs/safety.md`` ("Programs"): they keep beats perceptible and the person
safe; a clinician's profile may narrow them further, never widen them. Every number must be finite.
Programs are written by hand in TOML::

    name = "Alpha drift"
    fade_in_s = 2.0
    fade_out_s = 2.0

    [[steps]]
    duration_s = 60
    [[steps.layers]]
    type = "binaural"
    carrier_hz = 200
    beat_hz = 10
    gain = 0.3
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from resonera.common.envelope import describe_validation_error
from resonera.common.errors import ProgramError

CARRIER_HZ: Final = (40.0, 1500.0)
BEAT_HZ: Final = (0.5, 45.0)
TONE_HZ: Final = (20.0, 16000.0)
MAX_SESSION_S: Final = 3 * 3600.0
MAX_LAYERS: Final = 8


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ToneLayer(_Strict):
    """A pure tone, the same in both ears unless panned."""

    type: Literal["tone"] = "tone"
    frequency_hz: float = Field(ge=TONE_HZ[0], le=TONE_HZ[1])
    gain: float = Field(ge=0.0, le=1.0)
    pan: float = Field(default=0.0, ge=-1.0, le=1.0)


class BinauralLayer(_Strict):
    """Carrier − beat/2 in the left ear and carrier + beat/2 in the right: needs headphones."""

    type: Literal["binaural"] = "binaural"
    carrier_hz: float = Field(ge=CARRIER_HZ[0], le=CARRIER_HZ[1])
    beat_hz: float = Field(ge=BEAT_HZ[0], le=BEAT_HZ[1])
    gain: float = Field(ge=0.0, le=1.0)


Layer = Annotated[ToneLayer | BinauralLayer, Field(discriminator="type")]


class Step(_Strict):
    duration_s: float = Field(gt=0.0, le=MAX_SESSION_S)
    layers: list[Layer] = Field(min_length=1, max_length=MAX_LAYERS)

    @model_validator(mode="after")
    def _headroom(self) -> Step:
        # Layers are summed: their gains together must not ask for more than full scale.
        total = sum(layer.gain for layer in self.layers)
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"layer gains add up to {total:.3f}; together they must not exceed 1.0"
            )
        return self


class Program(_Strict):
    name: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=2000)
    fade_in_s: float = Field(default=2.0, ge=0.0, le=60.0)
    fade_out_s: float = Field(default=2.0, ge=0.0, le=60.0)
    steps: list[Step] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _session_length(self) -> Program:
        if self.duration_s > MAX_SESSION_S:
            raise ValueError(
                f"program lasts {self.duration_s:.0f} s; at most {MAX_SESSION_S:.0f} s is allowed"
            )
        if self.fade_in_s + self.fade_out_s > self.duration_s:
            raise ValueError("fade-in and fade-out together are longer than the program")
        return self

    @property
    def duration_s(self) -> float:
        return sum(step.duration_s for step in self.steps)

    @property
    def needs_headphones(self) -> bool:
        return any(isinstance(layer, BinauralLayer) for s in self.steps for layer in s.layers)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form: identifies exactly what was played."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def parse_program(data: object, source: str = "program") -> Program:
    """Validate already-parsed data; raise ``ProgramError`` naming each bad field."""
    try:
        return Program.model_validate(data)
    except ValidationError as exc:
        raise ProgramError(f"{source}: {describe_validation_error(exc)}") from None


def load_program_toml(text: str, source: str = "program") -> Program:
    """Parse a hand-written TOML program; raise ``ProgramError`` with the line for syntax errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProgramError(f"{source} is not valid TOML: {exc}") from None
    return parse_program(data, source)


BUILTIN_PROGRAMS: Final[dict[str, Program]] = {
    "demo-alpha": Program(
        name="demo-alpha",
        description="Short demonstration: a 10 Hz binaural beat on a 200 Hz carrier, then 8 Hz.",
        fade_in_s=0.5,
        fade_out_s=0.5,
        steps=[
            Step(duration_s=1.5, layers=[BinauralLayer(carrier_hz=200.0, beat_hz=10.0, gain=0.25)]),
            Step(duration_s=1.5, layers=[BinauralLayer(carrier_hz=200.0, beat_hz=8.0, gain=0.25)]),
        ],
    ),
    "calm-tone": Program(
        name="calm-tone",
        description="A soft 432 Hz tone for one minute.",
        steps=[Step(duration_s=60.0, layers=[ToneLayer(frequency_hz=432.0, gain=0.2)])],
    ),
}


def builtin_program(name: str) -> Program:
    try:
        return BUILTIN_PROGRAMS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_PROGRAMS))
        raise ProgramError(
            f"no built-in program named {name!r}; built-in programs: {known}"
        ) from None
