"""The processing chain between the renderer and the sink, shared by ``play`` and ``render``.

``session_processors`` returns the ``BlockProcessor``s every block goes through (the player's
``processors`` hook): the safety chain (look-ahead limiter, A-weighted ceiling, dose) plugs in
here, so a rendered file is exactly what the device would have played. Kept free of heavy imports:
``resonera-device render`` starts with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resonera.device.audio.player import BlockProcessor

if TYPE_CHECKING:
    from resonera.device.settings import DeviceSettings

__all__ = ["session_processors"]


def session_processors(settings: DeviceSettings | None, sample_rate: int) -> list[BlockProcessor]:
    """The processors for a session at ``sample_rate`` (``settings`` None: a bare render)."""
    return []
