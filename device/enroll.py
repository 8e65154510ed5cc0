"""Enrolling the device: over HTTPS with a one-time code, or from a factory bundle; and
``resonera-device enroll``.

Either way the identity is installed whole into ``data_dir/identity/`` (``identity.py``: the layout,
and every write to it). The pieces beside this module: ``enroll_protocol.py`` (the requests and the
checks of an answer, no I/O), ``enroll_http.py`` (the HTTPS call), ``renewal.py`` (renewing the
certificate before it expires).
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from resonera.common.bundle import verify_bundle
from resonera.common.clock import Clock, utc_now
from resonera.common.identity import generate_key, make_csr
from resonera.device.enroll_http import post_json
from resonera.device.enroll_protocol import api_url, checked_answer, enrollment_request

# Kept importable from here for the callers that know them by this module (device/service.py,
# tests/enrolled_fleet.py, tests/provisioning): they moved out when the module was split by concern.
from resonera.device.identity import EnrollError, Identity
from resonera.device.renewal import renew, renew_daily, renew_if_due, renewed_mqtt

if TYPE_CHECKING:
    from resonera.device.settings import DeviceSettings

__all__ = [
    "BOARD_SERIAL_FILES",
    "EnrollError",
    "Identity",
    "board_serial",
    "enroll",
    "enroll_command",
    "install_bundle",
    "renew",
    "renew_daily",
    "renew_if_due",
    "renewed_mqtt",
]


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
    answer = post_json(f"{url}/enroll", enrollment_request(code, serial, csr, when), ca_file)
    cert_pem, chain_pem, info = checked_answer(answer, key, settings.device_id)
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
        # the keys agent updates must be signed with (none: the device takes no update)
        "update_public_keys": [str(key) for key in manifest.get("update_public_keys", [])],
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
