"""``resonera-server``: run the server (API + ingest) or one part of it, migrate the database,
create users, make keys, set up the demo.

Every error is one line on stderr and exit status 1 (``common.cli.run_cli``). SIGTERM and Ctrl-C
stop the server cleanly: ingest stores and acknowledges what it already received, then exits 0.
Passwords are never arguments: they come from ``RESONERA_PASSWORD`` or a prompt.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from resonera.common.cli import run_cli
from resonera.common.errors import ConfigError, ResoneraError
from resonera.common.settings import load_settings
from resonera.server.crypto import FieldCipher, new_key_line, write_signing_key
from resonera.server.settings import ServerSettings

if TYPE_CHECKING:
    from resonera.server.runner import ServerProcess, run_server_in_thread

# The web stack, the ORM and Alembic are imported by the commands that need them, so the quick
# commands (keys, user creation errors) answer without loading them: on top of this module's
# 0.4 s, the runner (API, uvicorn, ingest) adds 2.1 s and 65 MB, the database layer (SQLAlchemy,
# the models) 0.9 s, bootstrap and key rotation 0.7 s each (python -X importtime, the shared
# 2-core machine under load 5, 2026-12-06).
PROG: Final = "resonera-server"
PASSWORD_ENV: Final = "RESONERA_PASSWORD"
PASSWORD_MIN: Final = 12

__all__ = ["ServerProcess", "build_parser", "main", "run_server_in_thread"]


def __getattr__(name: str) -> Any:
    if name in ("ServerProcess", "run_server_in_thread"):
        from resonera.server import runner

        return getattr(runner, name)
    raise AttributeError(name)


def _load(args: argparse.Namespace) -> ServerSettings:
    path: Path | None = args.config
    return load_settings(ServerSettings, path)


def _source(args: argparse.Namespace) -> str:
    return f"config file {args.config}" if args.config is not None else "settings"


def _serve(args: argparse.Namespace, *, api: bool, ingest: bool) -> int:
    settings = _load(args)
    if api:
        settings = settings.checked_for_start(_source(args))
    from resonera.server.runner import ServerProcess

    server = ServerProcess(settings, api=api, ingest=ingest)
    stop = _stop_on_signals()
    server.start()
    try:
        parts = []
        if api:
            parts.append(f"{PROG}: API at {server.api_url} (OpenAPI: {server.url}/docs)")
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


def _migrate(args: argparse.Namespace) -> int:
    from resonera.server.db import make_engine, migrate, where

    settings = _load(args)
    engine = make_engine(settings.database_url)
    try:
        before, after = migrate(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"{PROG}: database {where(engine)} is at revision {after} (nothing to do)")
    else:
        print(f"{PROG}: migrated {where(engine)} from {before or 'empty'} to revision {after}")
    return 0


def _password() -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        if not sys.stdin.isatty():
            raise ConfigError(f"set {PASSWORD_ENV} or run in a terminal to type the password")
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
    if len(password) < PASSWORD_MIN:
        raise ConfigError(f"the password needs at least {PASSWORD_MIN} characters")
    return password


def _create_user(args: argparse.Namespace) -> int:
    settings = _load(args)
    password = _password()
    from resonera.server import bootstrap
    from resonera.server.db import make_engine, require_current_schema

    engine = make_engine(settings.database_url)
    try:
        require_current_schema(engine)
        user_id = bootstrap.create_user(engine, args.email, password, args.role)
    finally:
        engine.dispose()
    print(f"{PROG}: created {args.role} {args.email.lower()} (id {user_id})")
    return 0


def _demo_setup(args: argparse.Namespace) -> int:
    settings = _load(args)
    password = _password()
    from resonera.server import bootstrap
    from resonera.server.db import make_engine, require_current_schema

    engine = make_engine(settings.database_url)
    try:
        require_current_schema(engine)
        result = bootstrap.demo_setup(
            engine, settings, device_id=args.device, email=args.email, password=password
        )
    finally:
        engine.dispose()
    print(
        f"{PROG}: clinician {args.email.lower()} (id {result.user_id}), patient "
        f"{result.patient_id}, device {args.device} assigned"
    )
    return 0


def _new_key(args: argparse.Namespace) -> int:
    print(new_key_line(args.key_id))
    return 0


def _new_signing_key(args: argparse.Namespace) -> int:
    try:
        public = write_signing_key(args.file)
    except FileExistsError:
        raise ConfigError(f"{args.file} exists; not overwriting a key") from None
    print(f"{PROG}: wrote {args.file}; public key (pin it on devices): {public}")
    return 0


def _rotate_patient_key(args: argparse.Namespace) -> int:
    from resonera.server.db import make_engine, require_current_schema
    from resonera.server.key_rotation import RotationReport, rotate_patient_key

    settings = _load(args)
    secret = settings.patient_keys.get_secret_value() if settings.patient_keys else None
    # Never a throwaway demo key here: that would make every stored field unreadable.
    cipher = FieldCipher.from_settings(settings.patient_key_file, secret, demo=False)
    if args.key_id is not None and args.key_id != cipher.current:
        raise ConfigError(
            f"the newest patient key is {cipher.current!r}, not {args.key_id!r}: put the new key "
            "on the last line of the key file"
        )

    def progress(report: RotationReport) -> None:
        print(f"{PROG}: re-encrypted {report.patients} patients so far", flush=True)

    engine = make_engine(settings.database_url)
    try:
        require_current_schema(engine)
        report = rotate_patient_key(
            engine,
            cipher,
            batch_size=args.batch_size,
            pause_s=args.pause,
            progress=progress if args.verbose else None,
        )
    finally:
        engine.dispose()
    resumed = " (resumed an interrupted run)" if report.resumed else ""
    print(
        f"{PROG}: re-encrypted {report.fields} fields of {report.patients} patients under key "
        f"{report.key_id!r}{resumed}; every patient field is now under it, so the other keys "
        "may be removed from the key file"
    )
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Resonera clinical server: MQTT ingest, store, HTTP API.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: object, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="TOML settings file (RESONERA_SERVER_* environment variables override it)",
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
        sub.set_defaults(func=func)
        return sub

    command("run", _run, "API and ingest consumer in one process (the default deployment)")
    command("api", _api, "HTTP API only (add processes behind a load balancer)")
    command("ingest", _ingest, "ingest consumer only (add processes to share the load)")
    command("migrate", _migrate, "bring the database schema to this version, then exit")
    command("init-db", _migrate, "the same as migrate (kept for existing scripts)")
    user = command(
        "create-user",
        _create_user,
        f"add a user; the password comes from ${PASSWORD_ENV} or a prompt",
    )
    user.add_argument("--email", required=True)
    user.add_argument("--role", required=True, choices=("admin", "clinician", "auditor"))
    demo = command(
        "demo-setup",
        _demo_setup,
        "demo: a clinician, a patient, a registered device assigned to them (idempotent)",
    )
    demo.add_argument("--device", required=True)
    demo.add_argument("--email", required=True)
    key = command("new-key", _new_key, "print a new patient-data key line for patient_key_file")
    key.add_argument("--key-id", default="k1")
    rotate = command(
        "rotate-patient-key",
        _rotate_patient_key,
        "re-encrypt every patient field under the newest patient key (the last line of the key "
        "file; keep the old lines until this is done); resumes where a killed run stopped",
    )
    rotate.add_argument(
        "--key-id", help="refuse unless this is the newest key (a check against typos)"
    )
    rotate.add_argument(
        "--batch-size", type=_positive_int, default=200, help="patients per transaction"
    )
    rotate.add_argument(
        "--pause",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait between batches, to leave the database to a live server",
    )
    signing = command(
        "new-signing-key", _new_signing_key, "write a new Ed25519 desired-state signing key"
    )
    signing.add_argument("file", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
