"""The ear-cup check: where a microphone in the ear cup measures what reaches the ear, compare it each
second with the level the calibration predicts. A large disagreement, sustained, is a fault: a wrong
calibration is as dangerous as a loud program (docs/safety.md, "The hardware side").

Pure logic: fed one (predicted, measured) pair per second by the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Quieter than this the microphone's noise floor dominates: no comparison.
MIN_COMPARABLE_DBA = 50.0


@dataclass
class EarCupCheck:
    tolerance_db: float = 6.0
    sustain_s: int = 3
    _strikes: int = field(default=0, init=False)

    def second(self, predicted_dba: float, measured_dba: float | None) -> str | None:
        """The fault reason once the disagreement has lasted ``sustain_s`` seconds, else None."""
        if measured_dba is None or max(predicted_dba, measured_dba) < MIN_COMPARABLE_DBA:
            self._strikes = 0
            return None
        difference = measured_dba - predicted_dba
        if abs(difference) <= self.tolerance_db:
            self._strikes = 0
            return None
        self._strikes += 1
        if self._strikes < self.sustain_s:
            return None
        direction = "louder" if difference > 0 else "quieter"
        return (
            f"the ear-cup microphone measures {measured_dba:.1f} dBA where the calibration predicts "
            f"{predicted_dba:.1f} dBA ({abs(difference):.1f} dB {direction}, {self._strikes} s running): "
            "the calibration cannot be trusted"
        )
