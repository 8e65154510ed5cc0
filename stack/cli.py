"""``resonera``: the whole stack on one machine."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from resonera.common.cli import run_cli
from resonera.stack.demo import DemoOptions, DemoStopped, run_demo


def _demo(args: argparse.Namespace) -> int:
    """0 when the server holds the session (a kept-up stack stopped by Ctrl-C, SIGTERM or SIGHUP
    included); stopped before that: 130 for Ctrl-C (``run_cli``), 128 + the signal's number for
    SIGTERM (143) and SIGHUP (129), the stack stopped either way."""
    try:
        sessions = run_demo(
            DemoOptions(
                workdir=args.workdir,
                program=args.program,
                broker=args.broker,
                keep_running=args.keep_running,
                sink=args.sink,
                verbose=args.verbose,
            )
        )
    except DemoStopped as stopped:
        print(f"resonera: stopped by {signal.Signals(stopped.signum).name}", file=sys.stderr)
        return 128 + stopped.signum
    return 0 if sessions else 1


def _fleet_sim(args: argparse.Namespace) -> int:
    # Here, not at the top: the fleet simulator (SQLAlchemy, the server's models) adds 0.7 s and
    # 19 MB to every `resonera` command (measured: `resonera demo` never needs it).
    from resonera.stack.fleet_sim import FleetSimOptions, run_fleet_sim

    run_fleet_sim(
        FleetSimOptions(
            devices=args.devices,
            sessions=args.sessions,
            consumers=args.consumers,
            interval_s=args.interval,
            workdir=args.workdir,
            timeout_s=args.timeout,
            broker=args.broker,
            ca=args.ca,
            database_url=args.database_url,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resonera", description=__doc__)
    verbose_help = "debug logs, libraries' included (the demo passes it on to every part)"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run broker, server, MCU simulator and a device; play and sync"
    )
    # also after `demo` (make demo DEMO_ARGS=-v); SUPPRESS keeps a -v given before it
    demo.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help
    )
    demo.add_argument("--workdir", type=Path, default=Path("demo-output"))
    demo.add_argument(
        "--program",
        default=None,
        help="what the device is asked to play (default: the program the demo prescribes)",
    )
    demo.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    demo.add_argument("--sink", choices=["auto", "pyaudio", "wav", "null"], default="auto")
    demo.add_argument("--keep-running", action="store_true", help="keep the stack up afterwards")
    demo.set_defaults(func=_demo)
    sim = sub.add_parser(
        "fleet-sim",
        help="many simulated devices (real device sync, certificates, TLS) against a local stack",
    )
    sim.add_argument("--devices", type=int, default=100)
    sim.add_argument("--sessions", type=int, default=5, help="sessions each device records")
    sim.add_argument("--consumers", type=int, default=1, help="ingest processes (shared)")
    sim.add_argument(
        "--interval", type=float, default=0.0, help="seconds between a device's sessions"
    )
    sim.add_argument("--workdir", type=Path, help="keep CA, broker, database here (new folder)")
    sim.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for acks")
    sim.add_argument(
        "--broker", metavar="HOST:PORT", help="a running broker instead of the local stack"
    )
    sim.add_argument("--ca", type=Path, help="with --broker: the fleet CA folder it trusts")
    sim.add_argument(
        "--database-url", help="with --broker: the server database to register devices in"
    )
    sim.set_defaults(func=_fleet_sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
