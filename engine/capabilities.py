"""What this engine is and what it can play: its version (the release and a hash of its code, so any
change to the code is a new engine) and its capabilities, which a device reports and a server checks a
prescription against (``common.prescription``)."""

from __future__ import annotations

import hashlib
import typing
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from typing import Final

from resonera.common.prescription import PRESCRIPTION_SCHEMA, EngineCapabilities
from resonera.common.program_model import LayerModel

#: The engine's packages, whose code is hashed into ``engine_version``.
ENGINE_PACKAGES: Final = ("resonera.engine", "resonera.engine.audio", "resonera.engine.safety")
#: The rates the synthesis, the safety chain's filters and the calibrations are made for.
SAMPLE_RATES: Final = (44100, 48000)


@cache
def engine_version() -> str:
    """The package's release and the first 12 hex digits of a SHA-256 over the engine's code."""
    digest = hashlib.sha256()
    for package in ENGINE_PACKAGES:
        for source in sorted(files(package).iterdir(), key=lambda f: f.name):
            if source.name.endswith(".py"):
                digest.update(source.name.encode() + b"\0" + source.read_bytes())
    try:
        release = version("resonera")
    except PackageNotFoundError:  # a source tree that was never installed
        release = "0+unknown"
    return f"{release}+{digest.hexdigest()[:12]}"


def layer_types() -> tuple[str, ...]:
    """Every layer type the program model (and so the synthesis) knows."""
    return tuple(
        sorted(str(layer.model_fields["type"].default) for layer in typing.get_args(LayerModel))
    )


def engine_capabilities(
    backgrounds: Iterable[str] = (), *, fetches_backgrounds: bool = True
) -> EngineCapabilities:
    """This engine's capabilities, with the SHA-256 of the background files held beside it."""
    return EngineCapabilities(
        engine_version=engine_version(),
        program_schemas=(PRESCRIPTION_SCHEMA,),
        layer_types=layer_types(),
        sample_rates=SAMPLE_RATES,
        backgrounds=tuple(sorted(set(backgrounds))),
        fetches_backgrounds=fetches_backgrounds,
    )
