"""The device's identity: enrollment over HTTPS, a factory bundle, renewal before expiry.

Everything lives in ``data_dir/identity/``: ``current.json`` names the version folder in force,
``v-<certificate serial>/``, which holds::

    device.key        the device's P-256 key, made here (0600); it never leaves the device
    device.crt        its certificate (CN = device id), from the server's issuing CA
    chain.pem         the issuing CA's certificate and the fleet root: what the broker is checked against
    enrollment.json   the server's pinned signing key, the broker address, where to renew

``DeviceSettings`` takes the key, the certificate, the chain, the pinned key and the broker address
from there for every setting left unset, so ``resonera-device run`` needs nothing more.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from resonera.common.bundle import verify_bundle, verify_chain
from resonera.common.clock import Clock, utc_now
from resonera.common.enrollment import renewal_payload
from resonera.common.errors import ResoneraError
from resonera.common.identity import (
    IdentityError,
    common_name,
    generate_key,
    load_private_key,
    make_csr,
    write_private_key,
)
from resonera.common.signing import ed25519_public_key_from_b64

if TYPE_CHECKING:
    from resonera.common.settings import MqttSettings
    from resonera.device.settings import DeviceSettings

log = logging.getLogger(__name__)

IDENTITY_DIR: Final = "identity"
#: In the identity folder: names the version folder in force.
POINTER: Final = "current.json"
VERSION_NAME: Final = re.compile(r"v-[0-9a-f]{1,40}")
#: Removed once a new version is in force: the files of the layout before version folders, and
#: the pending key of the renewal just installed.
STALE_FILES: Final = frozenset(
    {"device.key", "device.crt", "chain.pem", "enrollment.json", "renewal.key"}
)
API_PATH: Final = "/api/v1"
TIMEOUT_S: Final = 30.0
#: Renew once less than this share of the certificate's lifetime is left.
RENEW_FRACTION: Final = 0.3
MAX_ANSWER_BYTES: Final = 256 * 1024


class EnrollError(ResoneraError):
    """Enrollment, bundle installation or renewal failed; nothing on the device was changed."""


@dataclass(frozen=True)
class Identity:
    """Where an enrolled device keeps its identity, and what ``enrollment.json`` says.

    The four files live in a version folder ``folder/v-<certificate serial>/`` that
    ``folder/current.json`` names; installing writes a new version folder completely, then
    replaces ``current.json`` in one ``os.replace``: a crash at any point leaves either the old
    or the new identity in force, never a key of one with the certificate of the other. (Files
    directly in ``folder`` are the layout before versions; they stay readable.)"""

    folder: Path

    @classmethod
    def of(cls, data_dir: Path) -> Identity:
        return cls(data_dir / IDENTITY_DIR)

    @property
    def pointer_path(self) -> Path:
        return self.folder / POINTER

    @property
    def current(self) -> Path:
        """The version folder in force (``folder`` itself without a pointer)."""
        try:
            name = json.loads(self.pointer_path.read_text())["version"]
        except FileNotFoundError:
            return self.folder
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EnrollError(f"{self.pointer_path} cannot be read: {exc}") from None
        if not isinstance(name, str) or not VERSION_NAME.fullmatch(name):
            raise EnrollError(f"{self.pointer_path} names no identity version: {name!r}")
        return self.folder / name

    def pinned(self) -> Identity:
        """This identity's version in force now, as an identity of its own: its paths stay those
        of one key and certificate even if a renewal switches versions meanwhile."""
        current = self.current
        return self if current == self.folder else Identity(current)

    @property
    def pending_key_path(self) -> Path:
        """A renewal's new key until its certificate is installed."""
        return self.folder / "renewal.key"

    @property
    def key_path(self) -> Path:
        return self.current / "device.key"

    @property
    def cert_path(self) -> Path:
        return self.current / "device.crt"

    @property
    def chain_path(self) -> Path:
        return self.current / "chain.pem"

    @property
    def info_path(self) -> Path:
        return self.current / "enrollment.json"

    def exists(self) -> bool:
        return self.info_path.exists()

    def info(self) -> dict[str, Any]:
        try:
            data = json.loads(self.info_path.read_text())
        except (OSError, ValueError) as exc:
            raise EnrollError(f"{self.info_path} cannot be read: {exc}") from None
        if not isinstance(data, dict):
            raise EnrollError(f"{self.info_path} is not a JSON object")
        return data

    def certificate(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise EnrollError(f"{self.cert_path} cannot be read: {exc}") from None

    def install(
        self,
        key: ec.EllipticCurvePrivateKey,
        cert_pem: bytes,
        chain_pem: bytes,
        info: dict[str, Any],
    ) -> None:
        """Write a new version folder in full (each file synced), then switch ``current.json`` to
        it atomically; the versions no longer in force are removed last (a crash before that
        leaves only litter, cleared by the next install)."""
        version = self.folder / f"v-{x509.load_pem_x509_certificate(cert_pem).serial_number:x}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.folder.chmod(0o700)
            if version.exists() and version != self.current:
                shutil.rmtree(version)  # litter of an install that crashed before its switch
            version.mkdir(mode=0o700, exist_ok=True)
            _write(version / "chain.pem", chain_pem)
            _write(version / "device.crt", cert_pem)
            write_private_key(key, version / "device.key")
            _fsync(version / "device.key")
            info_json = json.dumps(info, indent=2, sort_keys=True).encode()
            _write(version / "enrollment.json", info_json)
            _fsync(version)
            _write(self.pointer_path, json.dumps({"version": version.name}).encode())
        except OSError as exc:
            raise EnrollError(f"cannot write the identity into {version}: {exc}") from None
        # From here the new identity is in force: what fails now only leaves litter behind.
        with contextlib.suppress(OSError):
            _fsync(self.folder)
        self._remove_all_but(version)

    def _remove_all_but(self, version: Path) -> None:
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry in (version, self.pointer_path):
                continue
            if entry.is_dir() and VERSION_NAME.fullmatch(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name in STALE_FILES or entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    entry.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, synced to disk before the rename."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def settings_from_identity(settings: DeviceSettings) -> dict[str, Any]:
    """Values for the settings left unset, from an enrolled identity in ``settings.data_dir``
    (nothing when the device is not enrolled). Raise ``EnrollError`` when the identity names
    another device than ``settings.device_id``."""
    identity = Identity.of(settings.data_dir).pinned()
    if not identity.exists():
        return {}
    info = identity.info()
    enrolled = str(info.get("device_id", ""))
    if enrolled != settings.device_id:
        raise EnrollError(
            f"{identity.folder} holds the identity of device {enrolled!r}, "
            f"but device_id is {settings.device_id!r}"
        )
    updates: dict[str, Any] = {}
    if settings.key_file is None:
        updates["key_file"] = identity.key_path
    if settings.server_public_key is None and info.get("server_public_key"):
        updates["server_public_key"] = str(info["server_public_key"])
    if not settings.mqtt.tls:
        updates["mqtt"] = settings.mqtt.model_copy(
            update={
                "host": str(info.get("broker_host", settings.mqtt.host)),
                "port": int(info.get("broker_port", settings.mqtt.port)),
                "ca_file": identity.chain_path,
                "cert_file": identity.cert_path,
                "key_file": identity.key_path,
            }
        )
    return updates


def renewed_mqtt(settings: DeviceSettings) -> MqttSettings | None:
    """``settings.mqtt`` with the TLS files of the identity now in force, when the connection
    takes them from the identity (None when its TLS files are configured elsewhere)."""
    identity = Identity.of(settings.data_dir)
    cert_file = settings.mqtt.cert_file
    if cert_file is None or not cert_file.is_relative_to(identity.folder):
        return None
    current = identity.pinned()
    return settings.mqtt.model_copy(
        update={
            "ca_file": current.chain_path,
            "cert_file": current.cert_path,
            "key_file": current.key_path,
        }
    )


# --- enrollment over HTTPS -----------------------------------------------------------------------


def api_url(server: str) -> str:
    """The API root for ``server`` (``https://host:port`` or that plus ``/api/v1``); HTTPS only."""
    url = server.rstrip("/")
    if not url.lower().startswith("https://"):
        raise EnrollError(f"server URL {server!r} must start with https:// (enrollment is secret)")
    return url if url.endswith(API_PATH) else url + API_PATH


def _context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise EnrollError(f"CA file {ca_file} cannot be used: {exc}") from None


def post_json(url: str, body: dict[str, Any], ca_file: Path | None) -> dict[str, Any]:
    """POST ``body``; the answer's JSON. The server's certificate must verify against
    ``ca_file`` (or the system's CAs); an error answer becomes ``EnrollError`` with its message."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, context=_context(ca_file), timeout=TIMEOUT_S) as r:
            data = r.read(MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        raise EnrollError(f"the server refused ({exc.code}): {_error_message(exc)}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise EnrollError(
                f"the server's certificate does not verify against "
                f"{ca_file or 'the system CAs'}: {reason.verify_message}"
            ) from None
        raise EnrollError(f"cannot reach {url}: {reason}") from None
    except (TimeoutError, OSError) as exc:
        raise EnrollError(f"cannot reach {url}: {exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise EnrollError(f"{url} did not answer with JSON") from None
    if not isinstance(answer, dict):
        raise EnrollError(f"{url} did not answer with a JSON object")
    return answer


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(MAX_ANSWER_BYTES))
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(exc.reason)
    retry = exc.headers.get("Retry-After")
    return f"{message} (retry after {retry} s)" if retry and exc.code == 429 else message


def _checked_answer(
    answer: dict[str, Any], key: ec.EllipticCurvePrivateKey, device_id: str
) -> tuple[bytes, bytes, dict[str, Any]]:
    """The certificate and chain of an answer, checked: they match our key and device id, the
    certificate chains to the chain's first CA; and the rest of what we keep."""
    try:
        cert_pem = str(answer["certificate"]).encode()
        chain_pem = str(answer["chain"]).encode()
        cert = x509.load_pem_x509_certificate(cert_pem)
        chain = x509.load_pem_x509_certificates(chain_pem)
        ed25519_public_key_from_b64(str(answer["server_public_key"]))
        info = {
            "server_public_key": str(answer["server_public_key"]),
            "broker_host": str(answer["broker_host"]),
            "broker_port": int(answer["broker_port"]),
            "desired_version": int(answer.get("desired_version", 0)),
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise EnrollError(f"the server's answer is not usable: {exc}") from None
    if cert.public_key() != key.public_key():
        raise EnrollError("the certificate the server sent is not for this device's key")
    if common_name(cert) != device_id:
        raise EnrollError(f"the certificate names {common_name(cert)!r}, not {device_id!r}")
    _check_chain(cert, chain)
    return cert_pem, chain_pem, info


def _check_chain(cert: x509.Certificate, chain: list[x509.Certificate]) -> None:
    try:
        verify_chain(cert, chain)
    except IdentityError as exc:
        raise EnrollError(str(exc)) from None


def enroll(
    settings: DeviceSettings,
    server: str,
    code: str,
    *,
    serial: str,
    ca_file: Path | None,
    clock: Clock = utc_now,
) -> Identity:
    """Make a key here, send a CSR with ``serial`` and ``code``, install what comes back; the
    request carries the time of ``clock`` (the server refuses a clock far off)."""
    identity = Identity.of(settings.data_dir)
    if identity.exists():
        raise EnrollError(
            f"this device is already enrolled ({identity.folder}); remove that folder to enroll anew"
        )
    url = api_url(server)
    key = generate_key()
    csr = make_csr(key, settings.device_id, serial)
    when = clock().astimezone(UTC).isoformat()
    body = {"serial": serial, "code": code, "csr": csr.decode(), "time": when}
    answer = post_json(f"{url}/enroll", body, ca_file)
    cert_pem, chain_pem, info = _checked_answer(answer, key, settings.device_id)
    info.update(
        device_id=settings.device_id,
        serial=serial,
        server=url,
        server_ca_file=str(ca_file.resolve()) if ca_file is not None else None,
        how="enroll",
        at=when,
    )
    identity.install(key, cert_pem, chain_pem, info)
    return identity


# --- renewal -------------------------------------------------------------------------------------


def renewal_due(cert: x509.Certificate, now: datetime, fraction: float = RENEW_FRACTION) -> bool:
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime * fraction


def renew(settings: DeviceSettings, *, clock: Clock = utc_now) -> Identity:
    """A new key and certificate, signed for with the current key (which the server checks)."""
    identity = Identity.of(settings.data_dir)
    current = identity.pinned()
    if not current.exists():
        raise EnrollError("this device is not enrolled (resonera-device enroll)")
    info = current.info()
    server = info.get("server")
    if not server:
        raise EnrollError("this device was installed from a bundle and has no server to renew with")
    current_key = load_private_key(current.key_path)
    cert_pem = current.cert_path.read_bytes()
    key = _pending_key(identity, current_key)
    csr = make_csr(key, settings.device_id, str(info["serial"]))
    when = clock().astimezone(UTC).isoformat()
    payload = renewal_payload(cert_pem, csr, when)
    signature = base64.b64encode(current_key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    ca = info.get("server_ca_file")
    answer = post_json(
        f"{server}/enroll/renew",
        {
            "certificate": cert_pem.decode(),
            "csr": csr.decode(),
            "time": when,
            "signature": signature,
        },
        Path(ca) if ca else None,
    )
    new_cert, chain_pem, fresh = _checked_answer(answer, key, settings.device_id)
    info.update(fresh, how="renew", at=when)
    identity.install(key, new_cert, chain_pem, info)
    return identity


def _pending_key(
    identity: Identity, current: ec.EllipticCurvePrivateKey
) -> ec.EllipticCurvePrivateKey:
    """The new key of this renewal, kept on disk until installed: if the answer is lost (a crash
    after the server signed), the retry asks with the same key and the server sends the same
    certificate again instead of refusing a superseded one."""
    path = identity.pending_key_path
    if path.exists():
        try:
            pending = load_private_key(path)
        except IdentityError as exc:
            log.warning("discarding the unreadable pending renewal key: %s", exc)
        else:
            # the same as the current key: its install finished, but not the cleanup after it
            if pending.public_key() != current.public_key():
                return pending
    key = generate_key()
    try:
        write_private_key(key, path)
        _fsync(path)
    except OSError as exc:
        raise EnrollError(f"cannot write {path}: {exc}") from None
    return key


def renew_if_due(settings: DeviceSettings, *, clock: Clock = utc_now) -> bool:
    """Renew when less than 30 % of the certificate's lifetime is left; True if renewed. Meant
    for the agent's start and a daily timer: failures are logged, never raised (the current
    certificate keeps working until it expires, and the next try comes)."""
    identity = Identity.of(settings.data_dir)
    if not identity.exists():
        return False
    try:
        if not renewal_due(identity.certificate(), clock()):
            return False
        renew(settings, clock=clock)
    except (EnrollError, IdentityError) as exc:
        log.warning("certificate renewal failed (will try again): %s", exc)
        return False
    log.info("renewed the device certificate")
    return True


# --- factory bundle ------------------------------------------------------------------------------


def install_bundle(
    settings: DeviceSettings, folder: Path, fleet_ca: Path, *, clock: Clock = utc_now
) -> Identity:
    """Verify the bundle in ``folder`` against the fleet root certificate ``fleet_ca`` and install
    it; a tampered or foreign bundle is refused and nothing is written."""
    identity = Identity.of(settings.data_dir)
    if identity.exists():
        raise EnrollError(
            f"this device is already enrolled ({identity.folder}); remove that folder first"
        )
    try:
        root = x509.load_pem_x509_certificate(fleet_ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise EnrollError(f"fleet CA {fleet_ca} cannot be read: {exc}") from None
    bundle = verify_bundle(folder, root)
    if bundle.device_id != settings.device_id:
        raise EnrollError(
            f"the bundle is for device {bundle.device_id!r}, this is {settings.device_id!r}"
        )
    key = serialization.load_pem_private_key(bundle.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # verify_bundle checked it
    manifest = bundle.manifest
    info = {
        "device_id": bundle.device_id,
        "serial": str(manifest["serial"]),
        "server_public_key": str(manifest["server_public_key"]),
        "broker_host": str(manifest["broker_host"]),
        "broker_port": int(manifest["broker_port"]),
        "desired_version": 0,
        "server": api_url(str(manifest["server"])) if manifest.get("server") else None,
        "server_ca_file": str(settings.enroll_ca_file) if settings.enroll_ca_file else None,
        "how": "bundle",
        "at": clock().isoformat(),
    }
    identity.install(key, bundle.cert_pem, bundle.chain_pem, info)
    return identity


#: Where a Raspberry Pi–class board exposes its serial number.
BOARD_SERIAL_FILES: Final = (
    Path("/proc/device-tree/serial-number"),
    Path("/sys/firmware/devicetree/base/serial-number"),
)


def board_serial() -> str | None:
    """The board's serial number, when the board exposes one."""
    for path in BOARD_SERIAL_FILES:
        try:
            value = path.read_bytes().rstrip(b"\0\n").decode("ascii", "replace").strip()
        except OSError:
            continue
        if value:
            return value
    return None


def enroll_command(
    settings: DeviceSettings,
    *,
    server: str | None,
    code: str | None,
    serial: str | None,
    ca_file: Path | None,
    bundle: Path | None,
    fleet_ca: Path | None,
) -> str:
    """What ``resonera-device enroll`` does; the line to print."""
    if bundle is not None:
        if fleet_ca is None:
            raise EnrollError("--bundle needs --fleet-ca FILE (the fleet root the device trusts)")
        identity = install_bundle(settings, bundle, fleet_ca)
        return f"installed the bundle for {settings.device_id!r} into {identity.folder}"
    if server is None or code is None:
        raise EnrollError("give --server URL and --code CODE (or --bundle DIR)")
    serial = serial or board_serial()
    if serial is None:
        raise EnrollError("this board does not expose a serial number: give --serial")
    identity = enroll(settings, server, code, serial=serial, ca_file=ca_file)
    cert = identity.certificate()
    return (
        f"enrolled {settings.device_id!r} (serial {serial!r}); certificate valid until "
        f"{cert.not_valid_after_utc:%Y-%m-%d}, identity in {identity.folder}"
    )


RENEW_CHECK_S: Final = 24 * 3600.0
#: When renewal is due but the outbox is not empty yet, look again this soon.
RENEW_RETRY_S: Final = 600.0


def _due(identity: Identity, now: datetime) -> bool:
    try:
        return identity.exists() and renewal_due(identity.certificate(), now)
    except EnrollError as exc:
        log.warning("cannot check the certificate's expiry: %s", exc)
        return False


def renew_daily(
    settings: DeviceSettings,
    stop: threading.Event,
    on_renewed: Callable[[ec.EllipticCurvePrivateKey], None],
    *,
    ready: Callable[[], bool] = lambda: True,
    interval_s: float = RENEW_CHECK_S,
    clock: Clock = utc_now,
) -> None:
    """Check at once, then every ``interval_s`` until ``stop``: renew when due and hand the new
    key to ``on_renewed`` (the agent signs with it from then on and reconnects to the broker with
    the new certificate: ``renewed_mqtt``, ``DeviceSync.reconnect``).

    The server checks a device's messages against its newest key only, so renewal waits until
    ``ready()`` (the agent: the outbox is empty): nothing signed with the old key is then in flight."""
    identity = Identity.of(settings.data_dir)
    while True:
        wait = interval_s
        if _due(identity, clock()):
            if not ready():
                wait = min(interval_s, RENEW_RETRY_S)
            elif renew_if_due(settings, clock=clock):
                on_renewed(load_private_key(identity.key_path))
        if stop.wait(wait):
            return
