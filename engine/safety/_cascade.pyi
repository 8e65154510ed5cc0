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

def bank(
    sos: NDArray[np.float64],
    counts: tuple[int, ...],
    x: NDArray[np.float32],
    y: NDArray[np.float64],
    zi: NDArray[np.float64],
    /,
) -> None:
    """The running energies of several cascades of ``x`` in one pass: ``counts[f]`` sections each,
    one after the other in ``sos``, into ``y``, ``(filters, channels, frames)``; ``zi`` holds each
    filter's ``(channels, sections, 2)`` state in turn."""

def true_peak(
    taps: NDArray[np.float64],
    history: NDArray[np.float64],
    x: NDArray[np.float32],
    peak: NDArray[np.float64],
    /,
) -> None:
    """Per frame of ``x``, ``(frames, channels)``, the largest magnitude over its channels of the
    sample and the points each row of ``taps``, ``(phases, span)``, interpolates after it (a NaN
    kept), into ``peak``; ``history``, ``(span - 1, channels)``, holds the frames before ``x`` and
    is advanced past it."""

def largest_magnitude(x: NDArray[np.float32], /) -> float:
    """The largest ``|value|`` of ``x`` (0.0 when empty), NaN when it holds a NaN."""
