"""Devices' client certificates over the API's own HTTPS (mutual TLS, optional per connection).

uvicorn verifies a certificate a client presents against the CA file it is given
(``ssl_cert_reqs=CERT_OPTIONAL``: a browser or a script without one still connects), but does not
hand it to the application. ``PeerCertificateProtocol`` (uvicorn's h11 protocol) puts a verified
one in each request's scope as the ASGI TLS extension says, ``scope["extensions"]["tls"]
["client_cert_chain"]`` (PEM), and ``client_certificate`` reads it back. A route then checks what
the TLS layer cannot: that the certificate is registered to a device that is not revoked
(``Enroller.device_of``, the renewal's checks). Behind a TLS-terminating proxy there is no client
certificate to see: devices fetch from the server's own HTTPS listener.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from cryptography import x509
from fastapi import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

TLS_EXTENSION = "tls"


def _with_client_certificate(app: Any, pem: str) -> Any:
    async def with_certificate(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            extensions = dict(scope.get("extensions") or {})
            extensions[TLS_EXTENSION] = {"client_cert_chain": [pem]}
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    return with_certificate


class PeerCertificateProtocol(H11Protocol):
    """uvicorn's h11 protocol, passing a client certificate the TLS layer verified to the app."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            # one connection, one peer: the app of this connection sees its certificate
            self.app = _with_client_certificate(self.app, ssl.DER_cert_to_PEM_cert(der))


def client_certificate(request: Request) -> x509.Certificate | None:
    """The client certificate of the request's connection, verified by the TLS layer (None:
    the client presented none, or the API is not served over its own HTTPS)."""
    tls = (request.scope.get("extensions") or {}).get(TLS_EXTENSION) or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return x509.load_pem_x509_certificate(chain[0].encode())
