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
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from resonera.common.agent_update import UpdatePublicKeys
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


class EnrollmentSettings(BaseModel):
    """Enrollment over HTTPS (``/api/v1/enroll``): the online issuing CA and what devices are told.
    Without ``issuing_ca_dir`` enrollment answers 503 (devices then come with factory bundles)."""

    model_config = ConfigDict(extra="forbid")

    #: Folder of the issuing CA (``resonera-provision ca issuing``); its key is encrypted with
    #: ``issuing_passphrase`` (or ``RESONERA_SERVER_ENROLLMENT__ISSUING_PASSPHRASE``).
    issuing_ca_dir: Path | None = None
    issuing_passphrase: SecretStr | None = None
    #: The broker address handed to enrolled devices (its mutual-TLS listener).
    broker_host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    broker_port: int = Field(default=8883, ge=1, le=65535)
    cert_days: int = Field(default=90, ge=1, le=825)
    #: Failed code attempts per serial and per client address within ``window_s`` before 429.
    max_failures_per_serial: int = Field(default=5, ge=1, le=1000)
    max_failures_per_client: int = Field(default=20, ge=1, le=10000)
    window_s: int = Field(default=900, ge=1, le=24 * 3600)
    #: How far a renewal request's time may be from the server's clock.
    max_clock_skew_s: int = Field(default=300, ge=1, le=3600)
    #: Run after revoking a device on the issuing CA's CRL, so the broker reads the new CRL:
    #: an argument list, no shell (e.g. ``["systemctl", "reload", "mosquitto"]``).
    broker_reload_command: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1
    )
    broker_reload_timeout_s: float = Field(default=30.0, gt=0, le=600)


class LoginLimitSettings(BaseModel):
    """Sign-in limits (``ratelimit.FailureLimiter``): failed sign-ins per client address and per
    account within ``window_s``; beyond the free ones each further attempt waits (429 with
    ``Retry-After``) ``first_delay_s``, doubling with every failure, up to the maximum. Nothing
    ever locks an account for good."""

    model_config = ConfigDict(extra="forbid")

    window_s: int = Field(default=900, ge=60, le=24 * 3600)
    free_failures_per_client: int = Field(default=5, ge=1, le=1000)
    #: Each address adds at most ``free_failures_per_client`` to an account's count, so one
    #: address alone (a stranger's) never slows down the account's owner.
    free_failures_per_account: int = Field(default=10, ge=2, le=10000)
    first_delay_s: float = Field(default=1.0, gt=0, le=300)
    max_delay_per_client_s: int = Field(default=900, ge=1, le=24 * 3600)
    #: Kept short: every address waits this long at most when an account is under attack,
    #: its owner included.
    max_delay_per_account_s: int = Field(default=60, ge=1, le=3600)

    @model_validator(mode="after")
    def _account_above_client(self) -> LoginLimitSettings:
        if self.free_failures_per_account <= self.free_failures_per_client:
            raise ValueError(
                "free_failures_per_account must be greater than free_failures_per_client "
                "(else one address alone could slow down an account's owner)"
            )
        return self


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
    #: Serve HTTPS with this certificate chain and key (PEM). Devices enroll over HTTPS only; plain
    #: http is for loopback behind a TLS-terminating proxy.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Over that HTTPS, ask clients for a certificate and verify one against these CAs (PEM):
    #: devices fetch background files with theirs (``tls_peer.py``). None: the issuing CA's chain
    #: when ``enrollment.issuing_ca_dir`` is set, else no client certificates are asked for.
    tls_client_ca_file: Path | None = None
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
    #: Failed sign-ins per client address and per account: progressive delay, never a lockout.
    login: LoginLimitSettings = Field(default_factory=LoginLimitSettings)
    #: Request bodies above this are refused with 413 before they are read.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)

    #: Patient-data keys (AES-256-GCM), one ``<key id> <base64 32 bytes>`` per line; the last line
    #: encrypts, every line decrypts (rotation). Or the same text in ``patient_keys``.
    patient_key_file: Path | None = None
    patient_keys: SecretStr | None = None
    #: Ed25519 private key (PEM, PKCS#8) that signs the desired state; demo: a throwaway key.
    desired_signing_key_file: Path | None = None
    enrollment: EnrollmentSettings = Field(default_factory=EnrollmentSettings)
    #: Files the server makes (cached program previews under ``previews/``); safe to empty.
    data_dir: Path = Path("./resonera-data")
    #: Previews render at most this many seconds of a program (a 1-hour program previews fast).
    preview_max_s: float = Field(default=60.0, gt=0.0, le=600.0)
    #: Dashboard: a browser session ends after this long without a request, and this long after
    #: sign-in whatever happens.
    web_idle_timeout_s: int = Field(default=1800, ge=60, le=24 * 3600)
    web_session_max_s: int = Field(default=12 * 3600, ge=300, le=7 * 24 * 3600)
    #: The dashboard cookies' Secure flag. None: Secure when the request came over HTTPS (behind
    #: a proxy: uvicorn's forwarded headers); false only for plain http on loopback.
    web_cookie_secure: bool | None = None
    #: Ingest believes a device's times (envelope ``time``, a session's ``started_at`` and
    #: ``ended_at``, an event's ``at``, a check-in's ``answered_at``) up to this far after the
    #: receive time (clock skew; also the slack at an assignment's ends) ...
    device_time_skew_s: int = Field(default=300, ge=1, le=24 * 3600)
    #: ... and up to this far before it (a device offline for weeks keeps its records).
    device_time_max_age_days: int = Field(default=90, ge=1, le=3650)
    #: The update keys' public halves (base64 raw Ed25519, as ``resonera-provision update-key
    #: show`` prints them): an uploaded agent bundle's manifest must be signed by one of them.
    #: Several during a key rotation; none: uploads are refused (docs/updates.md).
    update_public_keys: UpdatePublicKeys = Field(default_factory=list, max_length=16)

    def checked_for_start(self, source: str = "settings") -> ServerSettings:
        """These settings, ready to serve: raise ``ConfigError`` for a missing or short JWT secret
        or missing patient keys outside demo mode; in demo mode fill in a random JWT secret."""
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError(f"{source}: tls_cert_file and tls_key_file must be set together")
        for name, tls_path in (
            ("tls_cert_file", self.tls_cert_file),
            ("tls_key_file", self.tls_key_file),
        ):
            if tls_path is not None and not tls_path.is_file():
                raise ConfigError(f"{source}: {name} {tls_path} is not a readable file")
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
