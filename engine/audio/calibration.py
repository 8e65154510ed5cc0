"""Output-chain calibration: from a digital level (dBFS) to sound pressure at the ear (dB SPL).

A profile describes one device model and output (``docs/safety.md``, "Levels")::

    name = "R1 headphone out + HD 280"
    output = "headphones"
    dac_full_scale_vrms = 1.0          # rms volts of a full-scale sine (peak 1.0) at the DAC
    amplifier_gain_db = 6.0
    sensitivity_db_spl_per_mw = 102.0  # or sensitivity_db_spl_per_v (then no impedance needed)
    impedance_ohm = 64.0

and for speakers ``output = "speaker"``, the sensitivity at ``reference_distance_m`` (1 m by
default) and the ``listening_distance_m``. Levels follow ``levels.py``: dBFS is the rms of one
channel, 20·log10(rms), so a full-scale sine is −3.01 dBFS. The chain:

- voltage: V_rms = dac_full_scale_vrms · √2 · 10^(dBFS/20) · 10^(gain/20);
- per volt: S_V = S_mW + 10·log10(1000 / Z)   (P = V²/Z, in mW);
- at the ear: dB SPL = S_V + 20·log10(V_rms) − 20·log10(listening / reference distance) (speakers,
  free field: the inverse-square law).

The calibration is data: ``load_calibration_toml`` validates it strictly (every number finite and
in range; exactly one sensitivity; an impedance with a per-mW sensitivity; a distance for speakers
and none for headphones) and names the field at fault. Each number in its own range can still add up
to a chain no listening device has (the fields' ranges alone allowed 247 dB SPL at full scale), so
the results are bounded too (``docs/safety.md``, "Plausible calibrations"): the sensitivity per volt
to what headphones (``PLAUSIBLE_SENSITIVITY_PER_V``) and speakers are made with, and the level of a
full-scale sine at the ear to ``PLAUSIBLE_FULL_SCALE_SPL``. A value outside is a mistake in the
numbers (a unit, a sign), and the error names the value and the fields it came from.
"""

from __future__ import annotations

import math
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from resonera.common.errors import ConfigError, describe_validation_error

__all__ = [
    "DEFAULT_CALIBRATION",
    "Calibration",
    "default_calibration",
    "load_calibration_file",
    "load_calibration_toml",
    "packaged_calibration",
]

#: The packaged calibration (``engine/calibrations/``) that renders and server previews are held to
#: when none is given: the reference headphones of the demo and the tests.
DEFAULT_CALIBRATION = "reference-headphones"

#: 20·log10(√2): a full-scale sine's peak over its rms.
_SINE_CREST_DB = 20.0 * math.log10(math.sqrt(2.0))

#: dB SPL for 1 V rms that real transducers have (speakers at their reference distance): headphones
#: from about 85 (high-impedance studio sets) to 125 dB SPL/V (sensitive in-ear monitors), with
#: 10 dB of room either side; speakers 80–95 dB SPL at 2.83 V and 1 m, i.e. 71–86 dB SPL/V, with
#: room for horns and small drivers.
PLAUSIBLE_SENSITIVITY_PER_V: Final[dict[str, tuple[float, float]]] = {
    "headphones": (75.0, 135.0),
    "speaker": (60.0, 110.0),
}
#: dB SPL of a full-scale sine at the ear: below 60 no profile's ceiling (60–90 dBA) could ever be
#: reached; above 135 dB (EU 2003/10/EC's lower peak action value, as a continuous sine) a chain
#: is no listening device, whatever the limits in front of it.
PLAUSIBLE_FULL_SCALE_SPL: Final = (60.0, 135.0)


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=120)
    output: Literal["headphones", "speaker"]
    dac_full_scale_vrms: float = Field(gt=0.0, le=50.0)
    amplifier_gain_db: float = Field(default=0.0, ge=-60.0, le=60.0)
    sensitivity_db_spl_per_v: float | None = Field(default=None, ge=40.0, le=150.0)
    sensitivity_db_spl_per_mw: float | None = Field(default=None, ge=40.0, le=150.0)
    impedance_ohm: float | None = Field(default=None, gt=0.0, le=10_000.0)
    reference_distance_m: float = Field(default=1.0, gt=0.0, le=10.0)
    listening_distance_m: float | None = Field(default=None, gt=0.0, le=50.0)

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        per_v, per_mw = self.sensitivity_db_spl_per_v, self.sensitivity_db_spl_per_mw
        if (per_v is None) == (per_mw is None):
            raise ValueError(
                "give exactly one of sensitivity_db_spl_per_v, sensitivity_db_spl_per_mw"
            )
        if per_mw is not None and self.impedance_ohm is None:
            raise ValueError("impedance_ohm is needed with sensitivity_db_spl_per_mw")
        if self.output == "speaker" and self.listening_distance_m is None:
            raise ValueError("listening_distance_m is needed for a speaker output")
        if self.output == "headphones" and self.listening_distance_m is not None:
            raise ValueError("listening_distance_m applies to speakers only")
        self._plausible()
        return self

    def _plausible(self) -> None:
        """The sensitivity and the full-scale level within what real chains have (see above)."""
        if self.sensitivity_db_spl_per_v is not None:
            given = f"sensitivity_db_spl_per_v = {self.sensitivity_db_spl_per_v:g}"
        else:
            given = (
                f"sensitivity_db_spl_per_mw = {self.sensitivity_db_spl_per_mw:g} at "
                f"impedance_ohm = {self.impedance_ohm:g}: "
                f"{self.sensitivity_per_volt:.1f} dB SPL per volt"
            )
        low, high = PLAUSIBLE_SENSITIVITY_PER_V[self.output]
        if not low <= self.sensitivity_per_volt <= high:
            raise PydanticCustomError(
                "implausible_calibration",
                f"{given} is not a plausible {self.output} sensitivity ({low:g}–{high:g} dB SPL "
                "per volt); check the unit (per volt or per milliwatt) and the value",
            )
        full_scale = self.spl_at_unit_rms - _SINE_CREST_DB
        low, high = PLAUSIBLE_FULL_SCALE_SPL
        if not low <= full_scale <= high:
            distance = (
                f", listening_distance_m = {self.listening_distance_m:g}"
                if self.listening_distance_m is not None
                else ""
            )
            raise PydanticCustomError(
                "implausible_calibration",
                f"a full-scale sine would be {full_scale:.1f} dB SPL at the ear "
                f"(dac_full_scale_vrms = {self.dac_full_scale_vrms:g}, amplifier_gain_db = "
                f"{self.amplifier_gain_db:g}, {given}{distance}); a listening chain is "
                f"{low:g}–{high:g} dB SPL at full scale: check the gain and the sensitivity",
            )

    @property
    def sensitivity_per_volt(self) -> float:
        """dB SPL for 1 V rms at the transducer (at the reference distance for speakers)."""
        if self.sensitivity_db_spl_per_v is not None:
            return self.sensitivity_db_spl_per_v
        assert self.sensitivity_db_spl_per_mw is not None and self.impedance_ohm is not None
        return self.sensitivity_db_spl_per_mw + 10.0 * math.log10(1000.0 / self.impedance_ohm)

    @property
    def spl_at_unit_rms(self) -> float:
        """dB SPL of a signal whose rms is 1.0 (0 dBFS): add a level in dBFS to get dB SPL."""
        distance = 0.0
        if self.listening_distance_m is not None:
            distance = 20.0 * math.log10(self.listening_distance_m / self.reference_distance_m)
        return (
            _SINE_CREST_DB
            + 20.0 * math.log10(self.dac_full_scale_vrms)
            + self.amplifier_gain_db
            + self.sensitivity_per_volt
            - distance
        )

    def spl_at_dbfs(self, dbfs: float) -> float:
        """dB SPL at the ear of one channel at ``dbfs`` (rms; A-weight first for dB(A))."""
        return dbfs + self.spl_at_unit_rms

    def dbfs_for_spl(self, spl: float) -> float:
        """The rms level in dBFS that gives ``spl`` dB SPL at the ear."""
        return spl - self.spl_at_unit_rms

    def volts_at_dbfs(self, dbfs: float) -> float:
        """rms volts at the transducer for a channel at ``dbfs``."""
        db = _SINE_CREST_DB + 20.0 * math.log10(self.dac_full_scale_vrms) + self.amplifier_gain_db
        return float(10.0 ** ((dbfs + db) / 20.0))


def load_calibration_toml(text: str, source: str = "calibration") -> Calibration:
    """Parse and validate a calibration profile; ``ConfigError`` names the line or the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    try:
        return Calibration.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def load_calibration_file(path: Path) -> Calibration:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read calibration file {path}: {exc.strerror or exc}") from None
    return load_calibration_toml(text, str(path))


def packaged_calibration(name: str = DEFAULT_CALIBRATION) -> Path:
    """Path of a calibration shipped with the package (the demo's and the tests' reference)."""
    path = Path(str(files("resonera.engine").joinpath("calibrations", f"{name}.toml")))
    if not path.exists():
        raise ConfigError(f"no packaged calibration named {name!r}")
    return path


def default_calibration() -> Calibration:
    """The packaged ``DEFAULT_CALIBRATION``: what renders and previews are held to without one."""
    return load_calibration_file(packaged_calibration(DEFAULT_CALIBRATION))
