"""Synthesis ahead on its own thread (renders): the same samples, the consumer's position, clean ends."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from resonera.common.program import BUILTIN_PROGRAMS
from resonera.engine.audio.readahead import ReadAheadRenderer
from resonera.engine.audio.synth import ProgramRenderer

RATE = 44_100
PROGRAM = BUILTIN_PROGRAMS["demo-alpha"]


# Sound alone, no dates: left out of the faketime pass (make pytest-future).
pytestmark = pytest.mark.dateless


@settings(max_examples=15, deadline=None)
@given(
    ahead_block=st.integers(64, 20_000),
    asked=st.lists(st.integers(1, 30_000), min_size=1, max_size=6),
)
def test_the_samples_are_the_renderers_whatever_the_sizes(
    ahead_block: int, asked: list[int]
) -> None:
    reference = ProgramRenderer(PROGRAM, RATE)
    blocks = []
    while not reference.done:
        blocks.append(reference.render(ahead_block))
    whole = np.concatenate(blocks)[: reference.total_frames]
    parts = []
    with ReadAheadRenderer(ProgramRenderer(PROGRAM, RATE), ahead_block) as ahead:
        i = 0
        while not ahead.done:
            parts.append(ahead.render(asked[i % len(asked)]))
            i += 1
        assert ahead.position_frames == reference.total_frames
        assert not ahead.render(100).any()  # silence past the end, as the renderer gives
    out = np.concatenate(parts)
    np.testing.assert_array_equal(out[: len(whole)], whole)
    assert not out[len(whole) :].any()


def test_position_and_step_are_those_of_the_frames_taken_not_of_those_made_ahead() -> None:
    renderer = ProgramRenderer(PROGRAM, RATE)
    with ReadAheadRenderer(renderer, 4096, depth=3) as ahead:
        ahead.render(4096)
        while renderer.position_frames < 4 * 4096:  # the thread has made its blocks ahead
            threading.Event().wait(0.001)
        assert ahead.position_frames == 4096
        assert ahead.position_s == pytest.approx(4096 / RATE)
        assert ahead.remaining_frames == renderer.total_frames - 4096
        assert ahead.step_index == 0
        while ahead.position_s < 1.6:
            ahead.render(4096)
        assert ahead.step_index == 1


def test_leaving_early_stops_the_thread() -> None:
    ahead = ReadAheadRenderer(ProgramRenderer(PROGRAM, RATE), 1024)
    ahead.render(1024)
    ahead.close()
    assert not any(t.name == "resonera-synth" for t in threading.enumerate())


def test_an_error_in_synthesis_reaches_the_caller() -> None:
    class Failing(ProgramRenderer):
        def render(self, frames: int) -> NDArray[np.float32]:
            raise MemoryError("no room for the block")

    with (
        ReadAheadRenderer(Failing(PROGRAM, RATE), 1024) as ahead,
        pytest.raises(MemoryError, match="no room"),
    ):
        ahead.render(1024)
