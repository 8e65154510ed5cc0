"""What counts as "a session" for adherence and for the clinician's daily session limit.

A session counts when it played at least the profile's ``counted_session_min_s`` seconds (default
60) OR at least ``counted_session_min_fraction`` of its planned length (default 10 %): an
accidental 0.05 s start stopped at once is no session, a short program played through is one.
The device's daily limit (``device/session.py``) and the server's adherence (the daily roll-up,
``server/dose_rollup.py``) both ask ``counts_as_session``. The dose is another matter: every
second played counts toward it, whatever the session's length (the dose ledger adds every block).
"""

from __future__ import annotations

from typing import Final

from pydantic import ValidationError

from resonera.common.profile import HearingProfile

#: The profile settings that say what counts as a session.
COUNTING_SETTINGS: Final = ("counted_session_min_s", "counted_session_min_fraction")


def counts_as_session(played_s: float, planned_s: float, profile: HearingProfile) -> bool:
    """True when a session that played ``played_s`` of ``planned_s`` seconds counts."""
    if not played_s > 0:  # NaN or nothing played
        return False
    if played_s >= profile.counted_session_min_s:
        return True
    return planned_s > 0 and played_s >= profile.counted_session_min_fraction * planned_s


def counting_profile(stored: object) -> HearingProfile:
    """A profile carrying what counts as a session in ``stored`` (a profile as a server keeps it:
    a JSON object, maybe partial); the defaults for what it does not set or sets wrong."""
    settings = (
        {k: stored[k] for k in COUNTING_SETTINGS if k in stored} if isinstance(stored, dict) else {}
    )
    try:
        return HearingProfile.model_validate(settings)
    except ValidationError:
        return HearingProfile()
