"""How ``resonera-device``'s commands print: one JSON document for ``--json`` (times ISO 8601 in
UTC), and a quiet end when the reader of the output leaves early (``status | head -1``)."""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Command = Callable[[argparse.Namespace], int]

#: The exit status of a process ended by SIGPIPE, as a shell reports it (128 + 13): what ``cat`` or
#: ``grep`` give when their reader has gone.
EXIT_READER_GONE = 141


class ReaderGone(Exception):
    """The reader of standard output closed it before the command had printed all.

    Not an ``OSError``: ``run_cli`` turns those into an error line, and this is no error."""


def iso_utc(when: datetime | None) -> str | None:
    """A time for a JSON document: ISO 8601 in UTC (``2026-12-07T02:50:04.123456+00:00``)."""
    return None if when is None else when.astimezone(UTC).isoformat()


def print_json(document: dict[str, Any]) -> None:
    """One JSON document on standard output (keys in the order the command built them)."""
    print(json.dumps(document, indent=2, ensure_ascii=False))


def ends_quietly(command: Command) -> Command:
    """``command``, whose end is quiet when standard output's reader leaves early: its output is
    flushed before it returns (so nothing is left for the interpreter's exit to fail on), and a
    broken pipe on standard output becomes ``ReaderGone`` (``main`` then exits 141, no traceback)."""

    def run(args: argparse.Namespace) -> int:
        try:
            code = command(args)
            sys.stdout.flush()
        except BrokenPipeError:
            if not _stdout_reader_gone():
                raise  # a pipe or socket of the command's own: a real error
            raise ReaderGone from None
        return code

    run.__name__ = run.__qualname__ = getattr(command, "__name__", "command")
    run.__doc__ = command.__doc__
    return run


def leave_quietly() -> int:
    """After ``ReaderGone``: point standard output at ``/dev/null`` (the interpreter's exit flushes
    it again, which would fail anew) and give the exit status of a tool ended by SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return EXIT_READER_GONE


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll: ``POLLERR`` on the
    write end of a pipe without readers)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # no descriptor (stdout replaced or closed): not a pipe of ours
        return False
