"""Settings from a TOML file plus environment variables, validated at start.

Environment variables (``RESONERA_DEVICE_MQTT__PORT=1883`` style, ``__`` between nested names) override
the file; the file overrides defaults. Unknown keys in the file are errors, so a typo is never silently
ignored. Every problem becomes one ``ConfigError`` line naming the file and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from resonera.common.errors import ConfigError, describe_validation_error


class MqttSettings(BaseModel):
    """How to reach the broker. TLS files are required together or not at all."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    #: MQTT 5 where the broker supports it (mosquitto 2); 3.1.1 for brokers that do not (amqtt).
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _tls_complete(self) -> MqttSettings:
        given = [f for f in (self.ca_file, self.cert_file, self.key_file) if f is not None]
        if given and len(given) != 3:
            raise ValueError("ca_file, cert_file and key_file must be given together for TLS")
        return self

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


class ResoneraSettings(BaseSettings):
    """Base for each component's settings: environment beats file beats defaults."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init_settings carries the TOML file's content, so the environment must come first.
        return env_settings, init_settings


S = TypeVar("S", bound=ResoneraSettings)


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML settings file; raise ``ConfigError`` naming the file and the problem."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None


def load_settings(cls: type[S], path: Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from ``path`` (optional), then the environment, then ``overrides`` (highest:
    values a person typed on the command line)."""
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    source = f"config file {path}" if path is not None else "settings"
    try:
        settings = cls(**data)
        if overrides:
            # model_validate skips the settings sources, so the environment cannot undo a flag.
            settings = cls.model_validate({**settings.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None
    return settings
