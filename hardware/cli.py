"""``resonera-hwsim``: run the simulated safety MCU on a pseudo-terminal until SIGTERM or SIGINT.

The device (or a person with a serial tool) opens the printed path as it would the real UART.
``--link-file`` writes that path to a file once the simulator is ready (atomically, so a reader
never sees half a path) and removes it at exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from resonera.common.cli import run_cli
from resonera.hardware.firmware import config as board_config
from resonera.hardware.sim import Simulator

PROG = "resonera-hwsim"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Simulated Resonera safety MCU: the real firmware logic on a pseudo-terminal.",
    )
    parser.add_argument(
        "--link-file",
        type=Path,
        help="write the pty path to this file once ready (removed at exit)",
    )
    parser.add_argument("--config", type=Path, help="board configuration (JSON)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


def serve(args: argparse.Namespace) -> int:
    config = (
        board_config.load(str(args.config))
        if args.config is not None
        else board_config.BoardConfig()
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    link_file: Path | None = args.link_file
    try:
        with Simulator(config) as sim:
            if link_file is not None:
                _write_atomically(link_file, sim.port_path + "\n")
            print(f"{PROG}: serving on {sim.port_path}", flush=True)
            while not stop.wait(0.2):
                if sim.error is not None:
                    print(f"{PROG}: error: simulator stopped: {sim.error}", file=sys.stderr)
                    return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if link_file is not None:
            link_file.unlink(missing_ok=True)
    print(f"{PROG}: stopped", flush=True)
    return 0


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
