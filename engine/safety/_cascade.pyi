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

def cascade_frames(
    sos: NDArray[np.float64],
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    zi: NDArray[np.float64],
    /,
) -> float:
    """``cascade`` with the filtered block written to ``y`` as ``x`` is laid out, ``(frames,
    channels)`` float32, each value rounded once from float64; returns the largest magnitude of
    ``y`` (NaN when it holds a NaN)."""

def skip_peak(history: NDArray[np.float64], x: NDArray[np.float32], /) -> None:
    """The true-peak detector's ``history``, ``(span - 1, channels)``, moved on past the block
    ``x`` without measuring it."""

def delay(
    ring: NDArray[np.float32],
    x: NDArray[np.float32],
    out: NDArray[np.float32] | None,
    gain: NDArray[np.float64] | None,
    at: int,
    limit: float | None,
    /,
) -> int:
    """``x``, ``(frames, channels)``, through the delay line ``ring``, ``(length, channels)``,
    whose oldest frame is at ``at``: the delayed frames into ``out``, times ``gain`` (one per
    frame) unless None, clipped to ``±limit`` unless None; ``out`` None only writes ``x``.
    Returns the new ``at``."""

def delay_running(
    pending: NDArray[np.float64], running: NDArray[np.float64], out: NDArray[np.float64], /
) -> None:
    """The running sums of a block, ``(channels, frames)``, delayed by ``pending``'s length (more
    than the block's), into ``out``; ``pending`` advanced in place."""

def forward_min(
    g: NDArray[np.float64],
    pending: NDArray[np.float64],
    out: NDArray[np.float64],
    lookahead: int,
    received: int,
    prefix: float,
    /,
) -> float:
    """``out[k] = min(g[k .. k+lookahead-1])`` over the stream (``limiter.ForwardMin``),
    ``pending`` advanced in place; returns the new prefix minimum."""

def release(
    m: NDArray[np.float64],
    box: NDArray[np.float64],
    step: float,
    r_last: float,
    ones_run: int,
    window: int,
    box_at: int,
    /,
) -> tuple[float, int, float]:
    """The gain smoother's release and box average of the forward minima ``m``, in place
    (``limiter.GainSmoother``); returns ``(r_last, ones_run, lowest gain)``."""

def required_gains(
    interval: NDArray[np.float64],
    last_peak: float,
    ceiling: float,
    floor: float,
    required: NDArray[np.float64],
    /,
) -> float:
    """The true-peak limiter's required gain per frame into ``required``; returns the block's
    last interval peak."""

def window_test(
    running: NDArray[np.float64],
    buffer: NDArray[np.float64],
    start: int,
    window: int,
    limits: NDArray[np.float64],
    /,
) -> bool:
    """The level ceiling's quick test: no window ending in the block over its weighting's
    limit."""

def append_running(
    running: NDArray[np.float64], buffer: NDArray[np.float64], skip: int, at: int, /
) -> None:
    """The block's running sums from frame ``skip`` on appended to the window sums' cumulative
    sums at ``at`` (``limiter.WindowSums.extend``)."""

def window_shares(
    running: NDArray[np.float64],
    buffer: NDArray[np.float64],
    at: int,
    window: int,
    limits: NDArray[np.float64],
    required: NDArray[np.float64],
    /,
) -> bool:
    """Append the block, then each frame's required gain of the level ceiling into
    ``required``; whether any window is over its limit (or NaN)."""

def second_energy(
    running: NDArray[np.float64],
    sums: NDArray[np.float64],
    whole: NDArray[np.float64],
    done: int,
    second: int,
    /,
) -> tuple[int, list[float], float]:
    """A block's running sums of weighted squares, ``(channels, frames)``, into the current
    second's energy per channel (``sums``, ``done`` frames of it so far); ``whole`` gets the
    block's. Returns ``done``, the loudest channel's energy of each second completed and the
    loudest channel's value of ``whole`` (NaN when any is)."""
