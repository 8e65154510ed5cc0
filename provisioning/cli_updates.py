"""``resonera-provision update-key …`` and ``update build``: the key that signs agent updates, and
building a bundle (``provisioning/update_key.py``, ``provisioning/update_build.py``).

The update key's passphrase is taken as the CA's: ``--passphrase-file``, ``RESONERA_CA_PASSPHRASE``
or a prompt on a terminal.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Callable
from pathlib import Path

from resonera.common import serial_link as sl
from resonera.common.errors import ConfigError
from resonera.common.files import write_atomic
from resonera.hardware.sim import sign_image
from resonera.provisioning.update_build import build_update
from resonera.provisioning.update_key import UpdateKeyInfo, UpdateKeys

#: ``(args, confirm)`` -> the passphrase (cli.py's, which knows the options and the prompt).
Passphrase = Callable[[argparse.Namespace, bool], bytes]


def _line(info: UpdateKeyInfo) -> str:
    return f"{info.role:<8} {info.key_id}  {info.public_key}  (made {info.created_at})"


def _create(args: argparse.Namespace, passphrase: Passphrase) -> int:
    keys = UpdateKeys.create(args.update_key, passphrase(args, True))
    print(f"created update key {keys.signing.key_id} in {args.update_key}")
    print(f"  public key (devices pin it): {keys.signing.public_key}")
    print(f"  private key {args.update_key / keys.signing.file_name} (encrypted; keep it offline)")
    return 0


def _show(args: argparse.Namespace, _passphrase: Passphrase) -> int:
    keys = UpdateKeys(args.update_key)
    for info in keys.keys:
        print(_line(info))
    print(f"devices pin: {' '.join(keys.published())}")
    # the safety MCU's bootloader pins one key, as hex (hardware/README.md: update_public_key)
    print(f"safety MCU's update_public_key: {base64.b64decode(keys.signing.public_key).hex()}")
    return 0


def _rotate(args: argparse.Namespace, passphrase: Passphrase) -> int:
    keys = UpdateKeys(args.update_key)
    new = keys.rotate(passphrase(args, False))
    print(_line(keys.signing))
    print(_line(new))
    print(
        f"the next bundles are signed by {keys.signing.key_id} and carry both keys, so devices "
        f"pin {new.key_id} as they update; once the fleet runs such a bundle, "
        "'update-key promote' makes the new key sign"
    )
    return 0


def _promote(args: argparse.Namespace, passphrase: Passphrase) -> int:
    keys = UpdateKeys(args.update_key)
    signing = keys.promote(passphrase(args, False))
    print(f"update key {signing.key_id} signs from now on; the bundles carry it alone")
    for info in keys.keys:
        print(_line(info))
    return 0


def _build(args: argparse.Namespace, passphrase: Passphrase) -> int:
    keys = UpdateKeys(args.update_key)
    key = keys.unlock(passphrase(args, False))  # before the slow part: a wrong passphrase fails now
    built = build_update(
        args.source,
        args.out,
        key,
        update_keys=keys.published(),
        version=args.version,
        min_previous=args.min_previous,
        mcu_firmware=args.mcu_firmware,
    )
    print(f"built {built.path}")
    print(
        f"  version {built.version}, {built.size} bytes, {built.files} files, "
        f"signed by update key {built.key_id}"
    )
    if built.mcu_firmware is not None:
        print(f"  safety MCU firmware {built.mcu_firmware}, flashed once the agent is healthy")
    print(f"  sha256 {built.sha256}")
    return 0


def _sign_firmware(args: argparse.Namespace, passphrase: Passphrase) -> int:
    """The safety MCU's firmware image signed by the update key (the file the device's
    ``mcu-update`` sends; the bootloader checks the signature against its pinned key)."""
    image = args.image.read_bytes() if args.image.is_file() else None
    if image is None:
        raise ConfigError(f"no firmware image at {args.image}")
    try:
        version, size = sl.unpack_image_header(image)
    except sl.LinkProtocolError as exc:
        raise ConfigError(f"{args.image} is not a firmware image: {exc}") from None
    if size != len(image):
        raise ConfigError(f"{args.image}: its header says {size} bytes, the file has {len(image)}")
    keys = UpdateKeys(args.update_key)
    write_atomic(args.out, sign_image(keys.unlock(passphrase(args, False)), image), mode=0o644)
    print(f"signed firmware {version} ({size} bytes) with update key {keys.signing.key_id}")
    print(f"  {args.out}: for resonera-device mcu-update")
    return 0


def add_update_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], passphrase: Passphrase
) -> None:
    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        help_text: str,
        func: Callable[[argparse.Namespace, Passphrase], int],
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, help=help_text)
        parser.add_argument(
            "--update-key", type=Path, required=True, help="the update key's folder"
        )
        parser.set_defaults(func=lambda args: func(args, passphrase))
        return parser

    key = sub.add_parser("update-key", help="the key that signs agent update bundles")
    key_sub = key.add_subparsers(dest="update_key_command", required=True)
    command(key_sub, "create", "make the update key (Ed25519, encrypted)", _create)
    command(key_sub, "show", "the public keys, their ids and roles", _show)
    command(
        key_sub,
        "rotate",
        "make the next key: bundles signed by the current one carry it, so devices pin it",
        _rotate,
    )
    command(key_sub, "promote", "the next key signs from now on (after a rotate)", _promote)

    update = sub.add_parser("update", help="agent update bundles")
    update_sub = update.add_subparsers(dest="update_command", required=True)
    build = command(
        update_sub,
        "build",
        "build resonera-agent-<version>.tar from a source tree: the agent's wheel and the "
        "device's locked wheels, signed by the update key",
        _build,
    )
    build.add_argument("--source", type=Path, required=True, help="the agent's source tree")
    build.add_argument(
        "--version", default=None, help="build as this version (default: pyproject's)"
    )
    build.add_argument(
        "--min-previous",
        default=None,
        help="the oldest version that may update to this one (default: any)",
    )
    build.add_argument("--out", type=Path, required=True, help="folder for the bundle")
    build.add_argument(
        "--mcu-firmware",
        type=Path,
        default=None,
        metavar="SIGNED_FILE",
        help="also carry the safety MCU's firmware (a file from 'update sign-firmware')",
    )
    firmware = command(
        update_sub,
        "sign-firmware",
        "sign a safety-MCU firmware image (RSFW) with the update key, for resonera-device mcu-update",
        _sign_firmware,
    )
    firmware.add_argument("image", type=Path, help="the firmware image (RSFW header and body)")
    firmware.add_argument("--out", type=Path, required=True, help="the signed image file to write")
