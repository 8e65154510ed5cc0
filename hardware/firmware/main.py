# mypy: ignore-errors
"""MicroPython entry point on the RP2040 safety board. Never imported on CPython (needs machine).

Copy onto the board, flat: ``main.py``, ``bootloader.py``, ``ed25519.py``, ``flash_files.py``,
``logic.py``, ``config.py``, ``common/serial_link.py`` as ``serial_link.py`` and an optional
``board.json``. The mute line is driven high (muted) before anything else, the boot step
included, and a hardware watchdog resets a hung loop, which powers up muted again.

Boot first (hardware/README.md, "On a real board"): the boot record in ``update/`` chooses slot a
or b, the chosen image's files (the application: ``APP_FILES``) are unpacked into ``slot_a/`` or
``slot_b/``, and that folder goes first on the import path, so ``config`` and ``logic`` come from
the booted image. The first power-up makes slot a's image from the files copied into the root.
This file, the bootloader, ``ed25519``, ``flash_files`` and ``serial_link`` stay in the root: an
update does not change them.
"""

import binascii
import sys
import time

import bootloader as bl
import machine
import serial_link as sl
from ed25519 import MicroEd25519Check
from flash_files import FileFlash, pack_files, unpack_slot

#: The image an update carries: the application, imported from the booted slot's folder.
APP_FILES = ("logic.py", "config.py")
_UPDATE_FOLDER = "update"


def _mute_first():
    """Drive the mute line high (muted) before anything else, as the root's config.py and
    board.json place it (the boot step may take seconds: a hash, files to unpack after an
    update); the firmware version board.json names, for the first power-up's image."""
    import config

    try:
        cfg = config.load("board.json")
    except config.BoardConfigError:
        cfg = config.BoardConfig()
    machine.Pin(cfg.mute_pin, machine.Pin.OUT, value=1)
    del sys.modules["config"]  # imported again from the booted slot's folder
    return cfg.firmware_version


def _factory_image(version):
    """Slot a's first image: the application files copied into the root, as ``version``."""
    files = []
    for name in APP_FILES:
        with open(name, "rb") as handle:
            files.append((name, handle.read()))
    return sl.pack_image(version, pack_files(files))


def start_image(version):
    """Choose the image (``bl.boot``), unpack its files and import from them from now on: the
    flash and the ``BootChoice``, or the flash and None when no image could be unpacked (the
    root's own files run, without a bootloader)."""
    flash = FileFlash(bl.DEFAULT_SLOT_SIZE, _UPDATE_FOLDER)
    choice = bl.boot(flash)
    try:
        if choice is None:  # the first power-up
            flash.install_factory(_factory_image(version))
            choice = bl.boot(flash)
        unpack_slot(flash, choice.slot, "slot_" + bl.SLOT_NAMES[choice.slot])
    except (ValueError, OSError) as exc:
        if choice is not None and choice.trial:
            # A signed image whose body is no archive of .py files: back to the confirmed one.
            print("image", choice.version, "cannot be unpacked, rolling back:", exc)
            bl.Bootloader(flash, choice, b"", MicroEd25519Check()).abort()
            machine.reset()
        print("no image to boot, running the root's files without updates:", exc)
        return flash, None
    sys.path.insert(0, "slot_" + bl.SLOT_NAMES[choice.slot])
    return flash, choice


# Before the application's imports: they come from the booted slot's folder.
_FLASH, _CHOICE = start_image(_mute_first())

import config  # noqa: E402
from logic import Board, Controller, light_colour  # noqa: E402

_ADC_VOLTS = 3.3 / 65535
# Front-end scaling per board revision (volts at the ADC pin → unit). Calibrate per board.
_TEMP_V_AT_0C = 0.5  # e.g. MCP9700: 500 mV at 0 °C, 10 mV/°C
_TEMP_V_PER_C = 0.010
_CURRENT_A_PER_V = 1.0  # shunt amplifier: 1 A per volt
_VRMS_PER_V = 1.0  # RMS detector: 1 Vrms per volt
_DC_MV_PER_V = 100.0  # offset amplifier centred at 1.65 V: ±165 mV full scale
_DC_MID_V = 1.65
_SPL_DB_AT_0V = 40.0  # ear-cup microphone log detector: 40 dB SPL at 0 V, 30 dB per volt
_SPL_DB_PER_V = 30.0
# Status light: an RGB LED, one PWM channel per colour (high = lit), so that idle can be dim. Its
# colours and blink rhythms are logic.LIGHT_PATTERNS (PROTOCOL.md, "Light states").
_PWM_HZ = 1000
_DUTY_PER_LEVEL = 257  # colour levels 0..255 to duty_u16 0..65535


class RP2040Board(Board):
    def __init__(self, cfg):
        self._mute = machine.Pin(cfg.mute_pin, machine.Pin.OUT, value=1)  # high = muted
        self._uart = machine.UART(
            cfg.uart_id,
            baudrate=cfg.baudrate,
            tx=machine.Pin(cfg.uart_tx_pin),
            rx=machine.Pin(cfg.uart_rx_pin),
            timeout=0,
            rxbuf=1024,
        )
        self._headphones = None  # no switch: never "plugged in" (BOARD says there is none)
        if cfg.headphones_pin >= 0:
            self._headphones = machine.Pin(cfg.headphones_pin, machine.Pin.IN, machine.Pin.PULL_UP)
        self._clip = machine.Pin(cfg.clip_pin, machine.Pin.IN, machine.Pin.PULL_UP)
        self._adc_temp = machine.ADC(machine.Pin(cfg.adc_temp_pin))
        self._adc_current = machine.ADC(machine.Pin(cfg.adc_current_pin))
        self._adc_vrms = machine.ADC(machine.Pin(cfg.adc_vrms_pin))
        self._adc_dc = machine.ADC(machine.Pin(cfg.adc_dc_pin))
        self._adc_spl = None
        if cfg.adc_ear_spl_pin >= 0 and cfg.max_ear_spl_db > 0:
            self._adc_spl = machine.ADC(machine.Pin(cfg.adc_ear_spl_pin))
        self._buttons = []
        for pin in (
            cfg.button_play_pause_pin,
            cfg.button_stop_pin,
            cfg.button_vol_up_pin,
            cfg.button_vol_down_pin,
        ):
            fitted = pin >= 0
            self._buttons.append(
                machine.Pin(pin, machine.Pin.IN, machine.Pin.PULL_UP) if fitted else None
            )
        self._light = []
        for pin in (cfg.light_red_pin, cfg.light_green_pin, cfg.light_blue_pin):
            channel = None
            if pin >= 0:
                channel = machine.PWM(machine.Pin(pin, machine.Pin.OUT, value=0))
                channel.freq(_PWM_HZ)
                channel.duty_u16(0)
            self._light.append(channel)
        self._last_ticks = time.ticks_ms()
        self._ms = 0
        self._light_state = 0
        self._light_since = 0
        self._light_colour = None  # what the LED shows now (None: not driven yet)

    def read_sensors(self):
        temp = (self._adc_temp.read_u16() * _ADC_VOLTS - _TEMP_V_AT_0C) / _TEMP_V_PER_C
        current = self._adc_current.read_u16() * _ADC_VOLTS * _CURRENT_A_PER_V
        vrms = self._adc_vrms.read_u16() * _ADC_VOLTS * _VRMS_PER_V
        dc = (self._adc_dc.read_u16() * _ADC_VOLTS - _DC_MID_V) * _DC_MV_PER_V
        clip = self._clip.value() == 0  # open-drain, active low
        headphones = self._headphones is not None and self._headphones.value() == 0  # to ground
        spl = 0.0
        if self._adc_spl is not None:  # log detector: dB SPL linear in volts
            spl = _SPL_DB_AT_0V + self._adc_spl.read_u16() * _ADC_VOLTS * _SPL_DB_PER_V
        return (temp, current, vrms, dc, spl, clip, headphones)

    def read_buttons(self):
        levels = 0
        for index, pin in enumerate(self._buttons):
            if pin is not None and pin.value() == 0:  # button closes to ground
                levels |= 1 << index
        return levels

    def set_light(self, state):
        if state != self._light_state or self._light_colour is None:
            # Each state's rhythm starts with its first flash; the same state asked again (a LIGHT
            # re-sent) keeps its rhythm going rather than restarting it with a stutter.
            self._light_state = state
            self._light_since = self.ticks_ms()
        self.refresh_light()

    def refresh_light(self):
        """Drive the LED to where the state's rhythm is now; call every loop (the blinking)."""
        colour = light_colour(self._light_state, self.ticks_ms() - self._light_since)
        if colour == self._light_colour:
            return
        self._light_colour = colour
        for index, channel in enumerate(self._light):  # zip(strict=) is CPython-only
            if channel is not None:
                channel.duty_u16(colour[index] * _DUTY_PER_LEVEL)

    def set_mute(self, muted):
        self._mute.value(1 if muted else 0)

    def ticks_ms(self):
        now = time.ticks_ms()
        self._ms += time.ticks_diff(now, self._last_ticks)
        self._last_ticks = now
        return self._ms

    def serial_read(self):
        waiting = self._uart.any()
        return (self._uart.read(waiting) or b"") if waiting else b""

    def serial_write(self, data):
        self._uart.write(data)

    def reset_mcu(self):
        self._uart.flush()  # the UPDATE_STATUS that announced the reset goes out first
        machine.reset()


def main():
    try:
        cfg = config.load("board.json")
    except config.BoardConfigError as exc:
        print("board.json:", exc, "- using defaults")
        cfg = config.BoardConfig()
    board = RP2040Board(cfg)
    watchdog = machine.WDT(timeout=500)
    loader = None  # no image unpacked: the root's files run, and take no update
    if _CHOICE is not None:
        # Without a pinned key every UPDATE_BEGIN is refused: "no update key pinned on this board".
        key = cfg.update_public_key
        loader = bl.Bootloader(
            _FLASH,
            _CHOICE,
            binascii.unhexlify(key) if key else b"",
            MicroEd25519Check(tick=watchdog.feed),  # a verification outlasts the 500 ms timeout
            cfg.update_trial_boots,
        )
    controller = Controller(board, cfg, sl.PROTOCOL_MINOR, loader)
    controller.start()
    while True:
        controller.step()
        board.refresh_light()
        watchdog.feed()
        time.sleep_ms(1)


main()
