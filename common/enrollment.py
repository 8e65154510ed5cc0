"""What the device and the server must agree on for enrollment, byte for byte."""

from __future__ import annotations

from resonera.common.canonical import canonical_json


def renewal_payload(certificate_pem: bytes, csr_pem: bytes, time: str) -> bytes:
    """What a device signs to renew (ECDSA-SHA256, its current key): the canonical JSON of its
    current certificate, its new CSR and its clock (ISO 8601 with a zone), all as sent."""
    return canonical_json(
        {"certificate": certificate_pem.decode(), "csr": csr_pem.decode(), "time": time}
    )
