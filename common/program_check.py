"""A program checked against one person's profile and one output, before a sample is produced.

The program model already refuses what is unsafe for anyone (``program.py``); this narrows it to what
the clinician allows for this person (frequency ranges, session length) and to what the output can
carry: binaural beats need headphones, so on a speaker a binaural layer is refused or rendered as a
monaural or isochronic beat, as the profile says. Device and server (program library) share it.
"""

from __future__ import annotations

from typing import Any

from resonera.common.errors import ProgramError
from resonera.common.profile import FrequencyRange, HearingProfile, OutputKind
from resonera.common.program_model import (
    BinauralLayer,
    IsochronicLayer,
    LayerModel,
    MonauralLayer,
    Program,
    ToneLayer,
)


def _check(
    problems: list[str], where: str, name: str, value: float, allowed: FrequencyRange
) -> None:
    if not allowed.contains(value):
        problems.append(
            f"{where}: {name} {value:g} Hz is outside this person's range "
            f"{allowed.low:g}–{allowed.high:g} Hz"
        )


def _layer_problems(layer: LayerModel, where: str, profile: HearingProfile) -> list[str]:
    problems: list[str] = []
    if isinstance(layer, ToneLayer):
        _check(problems, where, "frequency_hz", layer.frequency_hz, profile.tone_hz)
    elif isinstance(layer, BinauralLayer | MonauralLayer):
        _check(problems, where, "carrier_hz", layer.carrier_hz, profile.carrier_hz)
        _check(problems, where, "beat_hz", layer.beat_hz, profile.beat_hz)
    elif isinstance(layer, IsochronicLayer):
        _check(problems, where, "carrier_hz", layer.carrier_hz, profile.tone_hz)
        _check(problems, where, "pulse_hz", layer.pulse_hz, profile.beat_hz)
    return problems


def _for_speaker(layer: BinauralLayer, how: str) -> LayerModel:
    common: dict[str, Any] = {"gain": layer.gain, "pan": layer.pan, "carrier_hz": layer.carrier_hz}
    slide = layer.slide
    if how == "monaural":
        return MonauralLayer(**common, beat_hz=layer.beat_hz, slide=slide)
    if isinstance(slide, dict):
        slide = {("pulse_hz" if k == "beat_hz" else k): v for k, v in slide.items()}
    return IsochronicLayer(**common, pulse_hz=layer.beat_hz, slide=slide)


def check_program_for(program: Program, profile: HearingProfile, output: OutputKind) -> Program:
    """The program as it will play for this person on this output; ``ProgramError`` naming every
    problem (step, layer, field, value and the allowed range) otherwise."""
    problems: list[str] = []
    if program.duration_s > profile.max_session_s:
        problems.append(
            f"the program lasts {program.duration_s:.0f} s; this person's sessions may last at "
            f"most {profile.max_session_s:.0f} s"
        )
    convert = output == "speaker" and program.needs_headphones
    if convert and profile.binaural_on_speaker == "refuse":
        problems.append(
            "binaural beats need headphones, and this output is a speaker (the profile refuses "
            "them there rather than render them as monaural or isochronic beats)"
        )
    for i, step in enumerate(program.steps, start=1):
        for j, layer in enumerate(step.layers, start=1):
            problems.extend(_layer_problems(layer, f"step {i} layer {j} ({layer.type})", profile))
    if problems:
        raise ProgramError(f"{program.name!r} cannot play here: " + "; ".join(problems))
    if not convert:
        return program
    steps = [
        step.model_copy(
            update={
                "layers": [
                    _for_speaker(layer, profile.binaural_on_speaker)
                    if isinstance(layer, BinauralLayer)
                    else layer
                    for layer in step.layers
                ]
            }
        )
        for step in program.steps
    ]
    return Program.model_validate(
        {**program.model_dump(), "steps": [s.model_dump() for s in steps]}
    )
