from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from resonera.common.errors import ConfigError
from resonera.common.settings import load_settings
from resonera.server.settings import MIN_SECRET_CHARS, ServerSettings


def test_defaults() -> None:
    settings = load_settings(ServerSettings)
    assert settings.database_url == "sqlite:///./resonera-server.db"
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.mqtt.port == 1883
    assert settings.shared_subscription is True
    assert settings.jwt_secret is None
    assert settings.demo is False
    assert settings.ingest_client_id.startswith("resonera-ingest-")


def test_client_ids_are_unique_per_instance() -> None:
    assert ServerSettings().ingest_client_id != ServerSettings().ingest_client_id


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        'http_port = 9000\njwt_secret = "from-file"\n[mqtt]\nhost = "broker"\nport = 1884\n'
    )
    monkeypatch.setenv("RESONERA_SERVER_MQTT__PORT", "8883")
    monkeypatch.setenv("RESONERA_SERVER_SHARED_SUBSCRIPTION", "false")
    settings = load_settings(ServerSettings, path)
    assert settings.http_port == 9000
    assert settings.mqtt.host == "broker"
    assert settings.mqtt.port == 8883
    assert settings.shared_subscription is False
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "from-file"


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text("http_prot = 9000\n")
    with pytest.raises(ConfigError, match="http_prot"):
        load_settings(ServerSettings, path)


def test_jwt_secret_required_outside_demo() -> None:
    with pytest.raises(ConfigError, match=r"jwt_secret must be set.*secrets\.token_urlsafe"):
        ServerSettings().checked_for_start()


def test_short_jwt_secret_refused_outside_demo() -> None:
    settings = ServerSettings(jwt_secret=SecretStr("x" * (MIN_SECRET_CHARS - 1)))
    with pytest.raises(ConfigError, match=f"at least {MIN_SECRET_CHARS}"):
        settings.checked_for_start()


def test_long_enough_jwt_secret_accepted() -> None:
    settings = ServerSettings(jwt_secret=SecretStr("x" * MIN_SECRET_CHARS))
    assert settings.checked_for_start().jwt_secret_value() == "x" * MIN_SECRET_CHARS


def test_demo_generates_a_jwt_secret_when_missing() -> None:
    first = ServerSettings(demo=True).checked_for_start().jwt_secret_value()
    second = ServerSettings(demo=True).checked_for_start().jwt_secret_value()
    assert len(first) >= MIN_SECRET_CHARS
    assert first != second


def test_demo_keeps_a_given_jwt_secret() -> None:
    settings = ServerSettings(demo=True, jwt_secret=SecretStr("short")).checked_for_start()
    assert settings.jwt_secret_value() == "short"


def test_jwt_secret_value_without_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ServerSettings().jwt_secret_value()


def test_https_needs_both_the_certificate_and_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "https.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file must be set together"):
        ServerSettings(demo=True, tls_cert_file=cert).checked_for_start()
    missing = tmp_path / "https.key"
    with pytest.raises(ConfigError, match=f"tls_key_file {missing} is not a readable file"):
        ServerSettings(demo=True, tls_cert_file=cert, tls_key_file=missing).checked_for_start()
