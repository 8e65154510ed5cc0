"""``resonera-device run`` (the long-running service) and the commands that talk to it through its
control socket (``data_dir/run.sock``): ``play --via-service``, ``stop`` and the live part of
``status``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from resonera.device.cli_args import resolve_program, settings_from_args
from resonera.device.memory import limit_native_heap

if TYPE_CHECKING:
    from resonera.device.settings import DeviceSettings

# ``resonera.device.service`` (the agent: store, sync, monitor, panel; 392 ms and 19 MB measured,
# paho, pyserial and cryptography among them) is imported by each command here that uses it, so
# that the other commands, ``render`` first, start without it.


def run_command(args: argparse.Namespace) -> int:
    limit_native_heap()  # before the service's threads start: each would get a malloc arena
    from resonera.device.service import DeviceService  # the agent: see the note above

    overrides: dict[str, Any] = {}
    if args.simulation:
        overrides["simulation"] = True
    if args.sink is not None:
        overrides["sink"] = args.sink
    settings = settings_from_args(args, **overrides)
    return DeviceService(settings, resolve_program).run()


def _answered(reply: str) -> int:
    """Print the service's reply to a command without its ``ok``/``error`` word; the exit code."""
    print(reply.removeprefix("ok ").removeprefix("error "))
    return 0 if reply.startswith("ok") else 1


def play_via_service_command(args: argparse.Namespace) -> int:
    from resonera.device.service import send_command  # the agent: see the note above

    settings = settings_from_args(args)
    spec = (
        args.program
        or args.program_option
        or (str(args.program_file) if args.program_file else None)
    )
    # no program named: the service plays the first prescribed (or, if allowed, its default)
    return _answered(send_command(settings.control_socket_path, f"play {spec or ''}".strip()))


def stop_command(args: argparse.Namespace) -> int:
    from resonera.device.service import send_command  # the agent: see the note above

    return _answered(send_command(settings_from_args(args).control_socket_path, "stop"))


def service_status(settings: DeviceSettings) -> dict[str, Any] | None:
    """What the running service says of itself, or None when none answers."""
    from resonera.device.service import ServiceUnavailable, send_command  # see the note above

    try:
        reply = send_command(settings.control_socket_path, "status", timeout_s=2.0)
    except (ServiceUnavailable, OSError):
        return None
    try:
        value = json.loads(reply)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
