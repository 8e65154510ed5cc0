"""What the device says to the enrollment server and what it accepts back, without I/O.

The requests (``enrollment_request``, ``renewal_request``) are the JSON bodies of ``POST /enroll``
and ``POST /enroll/renew``; ``checked_answer`` takes the server's answer apart and refuses one
whose certificate is not for this key and device or does not chain to the CA it came with.
``enroll_http.py`` carries them over HTTPS; ``enroll.py`` and ``renewal.py`` drive the steps.
"""

from __future__ import annotations

import base64
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from resonera.common.bundle import verify_chain
from resonera.common.enrollment import renewal_payload
from resonera.common.identity import IdentityError, common_name
from resonera.common.signing import SignatureError, ed25519_public_key_from_b64
from resonera.device.identity import EnrollError

API_PATH: Final = "/api/v1"


def api_url(server: str) -> str:
    """The API root for ``server`` (``https://host:port`` or that plus ``/api/v1``); HTTPS only."""
    url = server.rstrip("/")
    if not url.lower().startswith("https://"):
        raise EnrollError(f"server URL {server!r} must start with https:// (enrollment is secret)")
    return url if url.endswith(API_PATH) else url + API_PATH


def enrollment_request(code: str, serial: str, csr: bytes, when: str) -> dict[str, str]:
    """The body of ``POST /enroll``: the one-time ``code``, the board's ``serial``, the CSR and
    the device's time (``when``, ISO 8601: the server refuses a clock far off)."""
    return {"serial": serial, "code": code, "csr": csr.decode(), "time": when}


def renewal_request(
    current_key: ec.EllipticCurvePrivateKey, cert_pem: bytes, csr: bytes, when: str
) -> dict[str, str]:
    """The body of ``POST /enroll/renew``: the certificate in force and the new key's CSR, signed
    with the key in force (``renewal_payload``, which the server checks)."""
    payload = renewal_payload(cert_pem, csr, when)
    signature = base64.b64encode(current_key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    return {
        "certificate": cert_pem.decode(),
        "csr": csr.decode(),
        "time": when,
        "signature": signature,
    }


def checked_answer(
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
        update_keys = [str(key) for key in answer.get("update_public_keys") or []]
        for update_key in update_keys:  # what signs agent updates (docs/updates.md)
            ed25519_public_key_from_b64(update_key)
        info = {
            "server_public_key": str(answer["server_public_key"]),
            "update_public_keys": update_keys,
            "broker_host": str(answer["broker_host"]),
            "broker_port": int(answer["broker_port"]),
            "desired_version": int(answer.get("desired_version", 0)),
        }
    except (KeyError, ValueError, TypeError, SignatureError) as exc:
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
