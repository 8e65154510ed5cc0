"""The fleet certificate authority: ECDSA P-256, its key encrypted with a passphrase at rest.

Layout of a CA folder::

    ca.crt          the CA certificate (public: devices, broker and server trust it)
    ca.key          the CA key, PKCS#8 encrypted with the admin's passphrase (keep the folder offline)
    revoked.json    serials revoked so far, with device id, time and reason
    crl.pem         the certificate revocation list the broker enforces (re-signed on every revoke)
    issued/         every certificate issued, by serial (an audit trail of the CA)
    chain.pem       only in an issuing CA's folder: its certificate, then the root's

Two tiers: the root (``ca init``) stays offline and signs only issuing CAs (``ca issuing``); an
issuing CA lives on the server, signs device certificates at enrollment and keeps the CRL the broker
reads. A root used directly (one tier) still works: tests and small fleets.

Device certificates: CN = device id, clientAuth only, signed from a CSR whose key was made on the device.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from resonera.common import topics
from resonera.common.clock import Clock, utc_now
from resonera.common.errors import ProtocolError
from resonera.common.files import write_atomic
from resonera.common.identity import (
    IdentityError,
    generate_key,
    load_private_key,
    parse_csr,
    write_private_key,
)

CA_DAYS: Final = 3650
ISSUING_DAYS: Final = 1825
DEVICE_DAYS: Final = 365
SERVICE_DAYS: Final = 825
#: Certificates start this long before "now", so a device whose clock is slightly behind accepts them.
BACKDATE: Final = timedelta(minutes=5)
MIN_PASSPHRASE: Final = 12


class CAError(IdentityError):
    """The CA cannot do what was asked (missing, locked, wrong passphrase, bad request)."""


@dataclass(frozen=True)
class Revocation:
    serial: int
    device_id: str
    at: str
    reason: str


def _write_atomic(path: Path, data: bytes) -> None:
    # certificates, the CRL and the revocation list are public: the broker's user reads them
    write_atomic(path, data, mode=0o644)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


_CA_USAGE: Final = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


class FleetCA:
    """A CA folder; ``clock`` dates what it signs (certificates, revocations, CRLs)."""

    def __init__(self, directory: Path, *, clock: Clock = utc_now) -> None:
        self.directory = directory
        self.clock = clock
        self.cert_path = directory / "ca.crt"
        self.key_path = directory / "ca.key"
        self.crl_path = directory / "crl.pem"
        self.revoked_path = directory / "revoked.json"
        if not self.cert_path.exists():
            raise CAError(
                f"no fleet CA in {directory} (create one with: resonera-provision ca init)"
            )
        self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    @classmethod
    def init(
        cls,
        directory: Path,
        passphrase: bytes,
        name: str = "Resonera Fleet CA",
        *,
        clock: Clock = utc_now,
    ) -> FleetCA:
        """Create a new CA; refuse to overwrite one, and refuse a short passphrase."""
        if (directory / "ca.crt").exists() or (directory / "ca.key").exists():
            raise CAError(f"a CA already exists in {directory}; refusing to overwrite it")
        if len(passphrase) < MIN_PASSPHRASE:
            raise CAError(f"the CA passphrase must have at least {MIN_PASSPHRASE} characters")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "issued").mkdir(exist_ok=True)
        key = generate_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = clock()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + timedelta(days=CA_DAYS))
            # path length 1: the root may sign issuing CAs, which sign only end entities
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        write_private_key(key, directory / "ca.key", passphrase)
        _write_atomic(directory / "ca.crt", _pem(cert))
        ca = cls(directory, clock=clock)
        ca.write_crl(passphrase)
        return ca

    def issue_intermediate(
        self,
        passphrase: bytes,
        directory: Path,
        issuing_passphrase: bytes,
        *,
        name: str = "Resonera Issuing CA",
        days: int = ISSUING_DAYS,
    ) -> FleetCA:
        """Make an issuing CA in ``directory`` signed by this (root) CA: its own key (encrypted
        with ``issuing_passphrase``), ``chain.pem``, an empty CRL. Refuse to overwrite one."""
        if (directory / "ca.crt").exists() or (directory / "ca.key").exists():
            raise CAError(f"a CA already exists in {directory}; refusing to overwrite it")
        if len(issuing_passphrase) < MIN_PASSPHRASE:
            raise CAError(f"the CA passphrase must have at least {MIN_PASSPHRASE} characters")
        if self.is_intermediate:
            raise CAError(f"{self.directory} is an issuing CA; issuing CAs are made by the root")
        root_key = self._key(passphrase)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "issued").mkdir(exist_ok=True)
        key = generate_key()
        now = self.clock()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        _write_atomic(self.directory / "issued" / f"{cert.serial_number:x}.crt", _pem(cert))
        write_private_key(key, directory / "ca.key", issuing_passphrase)
        _write_atomic(directory / "ca.crt", _pem(cert))
        _write_atomic(directory / "chain.pem", _pem(cert) + _pem(self.cert))
        ca = FleetCA(directory, clock=self.clock)
        ca.write_crl(issuing_passphrase)
        return ca

    @property
    def chain_path(self) -> Path:
        """The certificates a verifier needs from this CA up to the root (``ca.crt`` for a root)."""
        chain = self.directory / "chain.pem"
        return chain if chain.exists() else self.cert_path

    @property
    def is_intermediate(self) -> bool:
        return self.cert.issuer != self.cert.subject

    def chain(self) -> list[x509.Certificate]:
        """This CA's certificate first, the root last."""
        return x509.load_pem_x509_certificates(self.chain_path.read_bytes())

    @property
    def root(self) -> x509.Certificate:
        return self.chain()[-1]

    def _key(self, passphrase: bytes) -> ec.EllipticCurvePrivateKey:
        try:
            return load_private_key(self.key_path, passphrase or None)
        except IdentityError as exc:
            raise CAError(f"cannot unlock the CA key: {exc}") from None

    def _issue(
        self,
        passphrase: bytes,
        public_key: ec.EllipticCurvePublicKey,
        subject: x509.Name,
        *,
        days: int,
        client: bool,
        server_names: list[str] | None = None,
        not_before: datetime | None = None,
    ) -> x509.Certificate:
        key = self._key(passphrase)
        now = not_before or self.clock()
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            alt: list[x509.GeneralName] = []
            for entry in server_names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(entry)))
                except ValueError:
                    alt.append(x509.DNSName(entry))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(key, hashes.SHA256())
        _write_atomic(self.directory / "issued" / f"{cert.serial_number:x}.crt", _pem(cert))
        return cert

    def sign_device_csr(
        self,
        csr_pem: bytes,
        passphrase: bytes,
        *,
        expected_serial: str | None = None,
        days: int = DEVICE_DAYS,
        not_before: datetime | None = None,
    ) -> x509.Certificate:
        """A device certificate (CN = device id, client auth) for a checked CSR."""
        csr, _device_id, serial = parse_csr(csr_pem)
        if expected_serial is not None and serial != expected_serial:
            raise CAError(
                f"certificate request names serial {serial!r}, expected {expected_serial!r}"
            )
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)  # parse_csr checked it
        return self._issue(
            passphrase, public_key, csr.subject, days=days, client=True, not_before=not_before
        )

    def sign_bytes(self, passphrase: bytes, data: bytes) -> bytes:
        """DER ECDSA-SHA256 of ``data`` by the CA key (bundle manifests)."""
        return self._key(passphrase).sign(data, ec.ECDSA(hashes.SHA256()))

    def issue_service(
        self,
        name: str,
        key_path: Path,
        cert_path: Path,
        passphrase: bytes,
        *,
        server_names: list[str] | None = None,
        client: bool = True,
        days: int = SERVICE_DAYS,
    ) -> x509.Certificate:
        """Key and certificate for one of our services: the broker (server names for TLS) or the
        server's MQTT identity (client auth). Its CN is ``service_identity(name)``, a name no device
        certificate can have."""
        try:
            identity = topics.service_identity(name)
        except ProtocolError as exc:
            raise CAError(str(exc)) from None
        key = generate_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
        cert = self._issue(
            passphrase,
            key.public_key(),
            subject,
            days=days,
            client=client,
            server_names=server_names,
        )
        write_private_key(key, key_path)
        _write_atomic(cert_path, _pem(cert))
        return cert

    def issued(self, serial: int) -> x509.Certificate | None:
        """A certificate this CA issued, by serial number (None if it did not, or it was lost)."""
        try:
            return x509.load_pem_x509_certificate(
                (self.directory / "issued" / f"{serial:x}.crt").read_bytes()
            )
        except (OSError, ValueError):
            return None

    def revocations(self) -> list[Revocation]:
        if not self.revoked_path.exists():
            return []
        return [Revocation(**item) for item in json.loads(self.revoked_path.read_text())]

    def revoke(
        self, cert: x509.Certificate, device_id: str, reason: str, passphrase: bytes
    ) -> None:
        """Add ``cert`` to the revocation list and re-sign the CRL."""
        self.revoke_all([cert], device_id, reason, passphrase)

    def revoke_all(
        self, certs: list[x509.Certificate], device_id: str, reason: str, passphrase: bytes
    ) -> list[x509.Certificate]:
        """Add ``certs`` to the revocation list and re-sign the CRL once; those newly added."""
        self._key(passphrase)  # check the passphrase before changing anything
        known = self.revocations()
        listed = {r.serial for r in known}
        added = [c for c in certs if c.serial_number not in listed]
        if not added:
            return []
        at = self.clock().isoformat()
        known.extend(Revocation(c.serial_number, device_id, at, reason) for c in added)
        _write_atomic(self.revoked_path, json.dumps([r.__dict__ for r in known], indent=2).encode())
        self.write_crl(passphrase)
        return added

    def write_crl(self, passphrase: bytes, days: int = 30) -> Path:
        key = self._key(passphrase)
        now = self.clock()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - BACKDATE)
            .next_update(now + timedelta(days=days))
        )
        for item in self.revocations():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(item.serial)
                .revocation_date(datetime.fromisoformat(item.at))
                .build()
            )
        crl = builder.sign(key, hashes.SHA256())
        _write_atomic(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path

    def is_revoked(self, cert: x509.Certificate) -> bool:
        return any(r.serial == cert.serial_number for r in self.revocations())
