"""True-peak detection: the peak of the reconstructed waveform, not only of its samples.

A DAC's output passes between samples and can exceed the largest of them (by up to about 3 dB for
content near a quarter of the sample rate), and the MCU's voltage limit is about that waveform. As
ITU-R BS.1770-4 Annex 2 measures true peak, the signal is interpolated four times: between each
sample and the next, three points at 1/4, 1/2 and 3/4 of the way, each a 16-tap FIR over the eight
samples either side (one phase of a 64-tap polyphase interpolator). The taps are a windowed sinc
(Kaiser, β = 5, spanning ±8 samples), each phase scaled to pass DC unchanged; the sample itself is
the fourth phase. Four points per sample, through an interpolator this short, read the waveform low
where it has content near Nyquist: up to 1.0 dB for a naive square wave (its harmonics alias up to
Nyquist) against ideal band-limited reconstruction, 0.2 dB for a sine at fs/4 (measured; 12 taps
per phase read 1.2 dB low). The limiter keeps its margin for that (``TRUE_PEAK_MARGIN_DB``,
``chain.py``).

Compiled (``_cascade.c``: ``true_peak``; ``skip_peak`` keeps the history of a block not measured):
one pass per channel over the block and the 15 samples kept from the one before, every phase's dot
product in the order of its taps, so the result does not depend on the block size. It was six
``numpy.convolve`` calls per stereo block, about a quarter of the chain's cost while it held a loud
program; that version stays in the tests as the reference (``tests/engine/
test_chain_compiled_parts.py``: the same peaks within 1e-12 of full scale).
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from resonera.engine.safety._cascade import skip_peak, true_peak

Block = NDArray[np.float32]
Samples = NDArray[np.float64]

OVERSAMPLING: Final = 4
#: Samples either side of an interpolated point that its FIR reads.
HALF_SPAN: Final = 8
KAISER_BETA: Final = 5.0


def _phase_taps() -> Samples:
    """``(OVERSAMPLING - 1, 2 * HALF_SPAN)``: the taps of the points at 1/4, 1/2, 3/4 after a
    sample, over the samples ``-HALF_SPAN + 1 .. HALF_SPAN`` around it."""
    offsets = np.arange(-HALF_SPAN + 1, HALF_SPAN + 1, dtype=np.float64)
    taps = np.empty((OVERSAMPLING - 1, len(offsets)))
    for phase in range(1, OVERSAMPLING):
        tau = phase / OVERSAMPLING - offsets  # distance from the point to each sample
        window = np.i0(KAISER_BETA * np.sqrt(np.clip(1.0 - (tau / HALF_SPAN) ** 2, 0.0, 1.0)))
        row = np.sinc(tau) * window / np.i0(KAISER_BETA)
        taps[phase - 1] = row / row.sum()
    return taps


PHASE_TAPS: Final = _phase_taps()
#: No interpolated point can exceed the largest nearby sample by more than this factor (the
#: largest sum of one phase's absolute taps): below ``ceiling / OVERSHOOT_BOUND`` a block cannot
#: reach the ceiling between its samples either.
OVERSHOOT_BOUND: Final = float(np.abs(PHASE_TAPS).sum(axis=1).max())


class TruePeakDetector:
    """Per frame, the largest magnitude over the channels of the sample and the three points
    interpolated after it, for the frames ``HALF_SPAN`` behind the input (primed with silence)."""

    def __init__(self, channels: int = 2) -> None:
        self.channels = channels
        self.delay_frames = HALF_SPAN
        #: Frames kept from earlier blocks (the FIR's span less one).
        self.kept_frames = 2 * HALF_SPAN - 1
        self._history = np.zeros((self.kept_frames, channels), dtype=np.float64)

    def skip(self, block: Block) -> None:
        """Take ``block`` without measuring it (the caller knows it is far below its ceiling)."""
        skip_peak(self._history, np.ascontiguousarray(block, dtype=np.float32))

    def process(self, block: Block) -> Samples:
        peak = np.empty(len(block), dtype=np.float64)
        true_peak(PHASE_TAPS, self._history, np.ascontiguousarray(block, dtype=np.float32), peak)
        return peak
