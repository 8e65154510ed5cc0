from __future__ import annotations

from pathlib import Path

import pytest

from resonera.common.errors import ConfigError
from resonera.common.settings import load_settings
from resonera.device.settings import DeviceSettings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'device_id = "d1"\n[mqtt]\nport = 1884\n')
    assert load_settings(DeviceSettings, path).mqtt.port == 1884
    monkeypatch.setenv("RESONERA_DEVICE_MQTT__PORT", "1999")
    assert load_settings(DeviceSettings, path).mqtt.port == 1999
    assert load_settings(DeviceSettings, path, simulation=True).simulation is True


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('device_id = "d1"\nblock_frames = 10\n', "block_frames"),
        ('device_id = "d1"\nsample_rate = 22050\n', "sample_rate"),
        ('device_id = "d/1"\n', "device_id"),
        ('device_id = "d1"\ntypo_key = 1\n', "typo_key"),
        ('device_id = "d1"\n[mqtt]\ncert_file = "/x"\n', "together"),
        ("block_frames = 1024\n", "device_id: Field required"),
        ('device_id = "d1\n', "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(DeviceSettings, write(tmp_path, text))
    message = str(info.value)
    assert complaint in message
    assert str(tmp_path / "device.toml") in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(DeviceSettings, tmp_path / "nope.toml")
