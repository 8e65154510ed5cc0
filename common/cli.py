"""What every console script shares: one clear line per error, no tracebacks, a meaningful exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from resonera.common.errors import ResoneraError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and call ``args.func(args)``; our errors and OS errors become one line on stderr."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
