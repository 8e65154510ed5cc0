"""What C code writes to fd 2 during a PortAudio probe is hidden and summarised in one log line
(``engine/audio/native_stderr.py``): real fd 2 writes, from this process through libc and from a
child process, seen through pytest's fd-level capture."""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
import threading

import pytest

from resonera.engine.audio.native_stderr import quiet_native_stderr

LOGGER = "resonera.engine.audio.native_stderr"
ALSA = "ALSA lib confmisc.c:855:(parse_card) cannot find card '0'"
JACK = "jack server is not running or cannot be started"


# Sound alone, no dates: left out of the faketime pass (make pytest-future).
pytestmark = pytest.mark.dateless


def c_write_stderr(text: str) -> None:
    """write(2, ...) through libc, as ALSA does: below sys.stderr and logging."""
    data = text.encode()
    assert ctypes.CDLL(None).write(2, data, len(data)) == len(data)


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_c_level_writes_of_this_process_and_a_child_are_hidden_and_summarised(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with quiet_native_stderr("probe one", show=False) as seen:
        c_write_stderr(f"{ALSA}\n\n")
        subprocess.run(["sh", "-c", f"echo '{JACK}' >&2"], check=True)
    c_write_stderr("after the probe\n")

    assert capfd.readouterr().err == "after the probe\n"  # fd 2 is back, nothing leaked
    assert seen.hidden == [ALSA, "", JACK]
    assert seen.passed_on == []
    assert summaries(caplog) == [
        f"probe one: 2 ALSA/JACK messages hidden (first: {ALSA}); run with -v to see them"
    ]


def test_other_lines_written_meanwhile_reach_stderr_afterwards(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with quiet_native_stderr("probe two", show=False) as seen:
        c_write_stderr(f"{ALSA}\n")
        print("a warning of our own", file=sys.stderr)
        c_write_stderr("something else entirely\n")

    assert capfd.readouterr().err == "a warning of our own\nsomething else entirely\n"
    assert seen.hidden == [ALSA]
    assert summaries(caplog) == [
        f"probe two: 1 ALSA/JACK message hidden (first: {ALSA}); run with -v to see them"
    ]


def test_the_summary_comes_once_per_process_and_nothing_without_messages(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with quiet_native_stderr("probe three", show=False):
        pass
    for _ in range(2):
        with quiet_native_stderr("probe three", show=False):
            c_write_stderr(f"{JACK}\n")
    assert capfd.readouterr().err == ""
    assert len(summaries(caplog)) == 1


def test_verbose_leaves_fd_2_alone(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)  # what -v does: the default is then to show
    with quiet_native_stderr("probe four") as seen:
        c_write_stderr(f"{ALSA}\n")
    assert capfd.readouterr().err == f"{ALSA}\n"
    assert seen.hidden == []
    assert summaries(caplog) == []


def test_a_nested_capture_joins_the_outer_one(capfd: pytest.CaptureFixture[str]) -> None:
    with quiet_native_stderr("probe five", show=False) as outer:
        c_write_stderr(f"{ALSA}\n")
        with quiet_native_stderr("probe five", show=False) as inner:
            c_write_stderr(f"{JACK}\n")
        c_write_stderr(f"{ALSA}\n")
    assert outer.hidden == [ALSA, JACK, ALSA]
    assert inner.hidden == []
    assert capfd.readouterr().err == ""


def test_captures_on_several_threads_take_turns_each_seeing_its_own_lines(
    capfd: pytest.CaptureFixture[str],
) -> None:
    seen: dict[int, list[str]] = {}
    start = threading.Barrier(4)

    def probe(n: int) -> None:
        start.wait()
        for _ in range(20):
            with quiet_native_stderr("probe six", show=False) as captured:
                c_write_stderr(f"ALSA lib thread {n} a\n")
                c_write_stderr(f"ALSA lib thread {n} b\n")
            seen.setdefault(n, []).extend(captured.hidden)

    threads = [threading.Thread(target=probe, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(4):
        assert seen[n] == [f"ALSA lib thread {n} a", f"ALSA lib thread {n} b"] * 20
    assert capfd.readouterr().err == ""
