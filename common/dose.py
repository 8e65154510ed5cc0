"""Sound dose arithmetic: momentary exposure level (MEL) seconds → fraction of the weekly allowance.

Sources (read for this module, see ``docs/safety.md``):

- ITU-T H.870 (2022), "Guidelines for safe listening devices/systems": weekly sound allowance of
  1.6 Pa²·h (mode 1, 80 dBA for 40 h) or 0.51 Pa²·h (mode 2, 75 dBA for 40 h), integrated over a rolling
  7 days, 3 dB exchange rate.
- IEC 62368-1:2023 clause 10.6 (computed sound dose, CSD): MEL is the A-weighted level over 1 s; the
  person is warned at 100 % of the allowance and at every further 100 %.
- AOSP ``audio_utils`` MelAggregator: each second adds 4e-10 Pa² · 10^(MEL/10) · 1 s / 5760 Pa²·s.

Unlike Android, every second counts here (no RS1 floor below which MELs are ignored): the conservative
choice for a device that plays for hours every day. All functions are pure.
"""

from __future__ import annotations

import math
from typing import Final, Literal

DoseMode = Literal[1, 2]

P_REF_PA: Final = 20e-6
SECONDS_PER_HOUR: Final = 3600.0
WINDOW_S: Final = 7 * 24 * 3600
#: Weekly allowance in Pa²·h per mode (ITU-T H.870).
ALLOWANCE_PA2H: Final[dict[int, float]] = {1: 1.6, 2: 0.51}
#: The reference level of each mode: this level for 40 hours uses the whole allowance.
REFERENCE_DBA: Final[dict[int, float]] = {1: 80.0, 2: 75.0}
REFERENCE_HOURS: Final = 40.0
#: Levels below this add no meaningful dose (clamped to keep exp() sane for silence).
SILENCE_DB: Final = -100.0


def pressure_squared(level_db: float) -> float:
    """Mean-square sound pressure in Pa² of a level in dB SPL (re 20 µPa)."""
    return float(P_REF_PA**2 * 10.0 ** (max(level_db, SILENCE_DB) / 10.0))


def level_db(pressure_squared_pa2: float) -> float:
    """dB SPL of a mean-square pressure; silence is ``SILENCE_DB`` rather than -inf."""
    if pressure_squared_pa2 <= 0.0:
        return SILENCE_DB
    return max(SILENCE_DB, 10.0 * math.log10(pressure_squared_pa2 / P_REF_PA**2))


def allowance_pa2s(mode: DoseMode) -> float:
    """The weekly allowance in Pa²·s."""
    return ALLOWANCE_PA2H[mode] * SECONDS_PER_HOUR


def dose_fraction(level_dba: float, seconds: float = 1.0, mode: DoseMode = 1) -> float:
    """The fraction of the weekly allowance (1.0 = 100 %) that ``seconds`` at ``level_dba`` use."""
    return pressure_squared(level_dba) * seconds / allowance_pa2s(mode)


def seconds_to_allowance(
    level_dba: float, remaining_fraction: float = 1.0, mode: DoseMode = 1
) -> float:
    """How long ``level_dba`` may play before ``remaining_fraction`` of the allowance is used."""
    per_second = dose_fraction(level_dba, 1.0, mode)
    return math.inf if per_second <= 0.0 else max(0.0, remaining_fraction) / per_second


def mode_fraction(fraction: float, from_mode: DoseMode, to_mode: DoseMode) -> float:
    """The same exposure expressed as a fraction of another mode's allowance."""
    return fraction * ALLOWANCE_PA2H[from_mode] / ALLOWANCE_PA2H[to_mode]


def crossed_hundreds(before: float, after: float) -> list[int]:
    """The whole multiples of 100 % crossed going from ``before`` to ``after`` (IEC 62368-1: warn at
    100 % and at every further 100 %)."""
    return list(range(math.floor(before) + 1, math.floor(after) + 1))
