"""Every console script logs alike (``common.cli.setup_logging``): our loggers from INFO, libraries'
from WARNING, everything from DEBUG with -v. In a fresh interpreter: logging is process-wide."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, sys
from resonera.common.cli import setup_logging
setup_logging(verbose=sys.argv[1] == "-v")
for name in ("resonera.device.sync", "amqtt.broker", "transitions.core", "alembic", "root"):
    logger = logging.getLogger(name if name != "root" else None)
    for level in ("debug", "info", "warning"):
        getattr(logger, level)("%s %s", name, level)
"""


def logged(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, check=True
    )
    assert done.stdout == ""
    return [line.split(": ", 1)[1] for line in done.stderr.splitlines()]


def test_ours_from_info_libraries_from_warning() -> None:
    assert logged("") == [
        "resonera.device.sync info",
        "resonera.device.sync warning",
        "amqtt.broker warning",
        "transitions.core warning",
        "alembic warning",
        "root warning",
    ]


def test_verbose_shows_everything_from_debug() -> None:
    lines = logged("-v")
    for name in ("resonera.device.sync", "amqtt.broker", "transitions.core", "alembic", "root"):
        assert [line for line in lines if line.startswith(name + " ")] == [
            f"{name} debug",
            f"{name} info",
            f"{name} warning",
        ]
