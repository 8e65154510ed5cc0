import numpy as np
from numpy.typing import NDArray

def cascade(
    sos: NDArray[np.float64],
    x: NDArray[np.float32],
    y: NDArray[np.float64],
    zi: NDArray[np.float64],
    energy: bool,
    /,
) -> None:
    """Filter the ``(frames, channels)`` float32 block ``x`` through the sections ``sos`` into
    ``y``, ``(channels, frames)`` float64, carrying the state ``zi``, ``(channels, sections, 2)``;
    with ``energy``, ``y`` gets the running sum of the filtered squares instead."""
