"""``resonera``: the whole stack on one machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from resonera.common.cli import run_cli
from resonera.stack.demo import DemoOptions, run_demo


def _demo(args: argparse.Namespace) -> int:
    sessions = run_demo(
        DemoOptions(
            workdir=args.workdir,
            program=args.program,
            broker=args.broker,
            keep_running=args.keep_running,
            sink=args.sink,
        )
    )
    return 0 if sessions else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resonera", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run broker, server, MCU simulator and a device; play and sync"
    )
    demo.add_argument("--workdir", type=Path, default=Path("demo-output"))
    demo.add_argument("--program", default="demo-alpha")
    demo.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    demo.add_argument("--sink", choices=["auto", "pyaudio", "wav", "null"], default="auto")
    demo.add_argument("--keep-running", action="store_true", help="keep the stack up afterwards")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
