"""The server's notices to a device it shuts out (``docs/shut-out.md``): signed with the desired
state's key and published retained on the device's desired-state topic, which the device reads
even while its messages are refused.

- ``revoked``: the device was revoked (``DesiredService.notify_revoked`` after the revocation's
  commit, and again by ingest when a revoked device's message arrives);
- ``quarantined``: ingest quarantines a registered device's message for its sender (its signature
  does not verify with any of its keys): every message it sends would be.

Ingest sends one the first time it refuses a device's message for its sender, then at most once per
``every`` per device and notice (``ShutOutNotices``), so a device resending its outbox does not make
the server sign and publish a notice per message. Messages refused for their content (checks 4 to
7 of ``ingest``) are acknowledged and dropped by the device: they shut nothing out and send none.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

from resonera.common.clock import Clock, utc_now
from resonera.common.desired import MAX_NOTICE_REASON, NOTICE_KIND, NoticeName
from resonera.server.crypto import DesiredStateSigner, Ed25519Signer, sign_document
from resonera.server.ingest_checks import RegisteredDevice
from resonera.server.settings import ServerSettings

log = logging.getLogger(__name__)

NOTICE_VERSION: Final = 1
#: What the person hears and reads when the device was revoked.
REVOKED_REASON: Final = (
    "this device was revoked on the server, which no longer takes its records; they are kept on "
    "the device. Ask your clinic for a new device certificate."
)
#: Ingest tells a device again at most this often (per device and notice).
NOTICE_EVERY: Final = timedelta(hours=1)
#: Devices whose last notice time is remembered; beyond, the oldest are forgotten (and may be told
#: again sooner): a bound, since device ids come from messages.
REMEMBERED_DEVICES: Final = 10_000


def quarantined_reason(refusal: str) -> str:
    """The words of a ``quarantined`` notice for ingest's refusal of the sender."""
    text = (
        f"the server sets this device's messages aside ({refusal}); they are kept on the "
        "device. Ask your clinic to check its registration."
    )
    return text[:MAX_NOTICE_REASON]


def notice_payload(
    signer: DesiredStateSigner, device_id: str, notice: NoticeName, reason: str, now: datetime
) -> bytes:
    """A signed notice, as published: ``{"v", "kind": "notice", "device", "notice", "reason",
    "issued_at", "sig"}`` (the device verifies it with ``common.desired.verify_notice``)."""
    content: dict[str, Any] = {
        "v": NOTICE_VERSION,
        "kind": NOTICE_KIND,
        "device": device_id,
        "notice": notice,
        "reason": reason[:MAX_NOTICE_REASON],
        "issued_at": now.isoformat(),
    }
    document = sign_document(signer, content)
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class ShutOutNotices:
    """Ingest's notices, rate-bounded: ``sender_refused`` for each message quarantined for its
    sender; ``publish(device_id, payload)`` puts a notice on the broker (retained). Thread-safe."""

    def __init__(
        self,
        signer: DesiredStateSigner,
        publish: Callable[[str, bytes], None],
        *,
        clock: Clock = utc_now,
        every: timedelta = NOTICE_EVERY,
    ) -> None:
        self._signer = signer
        self._publish = publish
        self._clock = clock
        self._every = every
        self._last: OrderedDict[tuple[str, NoticeName], datetime] = OrderedDict()
        self._lock = threading.Lock()
        #: Notices published (for the log and tests).
        self.sent = 0

    def sender_refused(self, device_id: str, device: RegisteredDevice, refusal: str) -> bool:
        """Ingest refused a message of the registered ``device_id`` for its sender (``refusal``):
        tell the device unless told within ``every``. True when a notice was published."""
        notice: NoticeName = "revoked" if device.revoked else "quarantined"
        reason = REVOKED_REASON if device.revoked else quarantined_reason(refusal)
        now = self._clock()
        key = (device_id, notice)
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._every:
                return False
            self._last[key] = now
            self._last.move_to_end(key)
            while len(self._last) > REMEMBERED_DEVICES:
                self._last.popitem(last=False)
        try:
            self._publish(device_id, notice_payload(self._signer, device_id, notice, reason, now))
        except Exception:  # ingest goes on: the next refusal after ``every`` tries again
            log.exception("publishing the %s notice of %s failed", notice, device_id)
            return False
        log.info("told %s it is %s", device_id, notice)
        self.sent += 1
        return True


def for_ingest(
    settings: ServerSettings, publish: Callable[[str, bytes], None]
) -> ShutOutNotices | None:
    """Ingest's notices, signed with the desired state's key file; None without one (a demo
    server's throwaway key is its API process's own: devices would refuse another)."""
    key_file = settings.desired_signing_key_file
    if key_file is None:
        return None
    return ShutOutNotices(Ed25519Signer.from_file(key_file), publish)
