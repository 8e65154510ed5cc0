"""The program model: named programs made of timed steps of layers that hold or slide.

Ranges come from ``docs/safety.md`` ("Programs"): they keep beats perceptible and the person
safe; a clinician's profile may narrow them further, never widen them. Every number must be finite.
A program is refused, with the field and the reason, before a single sample is produced.

Layers (``type``): ``tone``, ``binaural``, ``monaural``, ``isochronic``, ``noise`` (white, pink,
brown or a mix) and ``background`` (a WAV/FLAC file, looped). Each has a ``gain`` (0–1) and a
``pan`` (−1 left … +1 right). A layer may ``slide`` some or all of its parameters over its step to
the values of the layer in the same slot of the next step (which must be of the same type):
``hold`` (the default: jump at the step change, through the crossfade), ``linear``,
``exponential`` (frequencies only: equal ratios in equal times) or ``ease`` (raised cosine). The
gains of a step add up to at most 1.0 at its start and at the end of its slides, and gain slides
within one step share one curve, so the sum never passes 1.0 in between.

Reading programs from files (TOML, SBaGen) and the built-in programs are ``program.py``'s.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Annotated, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from resonera.common.canonical import canonical_json
from resonera.common.errors import ProgramError, describe_validation_error

CARRIER_HZ: Final = (40.0, 1500.0)
BEAT_HZ: Final = (0.5, 45.0)
TONE_HZ: Final = (20.0, 16000.0)
MAX_SESSION_S: Final = 3 * 3600.0
MAX_LAYERS: Final = 8
#: Where an explicit ``at_s`` may differ from the end of the previous step (rounding of hh:mm:ss).
TIMELINE_TOLERANCE_S: Final = 1e-3

Curve = Literal["hold", "linear", "exponential", "ease"]
Colour = Literal["white", "pink", "brown"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Gain = Annotated[float, Field(ge=0.0, le=1.0)]
Pan = Annotated[float, Field(ge=-1.0, le=1.0)]
Carrier = Annotated[float, Field(ge=CARRIER_HZ[0], le=CARRIER_HZ[1])]
Beat = Annotated[float, Field(ge=BEAT_HZ[0], le=BEAT_HZ[1])]
ToneHz = Annotated[float, Field(ge=TONE_HZ[0], le=TONE_HZ[1])]


class _Layer(_Strict):
    """What every layer has: a gain, a pan, and how its parameters move to the next step."""

    #: Parameters that may slide; frequencies (``*_hz``) may also slide exponentially.
    SLIDABLE: ClassVar[tuple[str, ...]] = ("gain", "pan")

    gain: Gain
    pan: Pan = 0.0
    slide: Curve | dict[str, Curve] = "hold"

    @model_validator(mode="after")
    def _slide_names(self) -> _Layer:
        if isinstance(self.slide, dict):
            for name, curve in self.slide.items():
                if name not in self.SLIDABLE:
                    raise ValueError(
                        f"slide: {name!r} cannot slide; slidable: {', '.join(self.SLIDABLE)}"
                    )
                if curve == "exponential" and not name.endswith("_hz"):
                    raise ValueError(f"slide: {name} cannot slide exponentially (frequencies only)")
        return self

    def curve(self, name: str) -> Curve:
        """The curve parameter ``name`` follows over the step (``hold`` when it does not move).

        The shorthand ``slide = "exponential"`` slides frequencies exponentially and the other
        parameters linearly.
        """
        if isinstance(self.slide, dict):
            return self.slide.get(name, "hold")
        if self.slide == "exponential" and not name.endswith("_hz"):
            return "linear"
        return self.slide

    @property
    def slides(self) -> bool:
        return any(self.curve(name) != "hold" for name in self.SLIDABLE)


class ToneLayer(_Layer):
    """A pure tone; constant-power pan (a centred tone is gain/√2 in each ear)."""

    SLIDABLE = ("frequency_hz", "gain", "pan")
    type: Literal["tone"] = "tone"
    frequency_hz: ToneHz


class BinauralLayer(_Layer):
    """Carrier − beat/2 in the left ear and carrier + beat/2 in the right: needs headphones.

    ``pan`` is a balance: each ear at ``gain`` when centred, the far ear turned down when panned.
    """

    SLIDABLE = ("carrier_hz", "beat_hz", "gain", "pan")
    type: Literal["binaural"] = "binaural"
    carrier_hz: Carrier
    beat_hz: Beat


class MonauralLayer(_Layer):
    """Carrier ± beat/2 summed into one signal (peak ``gain``), beating in the air; constant-power pan."""

    SLIDABLE = ("carrier_hz", "beat_hz", "gain", "pan")
    type: Literal["monaural"] = "monaural"
    carrier_hz: Carrier
    beat_hz: Beat


class IsochronicLayer(_Layer):
    """A tone switched on and off ``pulse_hz`` times a second, with raised-cosine edges.

    Each pulse period: a rise over ``edge`` of the period, on, a fall over ``edge``, the whole on
    part lasting ``duty`` of the period (edges included), then silence. Constant-power pan.
    """

    SLIDABLE = ("carrier_hz", "pulse_hz", "gain", "pan")
    type: Literal["isochronic"] = "isochronic"
    carrier_hz: ToneHz
    pulse_hz: Beat
    duty: float = Field(default=0.5, ge=0.1, le=0.9)
    edge: float = Field(default=0.1, ge=0.02, le=0.45)

    @model_validator(mode="after")
    def _edges_fit(self) -> IsochronicLayer:
        if 2 * self.edge > self.duty + 1e-12:
            raise ValueError(
                f"edge: two edges of {self.edge:g} do not fit in a duty cycle of {self.duty:g}"
            )
        return self


class NoiseMix(_Strict):
    """Weights of each colour (normalised to add up to 1)."""

    white: float = Field(default=0.0, ge=0.0, le=1.0)
    pink: float = Field(default=0.0, ge=0.0, le=1.0)
    brown: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _not_empty(self) -> NoiseMix:
        if self.white + self.pink + self.brown <= 0.0:
            raise ValueError("a noise mix needs at least one colour with a weight above 0")
        return self

    def weights(self) -> tuple[float, float, float]:
        total = self.white + self.pink + self.brown
        return (self.white / total, self.pink / total, self.brown / total)


class NoiseLayer(_Layer):
    """Seeded noise (``Program.seed``): one ``colour`` or a ``mix`` of colours, the ears independent.

    Level: rms ``gain × 0.2`` per ear when centred, peaks never above ``gain``. ``pan`` is a
    balance, as for binaural layers.
    """

    SLIDABLE = ("gain", "pan", "mix")
    type: Literal["noise"] = "noise"
    colour: Colour | None = None
    mix: NoiseMix | None = None

    @model_validator(mode="after")
    def _one_colour(self) -> NoiseLayer:
        if (self.colour is None) == (self.mix is None):
            raise ValueError("noise: give either colour or mix (not both, not neither)")
        return self

    def weights(self) -> tuple[float, float, float]:
        if self.mix is not None:
            return self.mix.weights()
        return (
            float(self.colour == "white"),
            float(self.colour == "pink"),
            float(self.colour == "brown"),
        )


class BackgroundLayer(_Layer):
    """A WAV or FLAC file, looped (seamlessly, with a short crossfade at the loop point).

    ``path`` is relative to the program file's folder when loaded from a file. Its peak is scaled
    to at most ``gain``. ``pan`` is a balance.
    """

    type: Literal["background"] = "background"
    path: str = Field(min_length=1, max_length=4096)


Layer = Annotated[
    ToneLayer | BinauralLayer | MonauralLayer | IsochronicLayer | NoiseLayer | BackgroundLayer,
    Field(discriminator="type"),
]
LayerModel = (
    ToneLayer | BinauralLayer | MonauralLayer | IsochronicLayer | NoiseLayer | BackgroundLayer
)


class Step(_Strict):
    """One part of the timeline. No layers means silence (SBaGen's ``off``)."""

    duration_s: float = Field(gt=0.0, le=MAX_SESSION_S)
    layers: list[Layer] = Field(default_factory=list, max_length=MAX_LAYERS)
    #: Crossfade into the next step; None: the program's ``crossfade_s``.
    crossfade_s: float | None = Field(default=None, ge=0.0, le=60.0)
    #: Optional absolute start in the session (imported schedules); must continue the timeline.
    at_s: float | None = Field(default=None, ge=0.0, le=MAX_SESSION_S)
    label: str = Field(default="", max_length=120)

    @model_validator(mode="after")
    def _headroom(self) -> Step:
        # Layers are summed: their gains together must not ask for more than full scale.
        total = sum(layer.gain for layer in self.layers)
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"layer gains add up to {total:.3f}; together they must not exceed 1.0"
            )
        gain_curves = {layer.curve("gain") for layer in self.layers} - {"hold"}
        if len(gain_curves) > 1:
            raise ValueError(
                "gain slides of one step must share one curve (else their sum could pass 1.0): "
                + ", ".join(sorted(gain_curves))
            )
        return self


class Program(_Strict):
    name: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=2000)
    fade_in_s: float = Field(default=2.0, ge=0.0, le=60.0)
    fade_out_s: float = Field(default=2.0, ge=0.0, le=60.0)
    #: Default crossfade between steps (raised-cosine, complementary).
    crossfade_s: float = Field(default=0.05, ge=0.0, le=60.0)
    #: Seed of every noise layer: the same program and seed always sound the same.
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    steps: list[Step] = Field(min_length=1, max_length=5000)

    @model_validator(mode="after")
    def _session(self) -> Program:
        if self.duration_s > MAX_SESSION_S:
            raise ValueError(
                f"program lasts {self.duration_s:.0f} s; at most {MAX_SESSION_S:.0f} s is allowed"
            )
        if self.fade_in_s + self.fade_out_s > self.duration_s:
            raise ValueError("fade-in and fade-out together are longer than the program")
        self._check_timeline()
        self._check_slides()
        return self

    def _check_timeline(self) -> None:
        start = 0.0
        for index, step in enumerate(self.steps):
            if step.at_s is not None:
                where = f"steps.{index}.at_s"
                if step.at_s < start - TIMELINE_TOLERANCE_S:
                    raise ValueError(
                        f"{where}: starts at {step.at_s:g} s, overlapping the previous step "
                        f"(which ends at {start:g} s) by {start - step.at_s:g} s"
                    )
                if step.at_s > start + TIMELINE_TOLERANCE_S:
                    raise ValueError(
                        f"{where}: starts at {step.at_s:g} s, leaving a gap of "
                        f"{step.at_s - start:g} s after the previous step (ends at {start:g} s)"
                    )
            start += step.duration_s

    def _check_slides(self) -> None:
        for index, (step, following) in enumerate(
            itertools.zip_longest(self.steps, self.steps[1:])
        ):
            end_gain = 0.0
            for slot, layer in enumerate(step.layers):
                where = f"steps.{index}.layers.{slot}.slide"
                target = slide_target(following, slot)
                if layer.slides:
                    if following is None:
                        raise ValueError(f"{where}: the last step has no next step to slide to")
                    if target is None or target.type != layer.type:
                        found = "nothing" if target is None else f"a {target.type} layer"
                        raise ValueError(
                            f"{where}: slides to the {layer.type} layer in slot {slot} of "
                            f"step {index + 1}, which holds {found}"
                        )
                    if (
                        isinstance(layer, BackgroundLayer)
                        and isinstance(target, BackgroundLayer)
                        and layer.path != target.path
                    ):
                        raise ValueError(f"{where}: a background can only slide to itself")
                slid = layer.curve("gain") != "hold" and target is not None
                end_gain += target.gain if slid and target is not None else layer.gain
            if end_gain > 1.0 + 1e-9:
                raise ValueError(
                    f"steps.{index}: layer gains add up to {end_gain:.3f} at the end of the "
                    "step's slides; together they must not exceed 1.0"
                )

    @property
    def duration_s(self) -> float:
        return sum(step.duration_s for step in self.steps)

    @property
    def needs_headphones(self) -> bool:
        return any(isinstance(layer, BinauralLayer) for s in self.steps for layer in s.layers)

    def background_paths(self) -> list[tuple[str, str]]:
        """``(field, path)`` of every background file the program uses."""
        return [
            (f"steps.{i}.layers.{j}.path", layer.path)
            for i, step in enumerate(self.steps)
            for j, layer in enumerate(step.layers)
            if isinstance(layer, BackgroundLayer)
        ]

    def check_files(self) -> None:
        """Raise ``ProgramError`` naming the field of the first background file that is missing."""
        for field, path in self.background_paths():
            if not Path(path).is_file():
                raise ProgramError(f"{self.name}: {field}: background file {path} does not exist")

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the program's JSON form: identifies exactly what was
        played, and equals the ``sha256`` its prescription was sent with (``common.prescription``)."""
        return hashlib.sha256(canonical_json(self.model_dump(mode="json"))).hexdigest()


def slide_target(step: Step | None, slot: int) -> LayerModel | None:
    """The layer a slot slides to: the same slot of ``step`` (the next one), if any."""
    if step is None or slot >= len(step.layers):
        return None
    return step.layers[slot]


def parse_program(data: object, source: str = "program") -> Program:
    """Validate already-parsed data; raise ``ProgramError`` naming each bad field."""
    try:
        return Program.model_validate(data)
    except ValidationError as exc:
        raise ProgramError(f"{source}: {describe_validation_error(exc)}") from None
