"""The device agent's settings: a TOML file plus ``RESONERA_DEVICE_*`` environment variables.

The settings sit above what they describe and open: the local store (``store.py``, whose
``OutboxLimits`` they carry) and the enrolled identity (``identity.py``), which fills the settings
left unset. Neither imports the settings; enrollment and renewal (``enroll.py``, ``renewal.py``),
which take them, sit above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from resonera.common import topics
from resonera.common.agent_update import UpdatePublicKeys
from resonera.common.errors import ProtocolError
from resonera.common.identity import load_private_key
from resonera.common.profile import HearingProfile
from resonera.common.settings import MqttSettings, ResoneraSettings
from resonera.common.signing import ed25519_public_key_from_b64
from resonera.device.identity import EnrollError, Identity
from resonera.device.store import DeviceStore, OutboxLimits

# OutboxLimits is the store's (it bounds the outbox the store thins); it is a part of these settings
# and importable from here, as callers know it.
__all__ = ["DeviceSettings", "OutboxLimits", "SyncSettings", "settings_from_identity"]


class SyncSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: An unacknowledged message is sent again after this long (the server acks duplicates too).
    resend_after_s: float = Field(default=15.0, gt=0.0, le=3600.0)
    #: Backlog drain rate bound, so a device that was offline for weeks does not flood the broker.
    max_messages_per_s: float = Field(default=50.0, gt=0.0, le=10_000.0)
    batch_size: int = Field(default=50, ge=1, le=1000)
    #: Broker-side session kept while offline, so acks sent meanwhile still arrive.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    #: After a reconnect, resends wait a random 0..this long, so a fleet does not stampede the
    #: broker that just came back; unacked messages then back off (doubling, with jitter).
    reconnect_jitter_s: float = Field(default=1.0, ge=0.0, le=300.0)
    max_resend_after_s: float = Field(default=300.0, gt=0.0, le=24 * 3600.0)
    #: ``resonera-device run`` queues a ``metrics`` message (outbox depth, link, versions) this often.
    telemetry_interval_s: float = Field(default=300.0, ge=1.0, le=24 * 3600.0)


class DeviceSettings(ResoneraSettings):
    model_config = SettingsConfigDict(
        env_prefix="RESONERA_DEVICE_", env_nested_delimiter="__", extra="forbid"
    )

    device_id: str
    data_dir: Path = Path("resonera-device-data")
    mqtt: MqttSettings = MqttSettings()
    sync: SyncSettings = SyncSettings()
    #: pyserial URL or path of the safety MCU's port. Without it the device plays only in simulation.
    serial_url: str | None = None
    #: Play without the safety MCU's consent. Marked on every record; never the default.
    simulation: bool = False
    arm_timeout_s: float = Field(default=3.0, gt=0.0, le=60.0)
    sink: Literal["auto", "pyaudio", "wav", "null"] = "auto"
    #: Where the WAV sink writes (sink "wav", or "auto" when there is no sound card).
    wav_path: Path | None = None
    output_device: str | None = None
    #: The device's private key (PEM, that of its certificate); messages are signed with it.
    key_file: Path | None = None
    #: The output chain's calibration (TOML); without it the device does not play.
    calibration_file: Path | None = None
    #: The server's Ed25519 public key (base64 of the raw 32 bytes), pinned at provisioning: only
    #: desired states it signed are applied. Without it every desired state is refused.
    server_public_key: str | None = None
    #: The AES-GCM key that seals health data at rest (default ``data_dir/keys/data.key``).
    data_key_file: Path | None = None
    outbox: OutboxLimits = OutboxLimits()
    #: The person's limits until the server's signed desired state brings them.
    profile: HearingProfile = HearingProfile()
    sample_rate: Literal[44100, 48000] = 48000
    block_frames: int = Field(default=1024, ge=64, le=8192)
    #: CA certificate(s) that the enrollment server's HTTPS certificate must verify against
    #: (``resonera-device enroll``, background files; default: the enrolled identity's, else the
    #: system's CAs).
    enroll_ca_file: Path | None = None
    #: The server's HTTPS API root (``https://host:port/api/v1``), where prescribed background
    #: files are fetched with the device's client certificate; default: the enrolled identity's.
    server_url: str | None = None
    #: Agent updates (issue 25, ``docs/updates.md``): the update keys pinned at provisioning
    #: (base64 of raw Ed25519 public keys; a bundle must be signed by one of them; a confirmed
    #: bundle's ``update_keys`` replace them, kept in ``data_dir/agent/state.json``).
    update_public_keys: UpdatePublicKeys = Field(default_factory=list)
    #: How long a new agent on trial has to prove itself healthy before the device goes back.
    update_health_timeout_s: float = Field(default=120.0, ge=10.0, le=3600.0)
    #: Take the updates the signed desired state asks for (off: none is fetched or installed).
    updates_enabled: bool = True

    @field_validator("server_url")
    @classmethod
    def _server_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError(f"server_url must start with https://, not {value!r}")
        return value.rstrip("/") if value is not None else None

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        try:
            return topics.check_device_id(value)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _enrolled_identity(self) -> DeviceSettings:
        # An enrolled device's key, certificate, chain, pinned key and broker address (in
        # data_dir/identity) fill what the file leaves unset, so `run` needs nothing more.
        try:
            updates = settings_from_identity(self)
        except EnrollError as exc:
            raise ValueError(str(exc)) from None
        for name, value in updates.items():
            setattr(self, name, value)
        return self

    @property
    def store_path(self) -> Path:
        return self.data_dir / "device.db"

    def open_store(self, *, read_only: bool = False) -> DeviceStore:
        """The local store, signing queued messages with the device key when there is one.

        ``read_only`` (the commands that only look): nothing is created, migrated or signed;
        ``NothingStored`` ("no store at …") when the device has none yet."""
        if read_only:
            return DeviceStore(
                self.store_path,
                data_key_path=self.data_key_path,
                outbox_limits=self.outbox,
                read_only=True,
            )
        key = load_private_key(self.key_file) if self.key_file is not None else None
        return DeviceStore(
            self.store_path,
            signing_key=key,
            data_key_path=self.data_key_path,
            outbox_limits=self.outbox,
        )

    @property
    def data_key_path(self) -> Path:
        return self.data_key_file or self.data_dir / "keys" / "data.key"

    @property
    def control_socket_path(self) -> Path:
        """Where ``resonera-device run`` listens for ``play``, ``stop`` and ``status``."""
        return self.data_dir / "run.sock"

    def pinned_server_key(self) -> Ed25519PublicKey | None:
        """The pinned server key, or None when none is configured (``SignatureError`` if bad)."""
        if self.server_public_key is None:
            return None
        return ed25519_public_key_from_b64(self.server_public_key)

    @property
    def dose_ledger_path(self) -> Path:
        return self.data_dir / "dose.db"

    @property
    def default_wav_path(self) -> Path:
        return self.wav_path or self.data_dir / "last-session.wav"


def settings_from_identity(settings: DeviceSettings) -> dict[str, Any]:
    """Values for the settings left unset, from an enrolled identity in ``settings.data_dir``
    (nothing when the device is not enrolled). Raise ``EnrollError`` when the identity names
    another device than ``settings.device_id``."""
    identity = Identity.of(settings.data_dir).pinned()
    if not identity.exists():
        return {}
    info = identity.info()
    enrolled = str(info.get("device_id", ""))
    if enrolled != settings.device_id:
        raise EnrollError(
            f"{identity.folder} holds the identity of device {enrolled!r}, "
            f"but device_id is {settings.device_id!r}"
        )
    updates: dict[str, Any] = {}
    if settings.key_file is None:
        updates["key_file"] = identity.key_path
    if settings.server_public_key is None and info.get("server_public_key"):
        updates["server_public_key"] = str(info["server_public_key"])
    if not settings.update_public_keys and info.get("update_public_keys"):
        updates["update_public_keys"] = [str(key) for key in info["update_public_keys"]]
    if settings.server_url is None and info.get("server"):
        updates["server_url"] = str(info["server"])
    if settings.enroll_ca_file is None and info.get("server_ca_file"):
        updates["enroll_ca_file"] = Path(str(info["server_ca_file"]))
    if not settings.mqtt.tls:
        updates["mqtt"] = settings.mqtt.model_copy(
            update={
                "host": str(info.get("broker_host", settings.mqtt.host)),
                "port": int(info.get("broker_port", settings.mqtt.port)),
                "ca_file": identity.chain_path,
                "cert_file": identity.cert_path,
                "key_file": identity.key_path,
            }
        )
    return updates
