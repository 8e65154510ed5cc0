"""Import SBaGen ``.sbg`` schedule files as ``Program``s (pure text in, program out).

The syntax is SBaGen's own (SBAGEN.TXT, section 4 "Writing sequence files", SBaGen 1.4.x, and the
``white``/``brown`` noise and isochronic ``@`` tone-specs of its SBaGen+ successor). Supported:

- comments (``#`` to the end of the line); ``##`` lines become the program's description;
- options ``-S``, ``-E``, ``-SE`` and ``-Q`` (they change nothing here: an import always plays
  from the first time to the last), and ``-m FILE`` (a background file for ``mix/<amp>``);
- tone-sets ``name: spec spec ...`` with specs ``-`` (channel unused), ``pink/<amp>``,
  ``white/<amp>``, ``brown/<amp>``, ``mix/<amp>``, ``<carrier>+<beat>/<amp>`` and
  ``<carrier>-<beat>/<amp>`` (binaural), ``<freq>/<amp>`` (a tone) and ``<carrier>@<pulse>/<amp>``
  (isochronic); amplitudes are 0–100 and become gains 0–1;
- time-sequence lines ``<time> [<fade-in><fade-out>] <tone-set> [->]`` with times ``NOW``,
  ``HH:MM``, ``HH:MM:SS``, ``+HH:MM[:SS]`` (relative to the last absolute time) and sums such as
  ``NOW+04:00`` or ``12:00+00:00:20``; clock times count from the first one (past midnight when a
  time goes backwards); ``->`` slides every channel whose next tone-set has the same kind in the
  same channel, linearly over the whole period (frequencies only when both lines say ``=``).

Everything else (blocks ``name: {``, ``bell``, ``spin``, ``wave``, other options) is an error that
names its line; approximations (a ``-`` binaural, ``<``/``>`` fades, the last tone-set) come back as
notes. Nothing is dropped silently. The last time-sequence line marks the end, as with ``-E``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from resonera.common.errors import ProgramError, describe_validation_error
from resonera.common.program_model import (
    BackgroundLayer,
    BinauralLayer,
    Curve,
    IsochronicLayer,
    LayerModel,
    NoiseLayer,
    Program,
    Step,
    ToneLayer,
)

__all__ = ["SbgImport", "import_sbg", "load_sbg"]

#: SBaGen fades over 30 s either side of a change; our crossfade is after the change.
SBG_CROSSFADE_S: Final = 30.0
SBG_FADE_S: Final = 2.0

_NAME = r"[A-Za-z][A-Za-z0-9_-]*"
_NUM = r"\d+(?:\.\d*)?|\.\d+"
_TONESET = re.compile(rf"^({_NAME})\s*:\s*(.*)$")
_BLOCK = re.compile(rf"^({_NAME})\s*:\s*\{{")
_TIME_PART = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_SEQ = re.compile(r"^(\S+)\s+(?:([<=-][>=-])\s+)?(" + _NAME + r")(\s+->)?$")
_NOISE = re.compile(rf"^(pink|white|brown)/({_NUM})$")
_MIX = re.compile(rf"^mix/({_NUM})$")
_BINAURAL = re.compile(rf"^({_NUM})([+-])({_NUM})/({_NUM})$")
_TONE = re.compile(rf"^({_NUM})/({_NUM})$")
_ISO = re.compile(rf"^({_NUM})@({_NUM})/({_NUM})$")


@dataclass
class SbgImport:
    program: Program
    #: Approximations worth telling the person, each with its line.
    notes: list[str] = field(default_factory=list)


@dataclass
class _Entry:
    line: int
    time_s: float
    fades: str
    toneset: str
    slide: bool


class _Parser:
    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.description: list[str] = []
        self.mix_file: str | None = None
        self.tonesets: dict[str, tuple[int, list[LayerModel | None]]] = {}
        self.entries: list[_Entry] = []
        self._base: float | None = None
        self._clock: bool | None = None
        self._clock_offset = 0.0
        self._last_abs: float | None = None

    def error(self, line: int, message: str) -> None:
        self.errors.append(f"{self.source}:{line}: {message}")

    def note(self, line: int, message: str) -> None:
        self.notes.append(f"{self.source}:{line}: {message}")

    def parse(self, text: str) -> None:
        in_block = False
        for number, raw in enumerate(text.splitlines(), start=1):
            if raw.lstrip().startswith("##"):
                self.description.append(raw.lstrip()[2:].strip())
                continue
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if in_block:
                if line == "}":
                    in_block = False
                continue
            if _BLOCK.match(line):
                self.error(number, "block definitions ('name: {') are not supported")
                in_block = True
            elif line.startswith("-"):
                self._options(number, line)
            elif match := _TONESET.match(line):
                self._toneset(number, match.group(1), match.group(2))
            else:
                self._sequence(number, line)

    def _options(self, number: int, line: str) -> None:
        words = line.split()
        i = 0
        while i < len(words):
            word = words[i]
            if re.fullmatch(r"-[SEQ]+", word):
                i += 1
            elif word == "-m" and i + 1 < len(words):
                path = Path(words[i + 1])
                if self.base_dir is not None and not path.is_absolute():
                    path = (self.base_dir / path).resolve()
                self.mix_file = str(path)
                i += 2
            else:
                self.error(number, f"option {word!r} is not supported (only -S, -E, -Q, -m FILE)")
                return

    def _toneset(self, number: int, name: str, specs: str) -> None:
        if name in self.tonesets:
            self.error(number, f"tone-set {name!r} is defined twice")
            return
        layers: list[LayerModel | None] = []
        for spec in specs.split():
            try:
                layers.append(self._spec(number, spec))
            except (ValueError, ValidationError) as exc:
                why = describe_validation_error(exc) if isinstance(exc, ValidationError) else exc
                self.error(number, f"tone-spec {spec!r}: {why}")
        if not specs.split():
            self.error(number, f"tone-set {name!r} has no tone-specs (use '-' for silence)")
        self.tonesets[name] = (number, layers)

    def _spec(self, number: int, spec: str) -> LayerModel | None:
        if spec == "-":
            return None
        if m := _NOISE.match(spec):
            return NoiseLayer(colour=m.group(1), gain=_amp(m.group(2)))
        if m := _MIX.match(spec):
            if self.mix_file is None:
                raise ValueError("mix/<amp> needs a background file (-m FILE) before it")
            return BackgroundLayer(path=self.mix_file, gain=_amp(m.group(1)))
        if m := _BINAURAL.match(spec):
            if m.group(2) == "-":
                self.note(
                    number,
                    f"{spec}: the higher tone is played in the right ear (SBaGen's '-' puts it "
                    "in the left; the beat is the same)",
                )
            return BinauralLayer(
                carrier_hz=float(m.group(1)), beat_hz=float(m.group(3)), gain=_amp(m.group(4))
            )
        if m := _ISO.match(spec):
            return IsochronicLayer(
                carrier_hz=float(m.group(1)), pulse_hz=float(m.group(2)), gain=_amp(m.group(3))
            )
        if m := _TONE.match(spec):
            return ToneLayer(frequency_hz=float(m.group(1)), gain=_amp(m.group(2)))
        kind = re.match(r"[a-z]+", spec)
        raise ValueError(
            f"{kind.group(0) if kind else 'this'} tone-spec is not supported"
            if kind
            else "not a tone-spec this importer knows"
        )

    def _time(self, number: int, spec: str) -> float | None:
        parts = spec.split("+")
        head, rest = parts[0], parts[1:]
        offset = 0.0
        for part in rest:
            value = _clock(part)
            if value is None:
                self.error(number, f"bad time {spec!r} (use NOW, HH:MM, HH:MM:SS, +HH:MM[:SS])")
                return None
            offset += value
        if head == "":
            if self._base is None:
                self.error(number, f"relative time {spec!r} before any absolute time (NOW, HH:MM)")
                return None
            return self._base + offset
        clock = head != "NOW"
        if self._clock is not None and clock != self._clock:
            self.error(number, "mixing NOW and clock times (HH:MM) is not supported")
            return None
        self._clock = clock
        if head == "NOW":
            absolute = 0.0
        else:
            value = _clock(head)
            if value is None:
                self.error(number, f"bad time {spec!r} (use NOW, HH:MM, HH:MM:SS, +HH:MM[:SS])")
                return None
            absolute = value + self._clock_offset
            if self._last_abs is not None and absolute < self._last_abs:
                self._clock_offset += 24 * 3600.0  # past midnight
                absolute += 24 * 3600.0
        self._base = self._last_abs = absolute
        return absolute + offset

    def _sequence(self, number: int, line: str) -> None:
        match = _SEQ.match(line)
        if match is None:
            self.error(number, f"cannot read {line!r} as a tone-set or a time-sequence line")
            return
        time = self._time(number, match.group(1))
        if time is None:
            return
        if self.entries and time <= self.entries[-1].time_s:
            self.error(number, "time-sequence lines must be in order (this one is not later)")
            return
        self.entries.append(
            _Entry(number, time, match.group(2) or "--", match.group(3), bool(match.group(4)))
        )

    def program(self, name: str) -> Program | None:
        for entry in self.entries:
            if entry.toneset not in self.tonesets:
                self.error(entry.line, f"unknown tone-set {entry.toneset!r}")
        if len(self.entries) < 2:
            self.error(
                self.entries[0].line if self.entries else 1,
                "a schedule needs at least two time-sequence lines (the last one marks the end)",
            )
        if self.errors:
            return None
        start = self.entries[0].time_s
        if start > 0.0:
            self.note(self.entries[0].line, f"the schedule starts {start:g} s in; played from it")
        last = self.entries[-1]
        if any(layer is not None for layer in self.tonesets[last.toneset][1]):
            self.note(last.line, f"{last.toneset!r} marks the end and is not played (as sbagen -E)")
        steps: list[Step] = []
        for entry, following in zip(self.entries, self.entries[1:], strict=False):
            for char, where in ((entry.fades[0], "<"), (entry.fades[1], ">")):
                if char == where:
                    self.note(entry.line, f"'{where}' fades are played as a crossfade")
            try:
                steps.append(
                    Step(
                        duration_s=following.time_s - entry.time_s,
                        layers=self._layers(entry, following),
                        at_s=entry.time_s - start,
                        label=entry.toneset,
                    )
                )
            except ValidationError as exc:
                self.error(entry.line, describe_validation_error(exc))
        if self.errors:
            return None
        total = last.time_s - start
        fade = min(SBG_FADE_S, total / 2)
        return Program(
            name=name,
            description=" ".join(self.description)[:2000],
            fade_in_s=fade,
            fade_out_s=fade,
            crossfade_s=SBG_CROSSFADE_S,
            steps=steps,
        )

    def _layers(self, entry: _Entry, following: _Entry) -> list[LayerModel]:
        mine = self.tonesets[entry.toneset][1]
        theirs = self.tonesets[following.toneset][1]
        frequencies = entry.fades[1] == "=" and following.fades[0] == "="
        layers: list[LayerModel] = []
        for channel, layer in enumerate(mine):
            if layer is None:
                if any(other is not None for other in mine[channel + 1 :]):
                    # Keep later channels in their slots, so they slide to their own channel.
                    layers.append(ToneLayer(frequency_hz=1000.0, gain=0.0))
                continue
            target = theirs[channel] if channel < len(theirs) else None
            if entry.slide and target is not None and target.type == layer.type:
                curves: dict[str, Curve] = {"gain": "linear", "pan": "linear"}
                if frequencies:
                    curves.update(
                        {name: "linear" for name in layer.SLIDABLE if name.endswith("_hz")}
                    )
                if isinstance(layer, NoiseLayer):
                    curves["mix"] = "linear"
                layers.append(layer.model_copy(update={"slide": curves}))
            else:
                layers.append(layer)
        return layers


def _amp(text: str) -> float:
    value = float(text) / 100.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"amplitude {text} is outside 0–100")
    return value


def _clock(text: str) -> float | None:
    match = _TIME_PART.match(text)
    if match is None:
        return None
    hours, minutes, seconds = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    if minutes >= 60 or seconds >= 60:
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


def import_sbg(text: str, source: str = "schedule.sbg", base_dir: Path | None = None) -> SbgImport:
    """Parse an SBaGen schedule; raise ``ProgramError`` listing every problem with its line.

    ``base_dir`` resolves a relative ``-m`` background file. The program's name is the file's stem.
    """
    parser = _Parser(source, base_dir)
    parser.parse(text)
    try:
        program = parser.program(Path(source).stem or "sbg")
    except ValidationError as exc:
        raise ProgramError(f"{source}: {describe_validation_error(exc)}") from None
    if program is None:
        raise ProgramError("; ".join(parser.errors))
    return SbgImport(program=program, notes=parser.notes)


def load_sbg(text: str, source: str = "schedule.sbg", base_dir: Path | None = None) -> Program:
    """``import_sbg(...).program`` (the notes are dropped: use ``import_sbg`` to show them)."""
    return import_sbg(text, source, base_dir).program
