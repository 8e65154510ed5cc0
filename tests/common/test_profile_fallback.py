"""The fallback level at 100 % of the weekly allowance lies below the dose mode's reference level
(issue 22, item 7): at the reference level itself the allowance keeps being used."""

from __future__ import annotations

import pytest

from resonera.common.dose import REFERENCE_DBA, dose_fraction
from resonera.common.errors import ConfigError
from resonera.common.profile import HearingProfile, default_fallback_dba, parse_profile

pytestmark = pytest.mark.dateless


def test_each_mode_has_its_own_default_fallback_below_its_reference() -> None:
    assert HearingProfile().fallback_level_dba == 75.0
    assert HearingProfile(dose_mode=2).fallback_level_dba == 70.0
    assert parse_profile({"dose_mode": 2}).fallback_level_dba == 70.0
    for mode in (1, 2):
        fallback = default_fallback_dba(mode)
        assert fallback < REFERENCE_DBA[mode]
        # an hour at the fallback uses under 1 % of the week, in its own mode
        assert dose_fraction(fallback, 3600.0, mode) < 0.01


@pytest.mark.parametrize(("mode", "level"), [(1, 80.0), (1, 85.0), (2, 75.0), (2, 78.0)])
def test_a_fallback_at_or_above_the_reference_level_is_refused_with_the_field(
    mode: int, level: float
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_profile({"dose_mode": mode, "fallback_level_dba": level}, source="desired state")
    message = str(info.value)
    assert message.startswith("desired state:")
    assert f"fallback_level_dba ({level:g} dBA) must be below dose mode {mode}" in message
    assert f"reference level ({REFERENCE_DBA[mode]:g} dBA)" in message


def test_a_fallback_below_the_reference_is_kept() -> None:
    assert parse_profile({"dose_mode": 2, "fallback_level_dba": 74.9}).fallback_level_dba == 74.9
    assert parse_profile({"fallback_level_dba": 40.0}).fallback_level_dba == 40.0
