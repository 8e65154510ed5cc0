"""The DC blocker: the safety chain's first stage, before any level decision.

DC is inaudible, yet it is unweighted energy in the driver, and a gain change applied to it (a ramp,
the limiter's attack, a fade) turns it into low-frequency sound that A-weighting then counts. A
background file can hold DC (a render measured 0.965 of full scale); programs cannot (noise tables
carry none, tones start at 20 Hz).

A second-order Butterworth high-pass at ``DC_CORNER_HZ`` = 5 Hz, bilinear with the corner
pre-warped: -3 dB at 5 Hz, -0.017 dB at 20 Hz (the lowest tone) and -0.001 dB at 40 Hz (the lowest
carrier); 12 dB per octave below the corner, nothing at 0 Hz. It settles from a DC step within about
0.1 s (time constant 1/(2π·5 Hz·0.707) = 45 ms). A step through a high-pass overshoots: a
low-frequency square wave of full-scale swing can leave it at up to about twice full scale, which
the limiter after it holds like any other peak. Streaming on the compiled cascade, so its output
does not depend on the block size.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numpy.typing import NDArray

from resonera.engine.safety.aweighting import CascadeFilter

DC_CORNER_HZ: Final = 5.0

Block = NDArray[np.float32]
Samples = NDArray[np.float64]


def design_dc_blocker(sample_rate: int, corner_hz: float = DC_CORNER_HZ) -> Samples:
    """One second-order section: ``s² / (s² + √2 ω s + ω²)`` through the bilinear transform."""
    k = math.tan(math.pi * corner_hz / sample_rate)
    norm = 1.0 + math.sqrt(2.0) * k + k * k
    b = [1.0 / norm, -2.0 / norm, 1.0 / norm]
    a = [1.0, 2.0 * (k * k - 1.0) / norm, (1.0 - math.sqrt(2.0) * k + k * k) / norm]
    return np.array([b + a], dtype=np.float64)


class DcBlocker(CascadeFilter):
    """``process(block)``: the block without its DC, ``(frames, channels)`` float32 as it came."""

    def __init__(self, sample_rate: int, channels: int = 2) -> None:
        super().__init__(design_dc_blocker(sample_rate), channels)
