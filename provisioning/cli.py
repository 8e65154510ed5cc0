"""``resonera-provision``: the fleet CA, broker configuration, device certificates and revocation.

The CA passphrase comes from ``--passphrase-file``, the ``RESONERA_CA_PASSPHRASE`` environment variable
or, on a terminal, a prompt. It has no default.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from resonera.common.cli import run_cli
from resonera.common.identity import common_name, fingerprint, load_certificate
from resonera.provisioning.broker import SERVER_IDENTITY, BrokerConfig, provision_broker
from resonera.provisioning.ca import CAError, FleetCA

PASSPHRASE_ENV = "RESONERA_CA_PASSPHRASE"


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> bytes:
    if args.passphrase_file is not None:
        return Path(args.passphrase_file).read_bytes().rstrip(b"\r\n")
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode()
    if not sys.stdin.isatty():
        raise CAError(f"the CA passphrase is needed: use --passphrase-file or {PASSPHRASE_ENV}")
    first = getpass.getpass("CA passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise CAError("the two passphrases differ")
    return first.encode()


def _ca_init(args: argparse.Namespace) -> int:
    ca = FleetCA.init(args.ca, _passphrase(args, confirm=True), name=args.name)
    print(f"created fleet CA {common_name(ca.cert)!r} in {args.ca}")
    print(f"  certificate {ca.cert_path} (sha256 {fingerprint(ca.cert)})")
    print(f"  key {ca.key_path} (encrypted; keep this folder offline)")
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
    cert = FleetCA(args.ca).issue_service(
        args.name,
        args.out_dir / f"{args.name}.key",
        args.out_dir / f"{args.name}.crt",
        _passphrase(args),
    )
    print(f"issued {args.name!r} (serial {cert.serial_number:x}) into {args.out_dir}")
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resonera-provision", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--passphrase-file", type=Path, default=None)
    sub = parser.add_subparsers(dest="command", required=True)

    ca = sub.add_parser("ca", help="the fleet certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="create a new fleet CA")
    init.add_argument("--ca", type=Path, required=True, help="CA folder")
    init.add_argument("--name", default="Resonera Fleet CA")
    init.set_defaults(func=_ca_init)
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
    broker.set_defaults(func=_broker_config)

    service = sub.add_parser("service-cert", help="key and certificate for one of our services")
    service.add_argument("--ca", type=Path, required=True)
    service.add_argument("--name", default=SERVER_IDENTITY)
    service.add_argument("--out-dir", type=Path, required=True)
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
    revoke.set_defaults(func=_device_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
