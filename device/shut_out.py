"""When the server will not take this device's messages (``docs/shut-out.md``): what the device
learnt, from where, and how it is kept across restarts. Pure logic and the store's meta; the MQTT
side is ``device/sync.py`` (``DeviceSync.shut_out``).

The device learns it three ways: the TLS alert the broker sends when its certificate is on the CRL
(or past its end), its own certificate past ``notAfter`` (checked at start and before each
connection attempt), and the server's signed notice on its desired-state topic
(``common.desired.verify_notice``). Shut out, it keeps its outbox, tries again seldom
(``RETRY_S``) and at once when a new certificate is installed, and is let back in by a new
certificate or the server acknowledging its messages again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from cryptography import x509

from resonera.common.identity import fingerprint
from resonera.device.store import DeviceStore

log = logging.getLogger(__name__)

ShutOutKind = Literal["revoked", "expired", "quarantined"]

#: Shut out, the device tries again (a connection, or one message) this often: once an hour.
RETRY_S: Final = 3600.0
#: The store's meta: the shut-out state (JSON; empty when let in).
META_SHUT_OUT: Final = "shut_out"
#: The store's meta: ISO time of the newest notice taken or of being let back in; a notice not
#: issued after it is refused (replay).
META_NOTICE_HELD: Final = "notice_held"

#: What the person hears and ``status`` shows, by how it was learnt (a notice brings its own).
REVOKED_BY_BROKER: Final = (
    "the server has revoked this device's certificate: it refuses the connection. Your sessions "
    "are kept on the device; ask your clinic for a new certificate."
)
EXPIRED: Final = (
    "this device's certificate expired on {date}: the server no longer lets it connect. Your "
    "sessions are kept on the device; ask your clinic to renew it."
)


@dataclass(frozen=True)
class ShutOut:
    """The server will not take this device's messages: ``kind`` ``revoked`` or ``expired`` (its
    certificate) or ``quarantined`` (its messages), ``reason`` in words for the person and
    ``status``, ``since`` the wall-clock time it was learnt. The outbox is kept meanwhile."""

    kind: ShutOutKind
    reason: str
    since: float
    #: SHA-256 of the certificate it was learnt with ("" unknown): another one lets the device
    #: try again as a new identity.
    certificate: str = ""


def tls_alert_kind(text: str) -> Literal["revoked", "expired"] | None:
    """The shut-out an SSL error's text names (OpenSSL's alert, as paho logs it or ``connect``
    raises it), or None for any other failure."""
    words = text.lower().replace("_", " ")
    if "certificate revoked" in words:
        return "revoked"
    if "certificate expired" in words:
        return "expired"
    return None


def certificate_of(cert_file: Path | None) -> x509.Certificate | None:
    """The device's certificate, or None when it has none (plain MQTT) or it cannot be read
    (connecting then says why)."""
    if cert_file is None:
        return None
    try:
        return x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return None


def certificate_id(cert_file: Path | None) -> str:
    cert = certificate_of(cert_file)
    return fingerprint(cert) if cert is not None else ""


def expired(cert_file: Path | None, now: float) -> ShutOut | None:
    """``expired`` when the certificate's ``notAfter`` is past at ``now`` (wall clock)."""
    cert = certificate_of(cert_file)
    if cert is None:
        return None
    end = cert.not_valid_after_utc
    if end.timestamp() > now:
        return None
    return ShutOut("expired", EXPIRED.format(date=end.date().isoformat()), now, fingerprint(cert))


def load(store: DeviceStore) -> ShutOut | None:
    """The shut-out kept in the store, or None (none, or unreadable: logged, and tried afresh)."""
    text = store.meta(META_SHUT_OUT)
    if not text:
        return None
    try:
        value = json.loads(text)
        return ShutOut(
            kind=value["kind"],
            reason=str(value["reason"]),
            since=float(value["since"]),
            certificate=str(value.get("certificate", "")),
        )
    except (ValueError, KeyError, TypeError):
        log.warning("the stored shut-out state is unreadable; trying to connect afresh")
        return None


def save(store: DeviceStore, shut_out: ShutOut | None) -> None:
    store.set_meta(META_SHUT_OUT, "" if shut_out is None else json.dumps(asdict(shut_out)))


def notice_held(store: DeviceStore) -> datetime | None:
    text = store.meta(META_NOTICE_HELD)
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def hold_notices_until(store: DeviceStore, when: datetime) -> None:
    """Refuse from now on any notice not issued after ``when`` (never moves back)."""
    held = notice_held(store)
    if held is None or when > held:
        store.set_meta(META_NOTICE_HELD, when.isoformat())


def wall_datetime(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)
