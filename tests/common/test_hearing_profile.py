from __future__ import annotations

import pytest

from resonera.common.errors import ConfigError
from resonera.common.profile import HearingProfile, parse_profile


def test_defaults_follow_the_safety_reference() -> None:
    profile = HearingProfile()
    assert profile.max_level_dba == 85.0
    assert profile.dose_mode == 1
    assert profile.fallback_level_dba == 75.0
    assert profile.max_session_s == 3 * 3600


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"max_level_dba": 95}, "max_level_dba"),
        ({"max_level_dba": 70, "fallback_level_dba": 75}, "fallback_level_dba (75.0) is above"),
        ({"carrier_hz": {"low": 20, "high": 500}}, "may only narrow"),
        ({"beat_hz": {"low": 10, "high": 4}}, "is above high"),
        ({"dose_mode": 3}, "dose_mode"),
        ({"max_session_s": 20000}, "max_session_s"),
        ({"volume": 11}, "volume"),
        ({"max_level_dba": float("nan")}, "max_level_dba"),
    ],
)
def test_profiles_outside_the_safe_bounds_are_refused(
    data: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_profile(data, source="desired state")
    assert complaint in str(info.value)
    assert str(info.value).startswith("desired state:")
