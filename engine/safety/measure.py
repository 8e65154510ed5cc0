"""``resonera-device measure``: the device's own meter and dose arithmetic applied to any WAV/FLAC file.

Calibration is either a full ``spl_at_unit_rms`` (dB SPL of an A-weighted signal with RMS 1.0) or the
simplest one a person can measure: ``--spl-at-full-scale DB``, the dB SPL a full-scale 1 kHz sine (peak
1.0, RMS 1/√2) produces. A(1 kHz) = 0 dB, so that sine's A-weighted RMS is 1/√2 and
``spl_at_unit_rms = DB + 20·log10(√2)``, within the range a listening chain has
(``PLAUSIBLE_FULL_SCALE_SPL``, as for a calibration file).

Every sample of the file counts: the last, incomplete second adds its own energy for its own length
(0.8 s at 89 dBA adds 0.8 s at 89 dBA), as the device's ledger counts a session's last part.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import soundfile

from resonera.common.dose import dose_fraction
from resonera.common.errors import ResoneraError
from resonera.engine.audio.calibration import PLAUSIBLE_FULL_SCALE_SPL
from resonera.engine.safety.meter import MelMeter

BLOCK_FRAMES = 65_536


class MeasureError(ResoneraError):
    """The file cannot be measured."""


@dataclass(frozen=True)
class Measurement:
    file: str
    duration_s: float
    sample_rate: int
    laeq_dba: float
    max_mel_dba: float
    dose_mode1: float
    dose_mode2: float
    seconds_metered: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def spl_at_unit_rms_from_full_scale(spl_at_full_scale: float) -> float:
    """``spl_at_unit_rms`` from the dB SPL of a full-scale 1 kHz sine; ``MeasureError`` outside
    the plausible range (a typo, or a level in the wrong unit)."""
    low, high = PLAUSIBLE_FULL_SCALE_SPL
    if not (math.isfinite(spl_at_full_scale) and low <= spl_at_full_scale <= high):
        raise MeasureError(
            f"--spl-at-full-scale {spl_at_full_scale:g} is not a plausible level for a "
            f"full-scale sine at the ear ({low:g}–{high:g} dB SPL)"
        )
    return spl_at_full_scale + 20.0 * math.log10(math.sqrt(2.0))


def measure_file(path: Path, spl_at_unit_rms: float) -> Measurement:
    """LAeq, the highest MEL and the dose the file adds, second by second; a last partial second
    counts for its own length at its own level."""
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise MeasureError(f"{path}: not a readable audio file ({exc})") from None
    if info.samplerate < 32_000:
        raise MeasureError(f"{path}: sample rate {info.samplerate} Hz is too low for A-weighting")
    meter = MelMeter(info.samplerate, channels=info.channels, spl_at_unit_rms=spl_at_unit_rms)
    seconds: list[tuple[float, float]] = []  # (MEL, length in seconds)
    frames = 0
    blocks = soundfile.blocks(str(path), blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True)
    for block in blocks:
        frames += block.shape[0]
        seconds.extend((mel, 1.0) for mel in meter.update(block))
    partial = meter.flush()
    if partial is not None:
        seconds.append(partial)
    if not seconds:
        raise MeasureError(f"{path}: the file holds no audio")
    total = sum(length for _mel, length in seconds)
    energy = sum(length * 10 ** (mel / 10) for mel, length in seconds)
    return Measurement(
        file=str(path),
        duration_s=frames / info.samplerate,
        sample_rate=info.samplerate,
        laeq_dba=10 * math.log10(energy / total) if energy > 0 else -100.0,
        max_mel_dba=max(mel for mel, _length in seconds),
        dose_mode1=sum(dose_fraction(mel, length, 1) for mel, length in seconds),
        dose_mode2=sum(dose_fraction(mel, length, 2) for mel, length in seconds),
        seconds_metered=len(seconds),
    )
