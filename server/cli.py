"""``resonera-server``: run the server (API + ingest), or one part of it, or prepare the database.

Every error is one line on stderr and exit status 1 (``common.cli.run_cli``). SIGTERM and Ctrl-C
stop the server cleanly: ingest stores and acknowledges what it already received, then exits 0.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from resonera.common.cli import run_cli
from resonera.common.errors import ResoneraError
from resonera.common.settings import load_settings
from resonera.server.db import init_db, make_engine
from resonera.server.runner import ServerProcess, run_server_in_thread
from resonera.server.settings import ServerSettings

PROG = "resonera-server"

__all__ = ["ServerProcess", "build_parser", "main", "run_server_in_thread"]


def _load(args: argparse.Namespace) -> ServerSettings:
    path: Path | None = args.config
    return load_settings(ServerSettings, path)


def _source(args: argparse.Namespace) -> str:
    return f"config file {args.config}" if args.config is not None else "settings"


def _serve(args: argparse.Namespace, *, api: bool, ingest: bool) -> int:
    settings = _load(args)
    shown_token = False
    if api:
        shown_token = settings.api_token is None and settings.demo
        settings = settings.checked_for_start(_source(args))
    server = ServerProcess(settings, api=api, ingest=ingest)
    stop = _stop_on_signals()
    server.start()
    try:
        parts = []
        if api:
            line = f"{PROG}: API at {server.api_url}"
            if shown_token:
                line += f" (demo token: {server.settings.api_token_value()})"
            parts.append(line)
        if server.consumer is not None:
            mqtt = settings.mqtt
            parts.append(f"{PROG}: ingest from {mqtt.host}:{mqtt.port} ({server.consumer.topic})")
        print("\n".join(parts), flush=True)
        while not stop.wait(0.5):
            if not server.alive():
                raise ResoneraError("the HTTP server stopped unexpectedly (see the log above)")
    finally:
        server.stop()
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _run(args: argparse.Namespace) -> int:
    return _serve(args, api=True, ingest=True)


def _api(args: argparse.Namespace) -> int:
    return _serve(args, api=True, ingest=False)


def _ingest(args: argparse.Namespace) -> int:
    return _serve(args, api=False, ingest=True)


def _init_db(args: argparse.Namespace) -> int:
    settings = _load(args)
    engine = make_engine(settings.database_url)
    try:
        init_db(engine)
    finally:
        engine.dispose()
    print(f"{PROG}: database ready at {engine.url.render_as_string(hide_password=True)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Resonera clinical server: MQTT ingest, store, HTTP API.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, help_text in (
        ("run", _run, "API and ingest consumer in one process (the default deployment)"),
        ("api", _api, "HTTP API only (add processes behind a load balancer)"),
        ("ingest", _ingest, "ingest consumer only (add processes to share the load)"),
        ("init-db", _init_db, "create the database tables, then exit"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="TOML settings file (RESONERA_SERVER_* environment variables override it)",
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
        sub.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
