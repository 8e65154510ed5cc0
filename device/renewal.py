"""Certificate renewal: due once less than 30 % of the certificate's lifetime is left, checked at
the agent's start and daily (``renew_daily``), whatever waits in the outbox: the server verifies a
message queued before a renewal with the key the device had then (``server/ingest_checks.py``:
``check_sender``'s earlier keys), so a device whose outbox never empties (shut out by quarantine,
offline for weeks) still renews before its certificate ends. The new key is made and kept on disk
before the request (``Identity.renewal_key``), so a lost answer is asked for again with the same
key; the new certificate is installed whole (``Identity.install``). ``renewed_mqtt`` gives the
broker connection the new files.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from resonera.common.clock import Clock, utc_now
from resonera.common.identity import IdentityError, load_private_key, make_csr
from resonera.device.enroll_http import post_json
from resonera.device.enroll_protocol import checked_answer, renewal_request
from resonera.device.identity import EnrollError, Identity

if TYPE_CHECKING:
    from resonera.common.settings import MqttSettings
    from resonera.device.settings import DeviceSettings

log = logging.getLogger(__name__)

#: Renew once less than this share of the certificate's lifetime is left.
RENEW_FRACTION: Final = 0.3
RENEW_CHECK_S: Final = 24 * 3600.0


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
    key = identity.renewal_key(current_key)
    csr = make_csr(key, settings.device_id, str(info["serial"]))
    when = clock().astimezone(UTC).isoformat()
    ca = info.get("server_ca_file")
    answer = post_json(
        f"{server}/enroll/renew",
        renewal_request(current_key, cert_pem, csr, when),
        Path(ca) if ca else None,
    )
    new_cert, chain_pem, fresh = checked_answer(answer, key, settings.device_id)
    info.update(fresh, how="renew", at=when)
    identity.install(key, new_cert, chain_pem, info)
    return identity


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
    interval_s: float = RENEW_CHECK_S,
    clock: Clock = utc_now,
) -> None:
    """Check at once, then every ``interval_s`` until ``stop``: renew when due and hand the new
    key to ``on_renewed`` (the agent signs with it from then on and reconnects to the broker with
    the new certificate: ``renewed_mqtt``, ``DeviceSync.reconnect``)."""
    identity = Identity.of(settings.data_dir)
    while True:
        if _due(identity, clock()) and renew_if_due(settings, clock=clock):
            on_renewed(load_private_key(identity.key_path))
        if stop.wait(interval_s):
            return


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
