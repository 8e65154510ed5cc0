"""Board configuration: hard limits, timing and pins, with defaults, loadable from a JSON file.

MicroPython-compatible (plain class, ``json`` only). On the MCU the file sits next to ``main.py`` as
``board.json``; the simulator takes one with ``resonera-hwsim --config``. Unknown keys and values of
the wrong type are errors, so a typo in a limit is never silently replaced by a default.

The limits are the board's own (docs/safety.md, "The hardware side"): they are reported in HELLO and
enforced by the firmware. The device may lower what it plays to, never raise these.
"""

import json

try:
    from resonera.common.errors import ConfigError as _ErrorBase
except ImportError:  # on the MCU there is no resonera package
    _ErrorBase = ValueError  # type: ignore[misc,assignment]


class BoardConfigError(_ErrorBase):
    """The board configuration is malformed or out of range."""


DEFAULTS = {
    "board_id": "resonera-sim-0001",
    "firmware_version": "0.1.0",
    # Hard limits reported in HELLO. max_ear_spl_db = 0 means no ear-cup microphone is fitted.
    "max_output_vrms": 2.0,
    "max_amp_temp_c": 85.0,
    "max_supply_current_a": 1.5,
    "max_dc_offset_mv": 50.0,
    "max_ear_spl_db": 0.0,
    # Timing.
    "heartbeat_timeout_ms": 250,
    "telemetry_period_ms": 50,
    # Clipping in this many telemetry periods in a row is a fault.
    "clip_storm_periods": 4,
    "require_headphones": True,
    # Buttons (protocol v1.2): a level must hold this long to count; held this long is a long press.
    "button_debounce_ms": 20,
    "long_press_ms": 800,
    # Firmware update (protocol v1.5): the pinned update key, raw Ed25519 public key as 64 hex
    # digits ("" = this board takes no update); boots a new image gets before it must be confirmed;
    # how long the device has to confirm it; a transfer with no update frame this long is dropped.
    "update_public_key": "",
    "update_trial_boots": 1,
    "update_confirm_timeout_ms": 30000,
    "update_idle_timeout_ms": 10000,
    # RP2040 wiring (used by main.py only).
    "uart_id": 0,
    "uart_tx_pin": 0,
    "uart_rx_pin": 1,
    "baudrate": 115200,
    "mute_pin": 15,
    # The headphone-detect switch (closes to ground when plugged in); -1 = none fitted, which
    # require_headphones cannot do without. BOARD (protocol v1.4) tells the device which it is.
    "headphones_pin": 14,
    "clip_pin": 13,
    "adc_temp_pin": 26,
    "adc_current_pin": 27,
    "adc_vrms_pin": 28,
    "adc_dc_pin": 29,
    # The ear-cup microphone's level detector, if fitted (with max_ear_spl_db > 0); -1 = none.
    "adc_ear_spl_pin": -1,
    # Buttons to ground (pull-ups on), -1 = not fitted; the status light, an RGB LED (-1 = none).
    "button_play_pause_pin": 9,
    "button_stop_pin": 10,
    "button_vol_up_pin": 11,
    "button_vol_down_pin": 12,
    "light_red_pin": 16,
    "light_green_pin": 17,
    "light_blue_pin": 18,
}

_POSITIVE = (
    "max_output_vrms",
    "max_amp_temp_c",
    "max_supply_current_a",
    "max_dc_offset_mv",
    "heartbeat_timeout_ms",
    "telemetry_period_ms",
    "clip_storm_periods",
    "button_debounce_ms",
    "long_press_ms",
    "update_trial_boots",
    "update_confirm_timeout_ms",
    "update_idle_timeout_ms",
)
_HEX = "0123456789abcdef"


class BoardConfig:
    """Every key of ``DEFAULTS`` as an attribute; build with keyword overrides or ``load(path)``."""

    def __init__(self, **overrides: object) -> None:
        values = dict(DEFAULTS)
        for key, given in overrides.items():
            value = given
            if key not in DEFAULTS:
                raise BoardConfigError(f"unknown board setting {key!r}")
            default = DEFAULTS[key]
            if isinstance(default, bool) or isinstance(value, bool):
                ok = isinstance(value, bool) and isinstance(default, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float))
                if isinstance(value, (int, float)):
                    value = float(value)
            else:
                ok = type(value) is type(default)
            if not ok:
                kind = type(default).__name__
                raise BoardConfigError(f"board setting {key!r} must be of type {kind}")
            values[key] = value
        for key in _POSITIVE:
            value = values[key]
            if not isinstance(value, (int, float)) or value <= 0:
                raise BoardConfigError(f"board setting {key!r} must be greater than 0")
        if not isinstance(values["max_ear_spl_db"], float) or values["max_ear_spl_db"] < 0:
            raise BoardConfigError("board setting 'max_ear_spl_db' must be 0 (no sensor) or more")
        switch = values["headphones_pin"]
        if values["require_headphones"] and isinstance(switch, int) and switch < 0:
            # it could never tell them plugged in, so it would never arm
            raise BoardConfigError(
                "board setting 'require_headphones' needs a headphone-detect switch "
                "('headphones_pin' is -1)"
            )
        key = str(values["update_public_key"])
        if key and (len(key) != 64 or any(c not in _HEX for c in key)):
            raise BoardConfigError(
                "board setting 'update_public_key' must be 64 lowercase hex digits "
                "(a raw Ed25519 public key) or empty"
            )
        self.update_public_key = key
        self.update_trial_boots = _as_int(values["update_trial_boots"])
        self.update_confirm_timeout_ms = _as_int(values["update_confirm_timeout_ms"])
        self.update_idle_timeout_ms = _as_int(values["update_idle_timeout_ms"])
        self.board_id = str(values["board_id"])
        self.firmware_version = str(values["firmware_version"])
        self.max_output_vrms = _as_float(values["max_output_vrms"])
        self.max_amp_temp_c = _as_float(values["max_amp_temp_c"])
        self.max_supply_current_a = _as_float(values["max_supply_current_a"])
        self.max_dc_offset_mv = _as_float(values["max_dc_offset_mv"])
        self.max_ear_spl_db = _as_float(values["max_ear_spl_db"])
        self.heartbeat_timeout_ms = _as_int(values["heartbeat_timeout_ms"])
        self.telemetry_period_ms = _as_int(values["telemetry_period_ms"])
        self.clip_storm_periods = _as_int(values["clip_storm_periods"])
        self.require_headphones = bool(values["require_headphones"])
        self.button_debounce_ms = _as_int(values["button_debounce_ms"])
        self.long_press_ms = _as_int(values["long_press_ms"])
        self.uart_id = _as_int(values["uart_id"])
        self.uart_tx_pin = _as_int(values["uart_tx_pin"])
        self.uart_rx_pin = _as_int(values["uart_rx_pin"])
        self.baudrate = _as_int(values["baudrate"])
        self.mute_pin = _as_int(values["mute_pin"])
        self.headphones_pin = _as_int(values["headphones_pin"])
        self.clip_pin = _as_int(values["clip_pin"])
        self.adc_temp_pin = _as_int(values["adc_temp_pin"])
        self.adc_current_pin = _as_int(values["adc_current_pin"])
        self.adc_vrms_pin = _as_int(values["adc_vrms_pin"])
        self.adc_dc_pin = _as_int(values["adc_dc_pin"])
        self.adc_ear_spl_pin = _as_int(values["adc_ear_spl_pin"])
        self.button_play_pause_pin = _as_int(values["button_play_pause_pin"])
        self.button_stop_pin = _as_int(values["button_stop_pin"])
        self.button_vol_up_pin = _as_int(values["button_vol_up_pin"])
        self.button_vol_down_pin = _as_int(values["button_vol_down_pin"])
        self.light_red_pin = _as_int(values["light_red_pin"])
        self.light_green_pin = _as_int(values["light_green_pin"])
        self.light_blue_pin = _as_int(values["light_blue_pin"])


def _as_float(value: object) -> float:
    assert isinstance(value, (int, float))
    return float(value)


def _as_int(value: object) -> int:
    assert isinstance(value, int)
    return value


def load(path: str) -> BoardConfig:
    """Read a JSON object of overrides from ``path``; raise ``BoardConfigError`` naming the file."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except OSError as exc:
        raise BoardConfigError(f"board config {path} cannot be read: {exc}") from None
    except ValueError as exc:  # json.JSONDecodeError on CPython, ValueError on MicroPython
        raise BoardConfigError(f"board config {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BoardConfigError(f"board config {path} must hold a JSON object")
    try:
        return BoardConfig(**data)
    except BoardConfigError as exc:
        raise BoardConfigError(f"board config {path}: {exc}") from None
