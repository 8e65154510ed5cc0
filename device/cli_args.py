"""What ``resonera-device``'s commands share in reading their arguments: the device's settings from
``--config``, and the program, a preset by name or a file by path."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resonera.common.program import Program, builtin_program, load_program_file

if TYPE_CHECKING:
    from resonera.device.settings import DeviceSettings

PROGRAM_SUFFIXES = (".toml", ".sbg")
#: What ``play`` plays when it is given no program.
DEFAULT_PROGRAM = "demo-alpha"


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> DeviceSettings:
    """The device's settings from ``--config``, with ``overrides`` from the command line."""
    # Imported here, not at the top: the settings load pydantic-settings and, through the device's
    # settings, cryptography (216 ms and 15 MB measured), which ``render`` without --config,
    # ``programs`` and ``measure`` never need.
    from resonera.common.settings import load_settings
    from resonera.device.settings import DeviceSettings

    return load_settings(DeviceSettings, args.config, **overrides)


def resolve_program(spec: str) -> Program:
    """A preset by name, or a ``.toml``/``.sbg`` file by path (checked before any sample)."""
    path = Path(spec)
    if path.suffix.lower() in PROGRAM_SUFFIXES or path.exists():
        return load_program_file(path)
    return builtin_program(spec)
