"""Server settings: ``RESONERA_SERVER_*`` environment variables over a TOML file over defaults.

Nested names use ``__`` (``RESONERA_SERVER_MQTT__PORT=1883``). Load with
``common.settings.load_settings(ServerSettings, path)``, then call ``checked_for_start()`` before
serving: it refuses a missing or weak JWT secret and a missing patient-data key outside demo mode
(and makes up throwaway ones in demo mode).
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Final

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from resonera.common.errors import ConfigError
from resonera.common.settings import MqttSettings, ResoneraSettings

MIN_SECRET_CHARS: Final = 32
SECRET_HINT: Final = (
    "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
)


def default_ingest_client_id() -> str:
    """Unique per process, so two consumers on one host never take over each other's connection."""
    host = socket.gethostname().split(".")[0][:20] or "host"
    return f"resonera-ingest-{host}-{os.getpid()}-{secrets.token_hex(2)}"


class ServerSettings(ResoneraSettings):
    """What one server process needs: where to store, where to listen, which broker to read."""

    model_config = SettingsConfigDict(
        env_prefix="RESONERA_SERVER_", env_nested_delimiter="__", extra="forbid"
    )

    #: SQLAlchemy URL: ``sqlite:///path.db`` on one machine, ``postgresql+psycopg://...`` growing.
    database_url: str = Field(default="sqlite:///./resonera-server.db", min_length=1)
    http_host: str = "127.0.0.1"
    #: 0 picks a free port (tests); the address actually bound is reported at start.
    http_port: int = Field(default=8080, ge=0, le=65535)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    ingest_client_id: str = Field(
        default_factory=default_ingest_client_id, min_length=1, max_length=128
    )
    #: Subscribe ``$share/ingest/...`` so several consumers split the load. Turn off for brokers
    #: without shared subscriptions (amqtt); then run exactly one consumer.
    shared_subscription: bool = True
    #: Demo mode: missing secrets are generated at start, ``run`` migrates the database itself.
    demo: bool = False

    #: HMAC key for access tokens (JWT, HS256); ≥ 32 characters outside demo mode.
    jwt_secret: SecretStr | None = None
    access_token_ttl_s: int = Field(default=900, ge=30, le=24 * 3600)
    refresh_token_ttl_s: int = Field(default=14 * 24 * 3600, ge=300, le=90 * 24 * 3600)
    #: Failed logins in a row that lock an account, and for how long.
    lockout_failures: int = Field(default=5, ge=1, le=100)
    lockout_s: int = Field(default=900, ge=1, le=24 * 3600)
    #: Request bodies above this are refused with 413 before they are read.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)

    #: Patient-data keys (AES-256-GCM), one ``<key id> <base64 32 bytes>`` per line; the last line
    #: encrypts, every line decrypts (rotation). Or the same text in ``patient_keys``.
    patient_key_file: Path | None = None
    patient_keys: SecretStr | None = None
    #: Ed25519 private key (PEM, PKCS#8) that signs the desired state; demo: a throwaway key.
    desired_signing_key_file: Path | None = None

    def checked_for_start(self, source: str = "settings") -> ServerSettings:
        """These settings, ready to serve: raise ``ConfigError`` for a missing or short JWT secret
        or missing patient keys outside demo mode; in demo mode fill in a random JWT secret."""
        secret = self.jwt_secret
        if secret is None:
            if not self.demo:
                raise ConfigError(
                    f"{source}: jwt_secret must be set outside demo mode "
                    f"(jwt_secret in the config file or RESONERA_SERVER_JWT_SECRET; {SECRET_HINT})"
                )
            return self.model_copy(update={"jwt_secret": SecretStr(secrets.token_urlsafe(32))})
        length = len(secret.get_secret_value())
        if not self.demo and length < MIN_SECRET_CHARS:
            raise ConfigError(
                f"{source}: jwt_secret has {length} characters, at least {MIN_SECRET_CHARS} "
                f"are needed ({SECRET_HINT})"
            )
        return self

    def jwt_secret_value(self) -> str:
        """The JWT secret; raise ``ConfigError`` if none is set (see ``checked_for_start``)."""
        if self.jwt_secret is None:
            raise ConfigError("jwt_secret is not set (call checked_for_start() before serving)")
        return self.jwt_secret.get_secret_value()
