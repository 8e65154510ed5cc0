"""A render under the device's settings: the engine's pipeline (``resonera.engine.pipeline``), held to
the settings' calibration and hearing profile, without the dose ledger (a file on disk exposes no
one) and without MCU limits. Playback builds its pipeline in ``device.agent`` with the MCU's limits
and the ledger.

Nothing reaches a sink around the safety chain: a render without a calibration (none given, none in
the settings) is held to the levels the packaged reference headphones
(``engine/calibrations/reference-headphones.toml``, the demo's and the tests' output,
``DEFAULT_CALIBRATION``) would give.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resonera.common.profile import HearingProfile
from resonera.common.program import Program
from resonera.engine.audio.calibration import Calibration
from resonera.engine.audio.player import BlockProcessor
from resonera.engine.pipeline import Pipeline, build_chain, build_pipeline, render_calibration

if TYPE_CHECKING:
    from resonera.device.settings import DeviceSettings

__all__ = ["render_pipeline", "session_processors"]


def _calibration(
    settings: DeviceSettings | None, calibration: Calibration | None
) -> tuple[Calibration, bool]:
    """The calibration a render is held to: the one given, the settings' one, else the packaged
    reference headphones; and whether it is that default."""
    return render_calibration(
        calibration, settings.calibration_file if settings is not None else None
    )


def _profile(settings: DeviceSettings | None) -> HearingProfile:
    return settings.profile if settings is not None else HearingProfile()


def render_pipeline(
    settings: DeviceSettings | None,
    program: Program,
    sample_rate: int,
    calibration: Calibration | None = None,
) -> tuple[Pipeline, bool]:
    """``program``'s pipeline for a render at ``sample_rate``, held to ``calibration`` (see
    ``engine.pipeline.render_calibration``) and the settings' hearing profile (the default one
    without); and whether the calibration is the packaged default."""
    calibration, default = _calibration(settings, calibration)
    pipeline = build_pipeline(
        program, sample_rate=sample_rate, calibration=calibration, profile=_profile(settings)
    )
    return pipeline, default


def session_processors(
    settings: DeviceSettings | None, sample_rate: int, calibration: Calibration | None = None
) -> list[BlockProcessor]:
    """The processors of a render at ``sample_rate`` (the safety chain alone), as
    ``render_pipeline`` builds them, for a renderer of the caller's own."""
    calibration, _ = _calibration(settings, calibration)
    return [
        build_chain(sample_rate=sample_rate, calibration=calibration, profile=_profile(settings))
    ]
