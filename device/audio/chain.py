"""The processing chain between the renderer and the sink for a render: the same safety chain as
playback (level ceiling, limiter, meter), without the dose ledger, since a file on disk exposes no
one. Playback builds its chain in ``device.agent`` with the MCU's limits and the ledger.

Nothing reaches a sink around the safety chain: a render without a calibration (none given, none in
the settings) is held to the levels the packaged reference headphones
(``engine/calibrations/reference-headphones.toml``, the demo's and the tests' output) would give.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from resonera.engine.audio.calibration import (
    Calibration,
    load_calibration_file,
    packaged_calibration,
)
from resonera.engine.audio.player import BlockProcessor

if TYPE_CHECKING:
    from resonera.device.settings import DeviceSettings

__all__ = ["DEFAULT_CALIBRATION", "render_calibration", "session_processors"]

#: The packaged calibration a render without one is held to.
DEFAULT_CALIBRATION = "reference-headphones"


def render_calibration(
    settings: DeviceSettings | None, calibration: Calibration | None = None
) -> tuple[Calibration, bool]:
    """The calibration a render is held to: the one given, the settings' one, else the packaged
    reference headphones; and whether it is that default."""
    if calibration is not None:
        return calibration, False
    if settings is not None and settings.calibration_file is not None:
        return load_calibration_file(settings.calibration_file), False
    return load_calibration_file(packaged_calibration(DEFAULT_CALIBRATION)), True


def session_processors(
    settings: DeviceSettings | None, sample_rate: int, calibration: Calibration | None = None
) -> list[BlockProcessor]:
    """The processors for a render at ``sample_rate``: the safety chain, held to ``calibration``
    (see ``render_calibration``) and the settings' hearing profile (the default one without)."""
    calibration, _ = render_calibration(settings, calibration)
    # The chain itself, not ``safety.session.build_chain``: that module loads the dose ledger's
    # database layer, which a render (no ledger, no MCU) has no use for. With no MCU limits,
    # ``build_chain`` would give the same chain: the calibration's level, a full-scale peak ceiling.
    from resonera.common.profile import HearingProfile
    from resonera.engine.safety.chain import ChainLimits, SafetyChain

    chain = SafetyChain(
        sample_rate=sample_rate,
        limits=ChainLimits(spl_at_unit_rms=calibration.spl_at_unit_rms, peak_ceiling=1.0),
        profile=settings.profile if settings is not None else HearingProfile(),
        ledger=None,
        wall_clock=time.time,
    )
    return [chain]
