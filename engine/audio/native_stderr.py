"""What the sound libraries print while PortAudio probes, summarised in one log line.

``pyaudio.PyAudio()`` and listing its devices make ALSA and JACK write to file descriptor 2
directly, from C: about a hundred lines on a machine without a sound card or server ("ALSA lib
confmisc.c:855:(parse_card) cannot find card '0'", "jack server is not running or cannot be
started", ...), which neither ``sys.stderr`` nor logging can stop. ``quiet_native_stderr`` points
fd 2 at a temporary file for the duration (children started meanwhile inherit it), puts it back,
and logs one INFO line instead, once per process and ``what`` (every probe prints the same lines):
``PortAudio probe: 97 ALSA/JACK messages hidden (first: ...); run with -v to see them``.

Only lines recognised as the sound libraries' are hidden; anything else written to fd 2 meanwhile
(another thread's log line, a warning) is written to stderr afterwards, unchanged. With ``-v`` (this
module's logger enabled for DEBUG) fd 2 is left alone. fd 2 belongs to the whole process: one
capture at a time (a lock), and a capture inside another on the same thread joins the outer one.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import ClassVar, Final

log = logging.getLogger(__name__)

#: How ALSA, JACK and PortAudio's ALSA host API begin the lines they write to stderr.
SOUND_LIBRARY_PREFIXES: Final = (
    "ALSA lib ",
    "Jack",
    "jack",
    "Cannot connect to server",
    "connect(2) call to",
    "attempt to connect to server failed",
    "Expression '",  # PortAudio: Expression '...' failed in 'src/hostapi/alsa/pa_linux_alsa.c'
)


@dataclass
class NativeStderr:
    """What one capture saw, filled in when it ends."""

    hidden: list[str] = field(default_factory=list)
    passed_on: list[str] = field(default_factory=list)


class _Fd2:
    """The process's fd 2: one capture at a time (``depth`` counts nested ones on its thread)."""

    lock: ClassVar[threading.RLock] = threading.RLock()
    depth: ClassVar[int] = 0
    reported: ClassVar[set[str]] = set()


def is_sound_library_line(line: str) -> bool:
    return not line.strip() or line.startswith(SOUND_LIBRARY_PREFIXES)


@contextmanager
def quiet_native_stderr(
    what: str = "PortAudio probe", *, show: bool | None = None
) -> Iterator[NativeStderr]:
    """Hide what C code writes to fd 2 inside the ``with`` (see the module's docstring).

    ``show``: leave fd 2 alone; by default, when this module's logger is enabled for DEBUG (-v).
    """
    result = NativeStderr()
    if show is None:
        show = log.isEnabledFor(logging.DEBUG)
    if show:
        yield result
        return
    with _Fd2.lock:
        if _Fd2.depth:  # nested: the outer capture takes it
            _Fd2.depth += 1
            try:
                yield result
            finally:
                _Fd2.depth -= 1
            return
        _flush_stderr()
        saved = _dup_stderr()
        if saved is None:  # no fd 2 at all: nothing to hide
            yield result
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            _Fd2.depth = 1
            try:
                yield result
            finally:
                _Fd2.depth = 0
                _flush_stderr()  # Python's own writes meanwhile belong to the capture too
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                _report(what, capture.read().decode(errors="replace"), result)


def _dup_stderr() -> int | None:
    try:
        return os.dup(2)
    except OSError:
        return None


def _flush_stderr() -> None:
    if sys.stderr is not None:
        with suppress(OSError, ValueError):
            sys.stderr.flush()


def _report(what: str, text: str, result: NativeStderr) -> None:
    for line in text.splitlines():
        (result.hidden if is_sound_library_line(line) else result.passed_on).append(line)
    if result.passed_on and sys.stderr is not None:
        sys.stderr.write("".join(line + "\n" for line in result.passed_on))
        _flush_stderr()
    messages = [line.strip() for line in result.hidden if line.strip()]
    if messages and what not in _Fd2.reported:
        _Fd2.reported.add(what)
        log.info(
            "%s: %d ALSA/JACK message%s hidden (first: %s); run with -v to see them",
            what,
            len(messages),
            "" if len(messages) == 1 else "s",
            messages[0],
        )
