"""The engine reports what it can play, and a prescription it can play passes the shared check."""

from __future__ import annotations

import hashlib

from resonera.common.prescription import check_prescribed, prescribe
from resonera.common.profile import HearingProfile
from resonera.common.program import BUILTIN_PROGRAMS
from resonera.engine.capabilities import engine_capabilities, engine_version


def test_the_engine_names_every_layer_type_the_model_knows_and_plays_every_builtin() -> None:
    capabilities = engine_capabilities()
    assert set(capabilities.layer_types) == {
        "tone",
        "binaural",
        "monaural",
        "isochronic",
        "noise",
        "background",
    }
    assert 48000 in capabilities.sample_rates
    for name, program in BUILTIN_PROGRAMS.items():
        entry = prescribe(f"builtin-{name}", 1, program)
        assert check_prescribed(entry, HearingProfile(), capabilities) == program


def test_the_version_is_the_release_and_a_hash_of_the_code() -> None:
    release, _, code = engine_version().partition("+")
    assert release
    assert len(code.split("+")[-1]) == 12
    held = hashlib.sha256(b"x").hexdigest()
    assert engine_capabilities([held, held]).backgrounds == (held,)
