"""The processing chain between the renderer and the sink for a render: the same safety chain as
playback (level ceiling, limiter, meter), without the dose ledger, since a file on disk exposes no
one. Playback builds its chain in ``device.agent`` with the MCU's limits and the ledger.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from resonera.device.audio.player import BlockProcessor

if TYPE_CHECKING:
    from resonera.device.audio.calibration import Calibration
    from resonera.device.settings import DeviceSettings

__all__ = ["session_processors"]


def session_processors(
    settings: DeviceSettings | None, sample_rate: int, calibration: Calibration | None = None
) -> list[BlockProcessor]:
    """The processors for a render at ``sample_rate``. Without a calibration (given, or in the
    settings) there is no level at the ear to hold, so the render is bare: ``[]``."""
    from resonera.common.profile import HearingProfile
    from resonera.device.audio.calibration import load_calibration_file
    from resonera.device.safety.session import build_chain

    if calibration is None and settings is not None and settings.calibration_file is not None:
        calibration = load_calibration_file(settings.calibration_file)
    if calibration is None:
        return []
    chain = build_chain(
        sample_rate=sample_rate,
        calibration=calibration,
        profile=settings.profile if settings is not None else HearingProfile(),
        hard=None,
        ledger=None,
        wall_clock=time.time,
    )
    return [chain]
