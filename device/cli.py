"""``resonera-device``, the console script (``pyproject.toml``): :func:`main` parses the command line
(``cli_parser``) and runs the command it names. The commands live by concern: ``cli_playback``
(``play``, ``render``), ``cli_service`` (``run`` and what talks to it through its control socket),
``cli_status`` (``status``), ``cli_records`` (``history``, ``logs``, ``dose``, ``sync``),
``cli_standalone`` (``programs``, ``measure``, ``prompts build``, ``enroll``), ``cli_args`` (what
they share in reading their arguments) and ``cli_output`` (``--json``, a reader that leaves
early)."""

from __future__ import annotations

from resonera.common.cli import run_cli
from resonera.device.cli_args import resolve_program
from resonera.device.cli_output import ReaderGone, leave_quietly
from resonera.device.cli_parser import build_parser

# resolve_program is the device's one way from a name or path to a program: callers that play or
# check programs outside the command line (tests, a peer device) import it from here.
__all__ = ["build_parser", "main", "resolve_program"]


def main(argv: list[str] | None = None) -> int:
    try:
        return run_cli(build_parser(), argv)
    except ReaderGone:  # `resonera-device status | head -1`: end as cat or grep would, quietly
        return leave_quietly()
