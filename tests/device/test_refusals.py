"""Why a session cannot start (``device/refusals.py``): each reason from the facts that cause it,
the order they are weighed in, why a session stopped, and the README's table against the code's
(code, light, words), so the two cannot drift."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from resonera.common import serial_link as sl
from resonera.device.prompt_catalogue import CATALOGUE
from resonera.device.refusals import (
    CLOCK_FLOOR,
    MIN_FREE_BYTES,
    REASONS,
    PlayFacts,
    StoppedFacts,
    why_cannot_play,
    why_it_stopped,
)

README = Path(__file__).parents[2] / "device" / "README.md"
HEALTHY = PlayFacts(now=CLOCK_FLOOR + 86400.0, free_bytes=10 * MIN_FREE_BYTES)

#: Each reason and facts that cause it on an otherwise healthy device.
CAUSES: dict[str, dict[str, Any]] = {
    "updating": {"updating": True},
    "shut_out_revoked": {"shut_out": "revoked", "shut_out_reason": "certificate revoked"},
    "shut_out_expired": {"shut_out": "expired"},
    "shut_out_quarantined": {"shut_out": "quarantined"},
    "storage_full": {"free_bytes": MIN_FREE_BYTES - 1},
    "clock_untrusted": {"now": 0.0},
    "headphones_unplugged": {"headphones": False},
    "hardware_fault": {"fault": sl.FAULT_OVER_TEMPERATURE},
    "nothing_assigned": {"assigned": ()},
    "program_refused": {"program_refused": "no program called 'x' is prescribed"},
    "daily_limit": {"daily_limit": "6 session(s) a day is the limit"},
    "dose_reached": {"dose_fraction": 1.0},
}


def test_a_healthy_device_may_play() -> None:
    assert why_cannot_play(HEALTHY) is None
    assert why_cannot_play(replace(HEALTHY, fault=sl.FAULT_DEVICE_REQUEST)) is None  # a mute
    assert why_cannot_play(replace(HEALTHY, dose_fraction=1.5, refuse_over_allowance=False)) is None


@pytest.mark.parametrize("code", sorted(CAUSES))
def test_each_reason_is_refused_with_its_prompt_and_light(code: str) -> None:
    refused = why_cannot_play(replace(HEALTHY, **CAUSES[code]))
    assert refused is not None and refused.code == code
    assert refused.message.startswith(CATALOGUE["en"][refused.reason.prompt])
    assert all(refused.reason.prompt in CATALOGUE[language] for language in CATALOGUE)


def test_the_reason_said_is_the_first_in_the_tables_order() -> None:
    codes = [code for code in REASONS if code in CAUSES]
    assert codes == list(CAUSES)
    for i, first in enumerate(codes):
        for later in codes[i + 1 :]:
            both = replace(HEALTHY, **{**CAUSES[later], **CAUSES[first]})
            refused = why_cannot_play(both)
            assert refused is not None and refused.code == first, (first, later)


def test_the_clock_is_untrusted_before_the_release_or_behind_the_newest_record() -> None:
    assert why_cannot_play(replace(HEALTHY, records_after_now=True)) is not None
    refused = why_cannot_play(replace(HEALTHY, now=CLOCK_FLOOR - 1))
    assert refused is not None and "before this software was released" in refused.detail


def test_why_a_session_stopped() -> None:
    assert why_it_stopped(StoppedFacts("completed")) is None
    assert why_it_stopped(StoppedFacts("stopped", "stopped by the person")) is None
    lowered = why_it_stopped(StoppedFacts("stopped", "lowered", limits_lowered=True))
    assert lowered is not None and lowered.code == "limits_lowered"
    dose = why_it_stopped(StoppedFacts("stopped", "100 % of the allowance", dose_stop=True))
    assert dose is not None and dose.code == "dose_reached"
    unplugged = why_it_stopped(StoppedFacts("fault", fault=sl.FAULT_HEADPHONES_UNPLUGGED))
    assert unplugged is not None and unplugged.code == "headphones_unplugged"
    hot = why_it_stopped(StoppedFacts("fault", "amplifier over temperature"))
    assert hot is not None and hot.reason.light == sl.LIGHT_FAULT


def readme_table() -> dict[str, tuple[str, str]]:
    """The README's "What the device says and shows" table: code → (light, words)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## What the device says and shows", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \| .* \| `(\w+)`[^|]* \| (.+) \|$", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    return rows


def test_the_readme_table_is_the_codes_table() -> None:
    expected = {
        reason.code: (sl.LIGHT_NAMES[reason.light], reason.words) for reason in REASONS.values()
    }
    assert readme_table() == expected
