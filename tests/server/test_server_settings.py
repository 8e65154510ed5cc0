from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from resonera.common.errors import ConfigError
from resonera.common.settings import load_settings
from resonera.server.settings import MIN_TOKEN_CHARS, ServerSettings


def test_defaults() -> None:
    settings = load_settings(ServerSettings)
    assert settings.database_url == "sqlite:///./resonera-server.db"
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.mqtt.port == 1883
    assert settings.shared_subscription is True
    assert settings.api_token is None
    assert settings.demo is False
    assert settings.ingest_client_id.startswith("resonera-ingest-")


def test_client_ids_are_unique_per_instance() -> None:
    assert ServerSettings().ingest_client_id != ServerSettings().ingest_client_id


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        'http_port = 9000\napi_token = "from-file"\n[mqtt]\nhost = "broker"\nport = 1884\n'
    )
    monkeypatch.setenv("RESONERA_SERVER_MQTT__PORT", "8883")
    monkeypatch.setenv("RESONERA_SERVER_SHARED_SUBSCRIPTION", "false")
    settings = load_settings(ServerSettings, path)
    assert settings.http_port == 9000
    assert settings.mqtt.host == "broker"
    assert settings.mqtt.port == 8883
    assert settings.shared_subscription is False
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "from-file"


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text("http_prot = 9000\n")
    with pytest.raises(ConfigError, match="http_prot"):
        load_settings(ServerSettings, path)


def test_token_required_outside_demo() -> None:
    with pytest.raises(ConfigError, match=r"api_token must be set.*secrets\.token_urlsafe"):
        ServerSettings().checked_for_start()


def test_short_token_refused_outside_demo() -> None:
    settings = ServerSettings(api_token=SecretStr("x" * (MIN_TOKEN_CHARS - 1)))
    with pytest.raises(ConfigError, match=f"at least {MIN_TOKEN_CHARS}"):
        settings.checked_for_start()


def test_long_enough_token_accepted() -> None:
    settings = ServerSettings(api_token=SecretStr("x" * MIN_TOKEN_CHARS))
    assert settings.checked_for_start().api_token_value() == "x" * MIN_TOKEN_CHARS


def test_demo_generates_a_token_when_missing() -> None:
    first = ServerSettings(demo=True).checked_for_start().api_token_value()
    second = ServerSettings(demo=True).checked_for_start().api_token_value()
    assert len(first) >= MIN_TOKEN_CHARS
    assert first != second


def test_demo_keeps_a_given_token() -> None:
    settings = ServerSettings(demo=True, api_token=SecretStr("short")).checked_for_start()
    assert settings.api_token_value() == "short"


def test_token_value_without_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ServerSettings().api_token_value()
