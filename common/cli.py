"""What every console script shares: one clear line per error, no tracebacks, a meaningful exit code,
and the same logging (``setup_logging``): our own lines, libraries only when something is wrong."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from resonera.common.errors import ResoneraError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Our loggers (``resonera.*``) log from INFO; every other logger is a library's.
OWN_LOGGER = "resonera"


def _is_library(record: logging.LogRecord) -> bool:
    return record.name != OWN_LOGGER and not record.name.startswith(OWN_LOGGER + ".")


class _LibrariesFromWarning(logging.Filter):
    """A library's record passes from WARNING up: amqtt and transitions narrate every connection and
    state change at INFO, alembic its plugins, uvicorn each request; a newcomer needs none of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _is_library(record)


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: our loggers from INFO, libraries' (any other logger) from WARNING; with
    ``verbose`` (every console script's ``-v``) everything from DEBUG, libraries included.

    Like ``logging.basicConfig``, it leaves logging alone when the root logger already has a
    handler (a program or test that configured logging itself).
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    if not verbose:
        handler.addFilter(_LibrariesFromWarning())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and call ``args.func(args)``; our errors and OS errors become one line on stderr."""
    args = parser.parse_args(argv)
    setup_logging(verbose=bool(getattr(args, "verbose", False)))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ResoneraError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"{parser.prog}: error: {exc.strerror or exc}" + _filename(exc), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _filename(exc: OSError) -> str:
    return f": {exc.filename}" if exc.filename else ""
