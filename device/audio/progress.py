"""A progress display for play and render: a redrawn bar on a terminal, plain lines otherwise.

On a TTY one line is redrawn (``\\r``) at most every ``refresh_s`` of wall-clock time: a bar, the
elapsed and remaining program time, the current step and the level. When the output is not a
terminal (a log, a pipe, CI) it prints a plain line every ``line_every_s`` of program time and at
each step change instead, so logs stay readable. ``finish()`` ends the line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "clock"]


def clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    def __init__(
        self,
        total_s: float,
        *,
        steps: int,
        stream: TextIO | None = None,
        tty: bool | None = None,
        width: int = 24,
        refresh_s: float = 0.1,
        line_every_s: float = 10.0,
        verb: str = "playing",
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.total_s = total_s
        self.steps = steps
        self.width = width
        self.refresh_s = refresh_s
        self.line_every_s = line_every_s
        self.verb = verb
        self._last_draw = -1e9
        self._last_line_at = -1e9
        self._last_step: int | None = None
        self._drawn = False
        self._started = time.monotonic()

    def _text(self, position_s: float, step: int | None, label: str, level: str | None) -> str:
        fraction = min(1.0, position_s / self.total_s) if self.total_s > 0 else 1.0
        parts = [
            f"{clock(position_s)} / {clock(self.total_s)}",
            f"left {clock(self.total_s - position_s)}",
        ]
        if step is not None:
            parts.append(f"step {step + 1}/{self.steps}" + (f" {label}" if label else ""))
        if level is not None:
            parts.append(level)
        if self.verb == "rendering":
            wall = time.monotonic() - self._started
            if wall > 0:
                parts.append(f"{position_s / wall:.0f}x real time")
        if self.tty:
            filled = round(fraction * self.width)
            bar = "█" * filled + "░" * (self.width - filled)
            return f"\r{bar} {fraction * 100:3.0f}%  " + "  ".join(parts)
        return f"{self.verb}: {fraction * 100:3.0f}%  " + "  ".join(parts)

    def update(
        self, position_s: float, step: int | None = None, label: str = "", level: str | None = None
    ) -> None:
        """Show progress; cheap to call on every block (it draws only when due)."""
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw < self.refresh_s:
                return
            self._last_draw = now
            self.stream.write(self._text(position_s, step, label, level) + "\x1b[K")
            self.stream.flush()
            self._drawn = True
            return
        step_changed = step is not None and step != self._last_step
        if step_changed or position_s - self._last_line_at >= self.line_every_s:
            self._last_line_at = position_s
            self._last_step = step
            print(self._text(position_s, step, label, level), file=self.stream, flush=True)

    def finish(self, position_s: float, level: str | None = None) -> None:
        if self.tty:
            self._last_draw = -1e9
            self.update(position_s, None, "", level)
            self.stream.write("\n")
            self.stream.flush()
        else:
            print(self._text(position_s, None, "", level), file=self.stream, flush=True)
