"""The progress display: a redrawn bar on a terminal, plain lines in a log."""

from __future__ import annotations

import io

from resonera.device.audio.progress import Progress, clock


def test_clock_formats_minutes_and_hours() -> None:
    assert clock(0) == "00:00"
    assert clock(75.4) == "01:15"
    assert clock(3725) == "1:02:05"


def test_on_a_terminal_one_line_is_redrawn() -> None:
    out = io.StringIO()
    progress = Progress(120.0, steps=3, stream=out, tty=True, refresh_s=0.0)
    progress.update(30.0, 0, "settle", "62.0 dB(A) SPL")
    progress.update(60.0, 1, "deepen", "61.5 dB(A) SPL")
    progress.finish(120.0)
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "█" in text and " 25%" in text and "step 2/3 deepen" in text
    assert "left 01:00" in text and "61.5 dB(A) SPL" in text


def test_in_a_log_lines_come_at_step_changes_and_every_interval() -> None:
    out = io.StringIO()
    progress = Progress(100.0, steps=2, stream=out, tty=False, line_every_s=10.0)
    for tenth in range(0, 1000, 5):  # every half second of program time
        position = tenth / 10
        progress.update(position, 0 if position < 42 else 1, "")
    progress.finish(100.0)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert all(line.startswith("playing: ") for line in lines)
    # 0, 10, 20, 30, 40, the step change at 42, 52, ..., 92, then the final line.
    assert len(lines) == 12
    assert "step 2/2" in lines[5]
