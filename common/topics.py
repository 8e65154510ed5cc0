"""Every MQTT topic name, in one place (docs/architecture.md §2).

``{d}`` is the device id, which is also the CN of the device's client certificate.
"""

from __future__ import annotations

import re
from typing import Final, Literal, get_args

from resonera.common.errors import ProtocolError

PREFIX: Final = "resonera/v1/dev"

UpKind = Literal["session", "event", "metrics", "reported", "checkin", "update"]
UP_KINDS: Final[tuple[str, ...]] = get_args(UpKind)

DEVICE_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_DEVICE_ID_RE = re.compile(rf"^{DEVICE_ID_PATTERN}$")
_UP_RE = re.compile(rf"^{PREFIX}/({DEVICE_ID_PATTERN})/up/([a-z]+)$")

#: What ingest consumers subscribe to: a shared subscription splits the load between them.
INGEST_SHARE_GROUP: Final = "ingest"
UP_WILDCARD: Final = f"{PREFIX}/+/up/#"
INGEST_SHARED_SUBSCRIPTION: Final = f"$share/{INGEST_SHARE_GROUP}/{UP_WILDCARD}"


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is usable in a topic and a certificate CN, else raise."""
    if not _DEVICE_ID_RE.match(device_id):
        raise ProtocolError(
            f"device id {device_id!r} is not valid: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return device_id


#: Our services' certificate names (the server's MQTT identity, the broker, HTTPS) begin with this.
#: A device id can never contain ':', so no device certificate can carry a service's name, and the
#: broker's ACL, which knows a client only by its certificate's name, tells the two apart.
SERVICE_PREFIX: Final = "service:"


def service_identity(name: str) -> str:
    """The certificate name of service ``name`` (``resonera-server`` → ``service:resonera-server``);
    ``name`` follows the device-id rules, so the identity is one a device can never have."""
    bare = name.removeprefix(SERVICE_PREFIX)
    if not _DEVICE_ID_RE.match(bare):
        raise ProtocolError(
            f"service name {name!r} is not valid: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return SERVICE_PREFIX + bare


def is_service_identity(name: str) -> bool:
    return name.startswith(SERVICE_PREFIX) and bool(
        _DEVICE_ID_RE.match(name[len(SERVICE_PREFIX) :])
    )


def up(device_id: str, kind: UpKind) -> str:
    """Device → server topic for messages of ``kind``."""
    return f"{PREFIX}/{check_device_id(device_id)}/up/{kind}"


def desired(device_id: str) -> str:
    """Server → device, retained: the signed desired state."""
    return f"{PREFIX}/{check_device_id(device_id)}/desired"


def ack(device_id: str) -> str:
    """Server → device: the message ids the server has committed."""
    return f"{PREFIX}/{check_device_id(device_id)}/ack"


def status(device_id: str) -> str:
    """Retained presence (``online``/``offline``), set ``offline`` by the last will."""
    return f"{PREFIX}/{check_device_id(device_id)}/status"


def parse_up(topic: str) -> tuple[str, UpKind]:
    """Split an ``up`` topic into (device id, kind); raise ``ProtocolError`` for anything else."""
    match = _UP_RE.match(topic)
    if match is None:
        raise ProtocolError(
            f"topic {topic!r} is not a device up-topic ({PREFIX}/<device>/up/<kind>)"
        )
    device_id, kind = match.group(1), match.group(2)
    if kind not in UP_KINDS:
        raise ProtocolError(
            f"topic {topic!r} names unknown kind {kind!r}; known: {', '.join(UP_KINDS)}"
        )
    return device_id, kind  # type: ignore[return-value]
