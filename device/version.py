"""The agent's version, from the installed package's metadata alone: light enough for every
command's ``--version`` (the agent itself, ``resonera.device.service``, loads paho, pyserial and
cryptography)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def agent_version() -> str:
    """The installed package's version (what the dashboard shows as the agent's)."""
    try:
        return version("resonera")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
