"""``resonera-provision``: admin tooling."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resonera.common.cli import run_cli
from resonera.provisioning.broker import BrokerConfig


def _broker_config(args: argparse.Namespace) -> int:
    config = BrokerConfig(port=args.port, bind=args.bind, persistence_dir=args.persistence_dir)
    if args.out is None:
        sys.stdout.write(config.render())
    else:
        config.write(args.out)
        print(f"wrote mosquitto configuration to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resonera-provision", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    broker = sub.add_parser("broker-config", help="write a mosquitto configuration")
    broker.add_argument("--port", type=int, default=1883)
    broker.add_argument("--bind", default="127.0.0.1")
    broker.add_argument("--persistence-dir", type=Path, default=None)
    broker.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    broker.set_defaults(func=_broker_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(parser, argv)
