from __future__ import annotations

from resonera.device.safety.earcup import EarCupCheck


def test_a_sustained_disagreement_is_a_fault_a_brief_one_is_not() -> None:
    check = EarCupCheck(tolerance_db=6.0, sustain_s=3)
    assert check.second(70.0, 72.0) is None
    assert check.second(70.0, 80.0) is None  # one second off
    assert check.second(70.0, 71.0) is None  # back in line: the count restarts
    assert check.second(70.0, 79.0) is None
    assert check.second(70.0, 79.5) is None
    reason = check.second(70.0, 80.0)
    assert reason is not None and "louder" in reason and "calibration" in reason


def test_no_sensor_or_quiet_sound_is_no_comparison() -> None:
    check = EarCupCheck(sustain_s=1)
    assert check.second(70.0, None) is None
    assert check.second(40.0, 20.0) is None
    assert check.second(70.0, 50.0) is not None
