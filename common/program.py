"""Programs from text: hand-written TOML, SBaGen schedules, and the built-in programs.

The model (layers, steps, their safe ranges) is ``program_model.py``; its names are re-exported
here, so ``resonera.common.program`` stays the one import for everything about programs.

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

The built-in programs are such files too, shipped beside this module: ``program-<name>.toml``
(``BUILTIN_PROGRAMS``), each validated by the model as it is loaded.
"""

from __future__ import annotations

import logging
import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

from resonera.common.errors import ProgramError
from resonera.common.program_model import (
    BEAT_HZ,
    CARRIER_HZ,
    MAX_LAYERS,
    MAX_SESSION_S,
    TIMELINE_TOLERANCE_S,
    TONE_HZ,
    BackgroundLayer,
    Beat,
    BinauralLayer,
    Carrier,
    Colour,
    Curve,
    Gain,
    IsochronicLayer,
    Layer,
    LayerModel,
    MonauralLayer,
    NoiseLayer,
    NoiseMix,
    Pan,
    Program,
    Step,
    ToneHz,
    ToneLayer,
    parse_program,
    slide_target,
)
from resonera.common.sbg import import_sbg

__all__ = [
    "BEAT_HZ",
    "BUILTIN_PROGRAMS",
    "CARRIER_HZ",
    "MAX_LAYERS",
    "MAX_SESSION_S",
    "TIMELINE_TOLERANCE_S",
    "TONE_HZ",
    "BackgroundLayer",
    "Beat",
    "BinauralLayer",
    "Carrier",
    "Colour",
    "Curve",
    "Gain",
    "IsochronicLayer",
    "Layer",
    "LayerModel",
    "MonauralLayer",
    "NoiseLayer",
    "NoiseMix",
    "Pan",
    "Program",
    "Step",
    "ToneHz",
    "ToneLayer",
    "builtin_program",
    "load_builtin_programs",
    "load_program_file",
    "load_program_toml",
    "parse_program",
    "slide_target",
]

log = logging.getLogger(__name__)

#: The built-in programs' files in this package: ``program-<name>.toml``, ``name`` inside as well.
_BUILTIN_PREFIX: Final = "program-"
_BUILTIN_SUFFIX: Final = ".toml"


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


def load_builtin_programs(folder: Traversable) -> dict[str, Program]:
    """Every ``program-<name>.toml`` in ``folder`` (this package's), by name (sorted), validated."""
    programs: dict[str, Program] = {}
    for file in sorted(folder.iterdir(), key=lambda file: file.name):
        if not (file.name.startswith(_BUILTIN_PREFIX) and file.name.endswith(_BUILTIN_SUFFIX)):
            continue
        name = file.name[len(_BUILTIN_PREFIX) : -len(_BUILTIN_SUFFIX)]
        program = load_program_toml(file.read_text(encoding="utf-8"), source=file.name)
        if program.name != name:
            # The file name is how a person finds it; the name inside is what records carry.
            raise ProgramError(f"{file.name}: names the program {program.name!r}, not {name!r}")
        programs[name] = program
    return programs


BUILTIN_PROGRAMS: Final[dict[str, Program]] = load_builtin_programs(
    resources.files("resonera.common")
)


def builtin_program(name: str) -> Program:
    try:
        return BUILTIN_PROGRAMS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_PROGRAMS))
        raise ProgramError(
            f"no built-in program named {name!r}; built-in programs: {known}"
        ) from None
