"""Server settings: ``RESONERA_SERVER_*`` environment variables over a TOML file over defaults.

Nested names use ``__`` (``RESONERA_SERVER_MQTT__PORT=1883``). Load with
``common.settings.load_settings(ServerSettings, path)``, then call ``checked_for_start()`` before
serving: it refuses a missing or weak API token outside demo mode (and makes one up in demo mode).
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Final

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from resonera.common.errors import ConfigError
from resonera.common.settings import MqttSettings, ResoneraSettings

MIN_TOKEN_CHARS: Final = 24
TOKEN_HINT: Final = (
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

    #: SQLAlchemy URL: ``sqlite:///path.db`` on one machine, ``postgresql+psycopg://...`` later.
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
    #: Bearer token for the API; required (≥ 24 characters) outside demo mode.
    api_token: SecretStr | None = None
    #: Demo mode: a missing API token is generated at start and shown once.
    demo: bool = False

    def checked_for_start(self, source: str = "settings") -> ServerSettings:
        """These settings, ready to serve: raise ``ConfigError`` for a missing or short API token
        outside demo mode; in demo mode fill in a random token if none is set."""
        if self.api_token is None:
            if self.demo:
                return self.model_copy(update={"api_token": SecretStr(secrets.token_urlsafe(32))})
            raise ConfigError(
                f"{source}: api_token must be set outside demo mode "
                f"(api_token in the config file or RESONERA_SERVER_API_TOKEN; {TOKEN_HINT})"
            )
        length = len(self.api_token.get_secret_value())
        if not self.demo and length < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"{source}: api_token has {length} characters, at least {MIN_TOKEN_CHARS} "
                f"are needed ({TOKEN_HINT})"
            )
        return self

    def api_token_value(self) -> str:
        """The token as text; raise ``ConfigError`` if none is set (see ``checked_for_start``)."""
        if self.api_token is None:
            raise ConfigError("api_token is not set (call checked_for_start() before serving)")
        return self.api_token.get_secret_value()
