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

Programs are written by hand in TOML (``docs/programs.md`` has the whole format)::

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
    slide = "exponential"        # to the next step's binaural layer in slot 0
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import tomllib
from pathlib import Path
from typing import Annotated, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from resonera.common.errors import ProgramError, describe_validation_error

log = logging.getLogger(__name__)

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
        """SHA-256 of the canonical JSON form: identifies exactly what was played."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


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


def load_program_toml(text: str, source: str = "program") -> Program:
    """Parse a hand-written TOML program; raise ``ProgramError`` with the line for syntax errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProgramError(f"{source} is not valid TOML: {exc}") from None
    return parse_program(data, source)


def _resolve_backgrounds(data: object, folder: Path) -> object:
    """Background paths in raw TOML data made absolute against the program file's folder."""
    if not isinstance(data, dict):
        return data
    for step in data.get("steps", []) if isinstance(data.get("steps"), list) else []:
        layers = step.get("layers", []) if isinstance(step, dict) else []
        for layer in layers if isinstance(layers, list) else []:
            if isinstance(layer, dict) and layer.get("type") == "background":
                path = layer.get("path")
                if isinstance(path, str) and path and not Path(path).is_absolute():
                    layer["path"] = str((folder / path).resolve())
    return data


def load_program_file(path: Path) -> Program:
    """A ``.toml`` or SBaGen ``.sbg`` program file; background files resolved and checked.

    Raises ``ProgramError`` (with the file and the line or field) for anything wrong, including a
    background file that does not exist.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProgramError(f"cannot read program file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ProgramError(f"program file {path} is not UTF-8 text") from None
    if path.suffix.lower() == ".sbg":
        from resonera.common.sbg import import_sbg

        imported = import_sbg(text, source=str(path), base_dir=path.parent)
        for note in imported.notes:
            log.warning("%s", note)
        program = imported.program
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProgramError(f"{path} is not valid TOML: {exc}") from None
        program = parse_program(_resolve_backgrounds(data, path.parent), str(path))
    program.check_files()
    return program


def _binaural(carrier: float, beat: float, gain: float, slide: Curve = "hold") -> BinauralLayer:
    return BinauralLayer(carrier_hz=carrier, beat_hz=beat, gain=gain, slide=slide)


BUILTIN_PROGRAMS: Final[dict[str, Program]] = {
    "demo-alpha": Program(
        name="demo-alpha",
        description="Short demonstration: a 10 Hz binaural beat on a 200 Hz carrier, then 8 Hz.",
        fade_in_s=0.5,
        fade_out_s=0.5,
        steps=[
            Step(duration_s=1.5, layers=[_binaural(200.0, 10.0, 0.25)]),
            Step(duration_s=1.5, layers=[_binaural(200.0, 8.0, 0.25)]),
        ],
    ),
    "calm-tone": Program(
        name="calm-tone",
        description="A soft 432 Hz tone for one minute.",
        steps=[Step(duration_s=60.0, layers=[ToneLayer(frequency_hz=432.0, gain=0.2)])],
    ),
    "alpha-relax": Program(
        name="alpha-relax",
        description="20 min: pink noise under a binaural beat easing from 12 Hz to 10 Hz, held.",
        fade_in_s=10.0,
        fade_out_s=15.0,
        steps=[
            Step(
                duration_s=300.0,
                layers=[
                    NoiseLayer(colour="pink", gain=0.5),
                    _binaural(200.0, 12.0, 0.2, "exponential"),
                ],
            ),
            Step(
                duration_s=900.0,
                layers=[NoiseLayer(colour="pink", gain=0.5), _binaural(200.0, 10.0, 0.2)],
            ),
        ],
    ),
    "theta-descent": Program(
        name="theta-descent",
        description="30 min: a beat sliding from 10 Hz to 6 Hz and then 4.5 Hz over brown-pink noise.",
        fade_in_s=15.0,
        fade_out_s=20.0,
        steps=[
            Step(
                duration_s=600.0,
                layers=[
                    NoiseLayer(mix=NoiseMix(pink=0.6, brown=0.4), gain=0.5),
                    _binaural(180.0, 10.0, 0.2, "exponential"),
                ],
            ),
            Step(
                duration_s=600.0,
                layers=[
                    NoiseLayer(mix=NoiseMix(pink=0.6, brown=0.4), gain=0.5),
                    _binaural(160.0, 6.0, 0.2, "exponential"),
                ],
            ),
            Step(
                duration_s=600.0,
                layers=[
                    NoiseLayer(mix=NoiseMix(pink=0.6, brown=0.4), gain=0.5),
                    _binaural(150.0, 4.5, 0.2),
                ],
            ),
        ],
    ),
    "delta-sleep": Program(
        name="delta-sleep",
        description="45 min: brown noise with a beat drifting from 6 Hz down to 2 Hz, for sleep.",
        fade_in_s=30.0,
        fade_out_s=60.0,
        steps=[
            Step(
                duration_s=1200.0,
                layers=[NoiseLayer(colour="brown", gain=0.6), _binaural(120.0, 6.0, 0.15, "ease")],
            ),
            Step(
                duration_s=1500.0,
                layers=[NoiseLayer(colour="brown", gain=0.6), _binaural(110.0, 2.0, 0.15)],
            ),
        ],
    ),
    "focus-isochronic": Program(
        name="focus-isochronic",
        description="15 min: 14 Hz isochronic pulses on 300 Hz over soft pink noise (no headphones needed).",
        fade_in_s=10.0,
        fade_out_s=10.0,
        steps=[
            Step(
                duration_s=900.0,
                layers=[
                    NoiseLayer(colour="pink", gain=0.4),
                    IsochronicLayer(carrier_hz=300.0, pulse_hz=14.0, gain=0.2, duty=0.5, edge=0.15),
                ],
            )
        ],
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
