"""``resonera-hwsim``: run the simulated safety MCU on a pseudo-terminal until SIGTERM or SIGINT.

The device (or a person with a serial tool) opens the printed path as it would the real UART.
``--link-file`` writes that path to a file once the simulator is ready (atomically, so a reader
never sees half a path) and removes it at exit. ``--symlink`` keeps a symlink to the pty, which a
restarted simulator points at its new pty: the device's URL stays the same across restarts.

Faults while it runs: ``--scenario FILE`` plays a timed script (``hardware/scenario.py``);
``--control SOCKET`` accepts control commands on a UNIX socket, one per line, one answer line each
(``ok ...`` or ``error: ...``); ``--stdin`` reads the same commands from standard input.

Firmware images for the bootloader (protocol v1.5): ``resonera-hwsim image build --version X --key
KEY.pem --out FILE`` writes a signed image file (hardware/PROTOCOL.md, "Firmware update"), which
``resonera-device mcu-update FILE`` sends; ``resonera-hwsim image key --key KEY.pem`` prints the
``update_public_key`` board setting that pins the key. ``KEY.pem`` is an unencrypted PKCS#8 PEM
Ed25519 private key (the update key; ``resonera-provision`` keeps the real one).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resonera.common import serial_link as sl
from resonera.common.cli import run_cli
from resonera.common.errors import ResoneraError
from resonera.common.files import write_atomic
from resonera.hardware.firmware import config as board_config
from resonera.hardware.firmware.bootloader import DEFAULT_SLOT_SIZE
from resonera.hardware.scenario import CommandError, Scenario, execute
from resonera.hardware.sim import (
    OLDEST_MINOR,
    Simulator,
    build_image,
    public_key_hex,
    sign_image,
)

PROG = "resonera-hwsim"
log = logging.getLogger(__name__)


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
    parser.add_argument(
        "--symlink", type=Path, help="keep a symlink to the pty at this path (removed at exit)"
    )
    parser.add_argument("--config", type=Path, help="board configuration (JSON)")
    parser.add_argument(
        "--protocol-minor",
        type=int,
        choices=range(OLDEST_MINOR, sl.PROTOCOL_MINOR + 1),
        default=sl.PROTOCOL_MINOR,
        metavar="N",
        help=f"play a firmware of protocol v1.N ({OLDEST_MINOR} to {sl.PROTOCOL_MINOR}, default "
        f"{sl.PROTOCOL_MINOR}): its HELLO says so, it refuses the light states v1.N lacks and "
        "sends BOARD only from v1.4, answers the update frames only from v1.5",
    )
    parser.add_argument("--scenario", type=Path, help="timed sensor curves and faults (JSON/TOML)")
    parser.add_argument("--control", type=Path, help="accept control commands on this UNIX socket")
    parser.add_argument(
        "--stdin", action="store_true", help="read control commands from standard input"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=serve)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    image = commands.add_parser("image", help="signed firmware images for the bootloader")
    image_commands = image.add_subparsers(title="image commands", metavar="COMMAND", required=True)
    build = image_commands.add_parser("build", help="write a signed image file")
    build.add_argument("--version", required=True, help="the firmware version the image names")
    build.add_argument("--key", type=Path, required=True, help="the update key (PKCS#8 PEM)")
    build.add_argument("--out", type=Path, required=True, help="the signed image file to write")
    build.add_argument(
        "--size",
        type=int,
        default=0,
        help="pad the image's body to this many bytes (default: none)",
    )
    build.set_defaults(func=build_image_file)
    key = image_commands.add_parser("key", help="print the board setting update_public_key")
    key.add_argument("--key", type=Path, required=True, help="the update key (PKCS#8 PEM)")
    key.set_defaults(func=print_public_key)
    return parser


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise ResoneraError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ResoneraError(f"{path} is not an Ed25519 key")
    return key


def build_image_file(args: argparse.Namespace) -> int:
    size: int = args.size
    if not 0 <= size <= DEFAULT_SLOT_SIZE:
        raise ResoneraError(f"--size must be 0 to {DEFAULT_SLOT_SIZE} bytes (a slot)")
    try:
        image = build_image(args.version, size)
    except ValueError as exc:
        raise ResoneraError(f"--version: {exc}") from None
    data = sign_image(_load_key(args.key), image)
    write_atomic(args.out, data, mode=0o644)
    print(f"{PROG}: wrote {args.out}: firmware {args.version}, {len(image)} bytes", flush=True)
    return 0


def print_public_key(args: argparse.Namespace) -> int:
    print(public_key_hex(_load_key(args.key)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


def serve(args: argparse.Namespace) -> int:
    config = (
        board_config.load(str(args.config))
        if args.config is not None
        else board_config.BoardConfig()
    )
    scenario = Scenario.load(args.scenario) if args.scenario is not None else None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    link_file: Path | None = args.link_file
    control: Path | None = args.control
    try:
        with Simulator(config, link_path=args.symlink, protocol_minor=args.protocol_minor) as sim:
            if control is not None:
                server = _control_socket(control)
                threading.Thread(
                    target=_serve_socket, args=(server, sim, stop), daemon=True
                ).start()
            if scenario is not None:
                sim.run_scenario(scenario)
            if link_file is not None:
                write_atomic(link_file, (sim.port_path + "\n").encode(), mode=0o644)
            print(f"{PROG}: serving on {sim.port_path}", flush=True)
            if args.stdin:
                threading.Thread(target=_serve_stdin, args=(sim, stop), daemon=True).start()
            while not stop.wait(0.2):
                if sim.error is not None:
                    print(f"{PROG}: error: simulator stopped: {sim.error}", file=sys.stderr)
                    return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if link_file is not None:
            link_file.unlink(missing_ok=True)
        if control is not None:
            control.unlink(missing_ok=True)
    print(f"{PROG}: stopped", flush=True)
    return 0


def answer(sim: Simulator, line: str) -> str:
    """One command line → one answer line."""
    try:
        return execute(sim, line)
    except CommandError as exc:
        return f"error: {exc}"


def _control_socket(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(0.2)
    return server


def _serve_socket(server: socket.socket, sim: Simulator, stop: threading.Event) -> None:
    with server:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_serve_conn, args=(conn, sim), daemon=True).start()


def _serve_conn(conn: socket.socket, sim: Simulator) -> None:
    with conn, conn.makefile("rwb", buffering=0) as stream:
        for raw in stream:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                stream.write((answer(sim, line) + "\n").encode())


def _serve_stdin(sim: Simulator, stop: threading.Event) -> None:
    for raw in sys.stdin:
        line = raw.strip()
        if line in ("quit", "exit"):
            break
        if line:
            print(answer(sim, line), flush=True)
    stop.set()  # end of input (or quit) ends the simulator
