"""Background files (WAV, FLAC, anything libsndfile reads), decoded once into a seamless loop.

``load_background(path, sample_rate)`` returns float32 of shape (2, frames) at ``sample_rate``: a
mono file is played in both ears, extra channels are dropped, another rate is resampled (polyphase,
``scipy.signal.resample_poly``), a float file louder than full scale is scaled down to peak 1.0, and
the last ``LOOP_CROSSFADE_S`` are crossfaded (equal gain, so never louder) into the first ones so
the loop has no seam. Files longer than ``MAX_BACKGROUND_S`` are refused (the loop is held in
memory for the session). Every problem is a ``ProgramError`` naming the file, raised before any
sample is produced.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from resonera.common.errors import ProgramError

__all__ = ["LOOP_CROSSFADE_S", "MAX_BACKGROUND_S", "load_background"]

LOOP_CROSSFADE_S: Final = 0.05
MAX_BACKGROUND_S: Final = 600.0


def load_background(path: str | Path, sample_rate: int, field: str = "path") -> NDArray[np.float32]:
    # Here, not at the top: soundfile (cffi, libsndfile) adds about 20 ms and 1 MB to every process
    # that synthesises (sessions, renders, previews; measured with -X importtime and the peak RSS),
    # and only a background layer reads a file.
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (OSError, RuntimeError) as exc:
        raise ProgramError(f"{field}: cannot read background file {path}: {exc}") from None
    if info.frames <= 0:
        raise ProgramError(f"{field}: background file {path} holds no audio")
    if info.frames / info.samplerate > MAX_BACKGROUND_S:
        raise ProgramError(
            f"{field}: background file {path} lasts {info.frames / info.samplerate:.0f} s; "
            f"at most {MAX_BACKGROUND_S:.0f} s (it is looped)"
        )
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as exc:
        raise ProgramError(f"{field}: cannot decode background file {path}: {exc}") from None
    audio = np.ascontiguousarray(
        (np.repeat(data, 2, axis=1) if data.shape[1] == 1 else data[:, :2]).T, np.float64
    )
    if not np.all(np.isfinite(audio)):
        raise ProgramError(f"{field}: background file {path} holds non-finite samples")
    if rate != sample_rate:
        # Here, not at the top: scipy.signal costs 79 MB and 2.6 s (measured); only a background
        # file at another rate needs it (a render or a session must not load it: tested).
        from scipy.signal import resample_poly

        ratio = Fraction(sample_rate, rate)
        audio = resample_poly(audio, ratio.numerator, ratio.denominator, axis=1)
    peak = float(np.max(np.abs(audio), initial=0.0))
    if peak > 1.0:
        audio /= peak
    fade = min(round(LOOP_CROSSFADE_S * sample_rate), audio.shape[1] // 2)
    if fade > 0:
        # loop = audio[fade:], whose last `fade` frames blend into audio[:fade]: after the last
        # frame comes audio[fade], which follows audio[fade - 1] as in the file.
        x = (np.arange(fade) + 0.5) / fade
        head, tail = audio[:, :fade], audio[:, -fade:]
        blended = tail * (1.0 - x) + head * x  # equal-gain: never above the file's own peak
        audio = np.concatenate((audio[:, fade:-fade], blended), axis=1)
        peak = float(np.max(np.abs(audio), initial=0.0))
        if peak > 1.0:
            audio /= peak
    return np.ascontiguousarray(audio, np.float32)
