"""``resonera-provision``: the fleet CA, broker configuration, device certificates and revocation;
the update key and agent update bundles (``update-key``, ``update build``: ``cli_updates.py``).

The CA passphrase comes from ``--passphrase-file``, the ``RESONERA_CA_PASSPHRASE`` environment variable
or, on a terminal, a prompt. It has no default. A new issuing CA's own passphrase comes from
``--issuing-passphrase-file`` or ``RESONERA_ISSUING_PASSPHRASE``.

Commands that touch the server's database (``device add``, ``device bundle``, ``device revoke``)
reach it exactly as ``resonera-server`` does: ``--server-config FILE`` (the server's TOML) and the
``RESONERA_SERVER_*`` environment variables over it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from resonera.common import topics
from resonera.common.cli import run_cli
from resonera.common.clock import utc_now
from resonera.common.errors import ConfigError
from resonera.common.identity import common_name, fingerprint, load_certificate
from resonera.provisioning.broker import SERVER_IDENTITY, BrokerConfig, provision_broker
from resonera.provisioning.bundle import write_bundle
from resonera.provisioning.cli_updates import add_update_commands
from resonera.provisioning.update_key import UpdateKeys
from resonera.server.fleet_ca import CAError, FleetCA

# The server's settings, database layer and enrollment are imported by the commands that touch the
# server's database (device add, bundle with --server-config, revoke) and only there: they add
# 1.1-1.3 s and about 49 MB to every other command (ca, broker-config, service-cert), on top of this
# module's 0.3 s (python -X importtime, the shared 2-core machine under load 5, 2026-12-06).
if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from resonera.server.settings import ServerSettings

PASSPHRASE_ENV = "RESONERA_CA_PASSPHRASE"
ISSUING_PASSPHRASE_ENV = "RESONERA_ISSUING_PASSPHRASE"
SERVER_DB_ENV = "RESONERA_SERVER_DATABASE_URL"
_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _passphrase(args: argparse.Namespace, *, confirm: bool = False, what: str = "CA") -> bytes:
    """The CA's passphrase (``what``: or the update key's, taken the same way)."""
    if args.passphrase_file is not None:
        return Path(args.passphrase_file).read_bytes().rstrip(b"\r\n")
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode()
    if not sys.stdin.isatty():
        raise CAError(f"the {what} passphrase is needed: use --passphrase-file or {PASSPHRASE_ENV}")
    first = getpass.getpass(f"{what} passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise CAError("the two passphrases differ")
    return first.encode()


def _ca_init(args: argparse.Namespace) -> int:
    ca = FleetCA.init(args.ca, _passphrase(args, confirm=True), name=args.name)
    print(f"created fleet CA {common_name(ca.cert)!r} in {args.ca}")
    print(f"  certificate {ca.cert_path} (sha256 {fingerprint(ca.cert)})")
    print(f"  key {ca.key_path} (encrypted; keep this folder offline)")
    return 0


def _issuing_passphrase(args: argparse.Namespace) -> bytes:
    if args.issuing_passphrase_file is not None:
        return Path(args.issuing_passphrase_file).read_bytes().rstrip(b"\r\n")
    if os.environ.get(ISSUING_PASSPHRASE_ENV):
        return os.environ[ISSUING_PASSPHRASE_ENV].encode()
    if not sys.stdin.isatty():
        raise CAError(
            "the issuing CA's own passphrase is needed: use --issuing-passphrase-file or "
            f"{ISSUING_PASSPHRASE_ENV}"
        )
    first = getpass.getpass("issuing CA passphrase: ")
    if getpass.getpass("again: ") != first:
        raise CAError("the two passphrases differ")
    return first.encode()


def _ca_issuing(args: argparse.Namespace) -> int:
    root = FleetCA(args.ca)
    ca = root.issue_intermediate(
        _passphrase(args), args.out, _issuing_passphrase(args), name=args.name
    )
    print(f"created issuing CA {common_name(ca.cert)!r} in {args.out}, signed by the root")
    print(f"  chain {ca.chain_path} (the broker and devices trust it)")
    print("  give the server this folder (enrollment.issuing_ca_dir) and its passphrase")
    print(f"  (enrollment.issuing_passphrase); keep the root in {args.ca} offline")
    return 0


def _ca_show(args: argparse.Namespace) -> int:
    ca = FleetCA(args.ca)
    print(f"{common_name(ca.cert)}  valid until {ca.cert.not_valid_after_utc:%Y-%m-%d}")
    print(f"sha256 {fingerprint(ca.cert)}")
    for r in ca.revocations():
        print(f"revoked {r.serial:x}  {r.device_id}  {r.at}  {r.reason}")
    return 0


def _broker_config(args: argparse.Namespace) -> int:
    if args.tls:
        if args.ca is None or args.out_dir is None:
            raise CAError("--tls needs --ca (the fleet CA folder) and --out-dir")
        path = provision_broker(
            FleetCA(args.ca),
            args.out_dir,
            _passphrase(args),
            port=args.port,
            bind=args.bind,
            persistence_dir=args.persistence_dir,
            issuing=FleetCA(args.issuing) if args.issuing is not None else None,
            server_names=tuple(args.server_name or ("127.0.0.1", "localhost")),
        )
        print(
            f"wrote a mutual-TLS mosquitto configuration to {path} (ACL, key, certificate beside it)"
        )
        return 0
    config = BrokerConfig(port=args.port, bind=args.bind, persistence_dir=args.persistence_dir)
    if args.out is None:
        sys.stdout.write(config.render())
    else:
        config.write(args.out)
        print(f"wrote mosquitto configuration to {args.out}")
    return 0


def _service_cert(args: argparse.Namespace) -> int:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name.removeprefix(topics.SERVICE_PREFIX)
    # with server names: a TLS server's certificate (the HTTPS API), else a client identity
    cert = FleetCA(args.ca).issue_service(
        name,
        args.out_dir / f"{name}.key",
        args.out_dir / f"{name}.crt",
        _passphrase(args),
        server_names=args.server_name,
        client=not args.server_name,
    )
    role = f"a TLS server for {', '.join(args.server_name)}" if args.server_name else "a client"
    print(
        f"issued {common_name(cert)!r} (serial {cert.serial_number:x}, {role}) into {args.out_dir}"
    )
    return 0


def _device_cert(args: argparse.Namespace) -> int:
    """The offline (factory) path: sign a CSR that a board made itself."""
    csr = Path(args.csr).read_bytes()
    cert = FleetCA(args.ca).sign_device_csr(csr, _passphrase(args), expected_serial=args.serial)
    args.out.write_bytes(cert.public_bytes(Encoding.PEM))
    print(f"issued device {common_name(cert)!r} (serial {cert.serial_number:x}) to {args.out}")
    return 0


def _device_revoke(args: argparse.Namespace) -> int:
    cert = load_certificate(args.cert)
    ca = FleetCA(args.ca)
    ca.revoke(cert, common_name(cert), args.reason, _passphrase(args))
    print(f"revoked {common_name(cert)!r}; CRL written to {ca.crl_path}")
    print("reload the broker so it takes the new CRL (e.g. systemctl reload mosquitto)")
    if args.server_config is None and not os.environ.get(SERVER_DB_ENV):
        print("the server's registry was not changed (give --server-config to mark it revoked)")
        return 0
    from resonera.server.device_certificates import revoke_certificate

    engine = _server_engine(args)
    try:
        found = revoke_certificate(engine, cert, now=utc_now())
    finally:
        engine.dispose()
    if found is None:
        print(f"the server does not know {common_name(cert)!r}; nothing to mark there")
    else:
        print(f"marked {found!r} revoked on the server: its messages now go to quarantine")
    return 0


def _server_settings(args: argparse.Namespace) -> ServerSettings:
    from resonera.common.settings import load_settings
    from resonera.server.settings import ServerSettings

    if args.server_config is None and not os.environ.get(SERVER_DB_ENV):
        raise ConfigError(
            "which server? give --server-config FILE (the resonera-server config) "
            f"or set {SERVER_DB_ENV}"
        )
    return load_settings(ServerSettings, args.server_config)


def _server_engine(args: argparse.Namespace) -> Engine:
    from resonera.server.db import make_engine, require_current_schema

    engine = make_engine(_server_settings(args).database_url)
    try:
        require_current_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 24h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _device_add(args: argparse.Namespace) -> int:
    from resonera.server.enrollment_codes import register_code

    engine = _server_engine(args)
    try:
        code, device_id, expires = register_code(
            engine,
            args.serial,
            ttl=args.expires,
            device_id=args.device_id,
            reprovision=args.reprovision,
            now=utc_now(),
        )
    finally:
        engine.dispose()
    again = ", re-provisioned: it gets a new identity" if args.reprovision else ""
    print(
        f"registered serial {args.serial!r} as device {device_id!r}{again}; "
        "one-time enrollment code (shown only now):"
    )
    print(f"  {code}")
    print(
        f"valid until {expires:%Y-%m-%d %H:%M} UTC; on the device (device_id = {device_id!r}) run:"
    )
    print(f"  resonera-device enroll --server https://SERVER --code {code} --serial {args.serial}")
    return 0


def _bundle_maker(
    args: argparse.Namespace, settings: ServerSettings | None
) -> Callable[[Path, str, str], x509.Certificate]:
    """What ``write_bundle`` needs besides the board (the CA, the server's key, the broker), from
    the options or the server's settings: a function ``(folder, device id, serial)`` that writes a
    board's bundle and returns its certificate."""
    key = args.server_public_key
    if key is None and settings is not None:
        from resonera.server.crypto import load_signer
        from resonera.server.enrollment import server_public_key

        key = server_public_key(load_signer(settings.desired_signing_key_file, demo=False))
    if key is None:
        raise ConfigError(
            "the server's signing key is needed: --server-public-key or --server-config"
        )
    host = args.broker_host or (settings.enrollment.broker_host if settings else None)
    port = args.broker_port or (settings.enrollment.broker_port if settings else None)
    if host is None or port is None:
        raise ConfigError(
            "the broker address is needed: --broker-host/--broker-port or --server-config"
        )
    update_keys = UpdateKeys(args.update_key).published() if args.update_key else []
    ca = FleetCA(args.ca)
    passphrase = _passphrase(args)

    def make(out: Path, device_id: str, serial: str) -> x509.Certificate:
        return write_bundle(
            ca,
            passphrase,
            out,
            device_id=device_id,
            serial=serial,
            server_public_key=key,
            broker_host=host,
            broker_port=port,
            days=args.days,
            server_url=args.server_url,
            update_public_keys=update_keys,
        )

    return make


def _device_bundle(args: argparse.Namespace) -> int:
    settings = None
    if args.server_config is not None or os.environ.get(SERVER_DB_ENV):
        settings = _server_settings(args)
    cert = _bundle_maker(args, settings)(args.out, args.device_id, args.serial)
    print(f"wrote a signed bundle for {args.device_id!r} (serial {args.serial!r}) to {args.out}")
    _say_if_no_update_key(args)
    if settings is None:
        print("the server's registry was not changed (give --server-config to register it)")
        return 0
    from resonera.server.enrollment_codes import register_bundle

    engine = _server_engine(args)
    try:
        register_bundle(engine, args.serial, cert, reprovision=args.reprovision, now=utc_now())
    finally:
        engine.dispose()
    print(f"registered {args.device_id!r} on the server")
    return 0


def _devices_import(args: argparse.Namespace) -> int:
    from resonera.provisioning.batch import (
        BatchRow,
        Outcome,
        Standing,
        code_ttl_ok,
        import_rows,
        read_serials,
    )
    from resonera.provisioning.batch_files import BatchFolder, summary
    from resonera.server.enrollment_codes import register_bundle, register_code

    rows = read_serials(args.file)
    ttl = code_ttl_ok(args.expires)
    if args.bundles and args.ca is None:
        raise ConfigError("--bundles needs --ca (the issuing CA folder that signs them)")
    settings = _server_settings(args)
    make_bundle = _bundle_maker(args, settings) if args.bundles else None
    folder = BatchFolder(args.out)
    now = utc_now()

    def make(registry: Connection, row: BatchRow, standing: Standing) -> Outcome:
        if make_bundle is None:
            code, _device, expires = register_code(
                registry, row.serial, ttl=ttl, device_id=row.device_id, now=now
            )
            return Outcome(row, standing, code=code, expires_at=expires)
        out = folder.stage / "bundles" / row.device_id
        cert = make_bundle(out, row.device_id, row.serial)
        register_bundle(registry, row.serial, cert, now=now)
        return Outcome(row, standing, bundle=out, certificate_sha256=fingerprint(cert))

    def wanted(standing: Standing) -> bool:
        if standing is Standing.NEW:
            return True
        return args.new_codes and make_bundle is None and standing is not Standing.ENROLLED

    written = False

    def finish(outcomes: list[Outcome]) -> None:
        nonlocal written
        written = folder.publish(outcomes, source=args.file, now=now)

    engine = _server_engine(args)
    try:
        outcomes = import_rows(engine, rows, make, wanted=wanted, finish=finish, now=now)
    except BaseException:
        folder.discard()
        raise
    finally:
        engine.dispose()
    for outcome in outcomes:
        print(f"line {outcome.row.line}: {outcome.describe()}")
    print(summary(outcomes))
    if not written:
        print("nothing new: the registry is unchanged and nothing was written")
        return 0
    what = "factory bundles" if make_bundle is not None else "one-time codes (codes.csv)"
    if make_bundle is not None:
        _say_if_no_update_key(args)
    print(f"wrote {what}, labels (labels.html, labels/*.png) and report.txt to {args.out}")
    if make_bundle is None:
        print("the codes are shown only there: keep the folder as you would a key")
    return 0


def _say_if_no_update_key(args: argparse.Namespace) -> None:
    if args.update_key is None:
        print("no --update-key: the bundle pins no update key, so the device takes no agent update")


def _bundle_options(parser: argparse.ArgumentParser) -> None:
    """What a factory bundle holds besides the board's identity (``device bundle``, ``devices
    import --bundles``)."""
    parser.add_argument("--days", type=int, default=365, help="the certificate's validity")
    parser.add_argument("--server-public-key", default=None, help="base64 Ed25519 (pinned)")
    parser.add_argument("--broker-host", default=None)
    parser.add_argument("--broker-port", type=int, default=None)
    parser.add_argument("--server-url", default=None, help="https://... the device renews with")
    parser.add_argument(
        "--update-key",
        type=Path,
        default=None,
        help="the update key's folder: the device pins its public keys (without it, the device "
        "takes no agent update)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resonera-provision", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--passphrase-file", type=Path, default=None)
    parser.add_argument("--issuing-passphrase-file", type=Path, default=None)
    sub = parser.add_subparsers(dest="command", required=True)

    ca = sub.add_parser("ca", help="the fleet certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="create a new fleet CA")
    init.add_argument("--ca", type=Path, required=True, help="CA folder")
    init.add_argument("--name", default="Resonera Fleet CA")
    init.set_defaults(func=_ca_init)
    issuing = ca_sub.add_parser(
        "issuing", help="make the online issuing CA (signed by the root) the server signs with"
    )
    issuing.add_argument("--ca", type=Path, required=True, help="the root CA folder")
    issuing.add_argument("--out", type=Path, required=True, help="folder for the issuing CA")
    issuing.add_argument("--name", default="Resonera Issuing CA")
    issuing.set_defaults(func=_ca_issuing)
    show = ca_sub.add_parser("show", help="the CA and its revocations")
    show.add_argument("--ca", type=Path, required=True)
    show.set_defaults(func=_ca_show)

    broker = sub.add_parser("broker-config", help="write a mosquitto configuration")
    broker.add_argument("--port", type=int, default=1883)
    broker.add_argument("--bind", default="127.0.0.1")
    broker.add_argument("--persistence-dir", type=Path, default=None)
    broker.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    broker.add_argument("--tls", action="store_true", help="mutual TLS with the fleet CA")
    broker.add_argument("--ca", type=Path, default=None)
    broker.add_argument("--out-dir", type=Path, default=None)
    broker.add_argument(
        "--issuing", type=Path, default=None, help="issuing CA folder whose devices it admits"
    )
    broker.add_argument(
        "--server-name",
        action="append",
        default=None,
        help="a name devices reach the broker by, in its certificate (repeat it; default "
        "127.0.0.1 and localhost)",
    )
    broker.set_defaults(func=_broker_config)

    service = sub.add_parser("service-cert", help="key and certificate for one of our services")
    service.add_argument("--ca", type=Path, required=True)
    service.add_argument(
        "--name",
        default=SERVER_IDENTITY,
        help="the service's name; its certificate is named 'service:NAME', which no device can be",
    )
    service.add_argument("--out-dir", type=Path, required=True)
    service.add_argument(
        "--server-name",
        action="append",
        default=None,
        help="make a TLS server's certificate for this name (repeat it), e.g. the HTTPS API's",
    )
    service.set_defaults(func=_service_cert)

    device = sub.add_parser("device", help="device certificates")
    device_sub = device.add_subparsers(dest="device_command", required=True)
    cert = device_sub.add_parser("cert", help="sign a device's CSR (offline/factory path)")
    cert.add_argument("--ca", type=Path, required=True)
    cert.add_argument("--csr", type=Path, required=True)
    cert.add_argument("--serial", default=None, help="refuse a CSR naming another serial")
    cert.add_argument("--out", type=Path, required=True)
    cert.set_defaults(func=_device_cert)
    revoke = device_sub.add_parser("revoke", help="revoke a device's certificate")
    revoke.add_argument("--ca", type=Path, required=True)
    revoke.add_argument("--cert", type=Path, required=True)
    revoke.add_argument("--reason", default="unspecified")
    revoke.add_argument("--server-config", type=Path, default=None, help="mark it on the server")
    revoke.set_defaults(func=_device_revoke)
    add = device_sub.add_parser("add", help="register a serial; print a one-time enrollment code")
    add.add_argument("serial")
    add.add_argument("--expires", type=_duration, default=timedelta(hours=24), help="e.g. 24h")
    add.add_argument(
        "--device-id",
        default=None,
        help="the device id it enrolls as (default: the serial); the device's config must name it",
    )
    add.add_argument(
        "--reprovision",
        action="store_true",
        help="give a device id the server already knows a new identity (replaces its key)",
    )
    add.add_argument("--server-config", type=Path, default=None, help="resonera-server's config")
    add.set_defaults(func=_device_add)
    bundle = device_sub.add_parser("bundle", help="write a signed identity bundle (factory)")
    bundle.add_argument("serial")
    bundle.add_argument("--out", type=Path, required=True, help="folder for the SD-card image")
    bundle.add_argument("--ca", type=Path, required=True, help="the issuing CA folder")
    bundle.add_argument("--device-id", required=True)
    bundle.add_argument(
        "--reprovision",
        action="store_true",
        help="give a device id the server already knows a new identity (replaces its key)",
    )
    bundle.add_argument("--server-config", type=Path, default=None, help="register it there")
    _bundle_options(bundle)
    bundle.set_defaults(func=_device_bundle)

    devices = sub.add_parser("devices", help="many devices at once")
    devices_sub = devices.add_subparsers(dest="devices_command", required=True)
    batch = devices_sub.add_parser(
        "import",
        help="register every serial of a CSV file (serial[,device_id]) and write their one-time "
        "codes, labels with a QR code and a report (or factory bundles: --bundles); re-running "
        "the same file changes nothing",
    )
    batch.add_argument("file", type=Path, help="CSV: serial[,device_id] per line, header optional")
    batch.add_argument("--out", type=Path, required=True, help="new folder for the batch's files")
    batch.add_argument("--server-config", type=Path, default=None, help="resonera-server's config")
    batch.add_argument(
        "--expires", type=_duration, default=timedelta(days=7), help="the codes' life (e.g. 7d)"
    )
    batch.add_argument(
        "--new-codes",
        action="store_true",
        help="also give serials that are registered but not enrolled a new code (the old one "
        "stops working)",
    )
    batch.add_argument(
        "--bundles", action="store_true", help="factory bundles instead of codes (needs --ca)"
    )
    batch.add_argument("--ca", type=Path, default=None, help="the issuing CA folder (--bundles)")
    _bundle_options(batch)
    batch.set_defaults(func=_devices_import)

    add_update_commands(
        sub, lambda args, confirm: _passphrase(args, confirm=confirm, what="update key")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
