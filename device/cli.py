"""``resonera-device``, the console script (``pyproject.toml``): :func:`main` parses the command line
(``cli_parser``) and runs the command it names. The commands live by concern: ``cli_playback``
(``play``, ``render``), ``cli_service`` (``run`` and what talks to it through its control socket),
``cli_records`` (``status``, ``history``, ``logs``, ``dose``, ``sync``), ``cli_standalone``
(``programs``, ``measure``, ``prompts build``, ``enroll``) and ``cli_args`` (what they share in
reading their arguments)."""

from __future__ import annotations

from resonera.common.cli import run_cli
from resonera.device.cli_args import resolve_program
from resonera.device.cli_parser import build_parser

# resolve_program is the device's one way from a name or path to a program: callers that play or
# check programs outside the command line (tests, a peer device) import it from here.
__all__ = ["build_parser", "main", "resolve_program"]


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
