"""Scripting the simulator: control commands (one line each) and timed scenarios of them.

Commands are what a person types into ``resonera-hwsim --stdin``, what a test or a script sends
over ``--control SOCKET``, and what a scenario's steps may run. ``execute(sim, line)`` runs one and
returns its one-line answer (``ok ...``), or raises ``CommandError``::

    over-temperature | over-current | over-voltage | dc-offset | ear-spl | clip-storm
    headphones-out | headphones-in | garbage [FRAMES] | crc [FRAMES] | silent | speak
    stall [SECONDS] | unstall | reboot [BOOT_MS] | reset | set READING VALUE | status | help
    press BUTTON [long] | light?
    power-loss-at-chunk [N] | power-loss-in-commit | corrupt-write | fail-image VERSION | firmware?

(The last line is the bootloader's, protocol v1.5: a power loss in the Nth chunk written from now
or in the next commit, the next chunk written with a byte wrong, an image of VERSION that crashes
at every boot; ``firmware?`` answers ``ok firmware=VERSION slot=a|b trial=yes|no updating=yes|no
rollbacks=N``. ``BUTTON`` is play_pause, stop, vol_up or vol_down; ``light?`` answers ``ok light=STATE``, the
state's name from ``serial_link.LIGHT_NAMES``: idle ... dose_reached, refused, blocked, shut_out.)

A scenario is a list of steps on the simulator's clock, from JSON or TOML::

    [[step]]
    at = 2.0                                   # seconds after the scenario starts
    ramp = { reading = "amp_temp_c", from = 40.0, to = 95.0, over = 5.0 }
    [[step]]
    at = 10.0
    set = { headphones = false }
    [[step]]
    at = 12.0
    command = "garbage 3"

(JSON: ``{"step": [{"at": 2.0, "ramp": {...}}, ...]}``.) A ramp moves one reading linearly; without
``from`` it starts at the reading's value when the step begins. ``ScenarioRunner.advance(now)`` is
pure bookkeeping, so tests drive a scenario with a clock of their own.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resonera.common import serial_link as sl
from resonera.common.errors import ConfigError, ResoneraError
from resonera.hardware.sim import Simulator
from resonera.hardware.sim_board import READINGS


class CommandError(ResoneraError):
    """A control command that does not exist or has bad arguments."""


class ScenarioError(ConfigError):
    """A scenario file that cannot be read or does not make sense."""


def _no_args(action: Callable[[Simulator], None]) -> Callable[[Simulator, list[str]], str]:
    def run(sim: Simulator, args: list[str]) -> str:
        if args:
            raise CommandError("this command takes no arguments")
        action(sim)
        return "ok"

    return run


def _count(args: list[str], default: int) -> int:
    if not args:
        return default
    if len(args) > 1 or not args[0].isdigit() or not 1 <= int(args[0]) <= 1000:
        raise CommandError("expected one count from 1 to 1000")
    return int(args[0])


def _seconds(args: list[str]) -> float | None:
    if not args:
        return None
    try:
        value = float(args[0])
    except ValueError:
        raise CommandError(f"not a number of seconds: {args[0]!r}") from None
    if len(args) > 1 or not 0 < value < 3600:
        raise CommandError("expected one duration in seconds, 0 to 3600")
    return value


def _garbage(sim: Simulator, args: list[str]) -> str:
    frames = _count(args, 3)
    sim.send_garbage(frames)
    return f"ok {frames} garbled frame(s) queued"


def _crc(sim: Simulator, args: list[str]) -> str:
    frames = _count(args, 3)
    sim.crc_errors(frames)
    return f"ok {frames} frame(s) with a bad CRC queued"


def _stall(sim: Simulator, args: list[str]) -> str:
    seconds = _seconds(args)
    sim.stall(seconds)
    return "ok link stalled" + (f" for {seconds:g} s" if seconds is not None else "")


def _reboot(sim: Simulator, args: list[str]) -> str:
    boot_ms = 20
    if args:
        if len(args) > 1 or not args[0].isdigit() or int(args[0]) > 10_000:
            raise CommandError("expected one boot time from 0 to 10000 ms")
        boot_ms = int(args[0])
    sim.reboot(boot_ms)
    return f"ok rebooting ({boot_ms} ms)"


def _set(sim: Simulator, args: list[str]) -> str:
    if len(args) != 2:
        raise CommandError("usage: set READING VALUE")
    name, text = args
    set_reading(sim, name, parse_value(name, text))
    return f"ok {name} = {text}"


def _press(sim: Simulator, args: list[str]) -> str:
    names = {name: button for button, name in sl.BUTTON_NAMES.items()}
    if not 1 <= len(args) <= 2 or (len(args) == 2 and args[1].lower() != "long"):
        raise CommandError("usage: press BUTTON [long]")
    button = names.get(args[0].lower().replace("-", "_"))
    if button is None:
        raise CommandError(f"no such button {args[0]!r} (one of {', '.join(names)})")
    long = len(args) == 2
    sim.press(button, long=long)
    return f"ok pressing {sl.BUTTON_NAMES[button]}" + (" (long)" if long else "")


def _light(sim: Simulator, args: list[str]) -> str:
    if args:
        raise CommandError("this command takes no arguments")
    return f"ok light={sl.LIGHT_NAMES.get(sim.light, str(sim.light))}"


def _power_loss_at_chunk(sim: Simulator, args: list[str]) -> str:
    n = _count(args, 1)
    sim.power_loss_at_chunk(n)
    return f"ok power loss in chunk {n} from now"


def _fail_image(sim: Simulator, args: list[str]) -> str:
    if len(args) != 1:
        raise CommandError("usage: fail-image VERSION")
    sim.fail_image(args[0])
    return f"ok firmware {args[0]} crashes at boot"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _firmware(sim: Simulator, args: list[str]) -> str:
    if args:
        raise CommandError("this command takes no arguments")
    return (
        f"ok firmware={sim.firmware_version} slot={sim.running_slot} trial={_yes(sim.on_trial)} "
        f"updating={_yes(sim.updating)} rollbacks={len(sim.rollbacks)}"
    )


def _status(sim: Simulator, args: list[str]) -> str:
    c, b = sim.controller, sim.board
    return (
        f"ok muted={b.muted} armed={c.armed} fault={sl.describe_fault(c.fault)!r} "
        f"temp={b.amp_temp_c:.1f} current={b.supply_current_a:.2f} vrms={b.output_vrms:.2f} "
        f"dc={b.dc_offset_mv:.1f} spl={b.ear_spl_db:.1f} clip={b.clip} headphones={b.headphones} "
        f"requires_headphones={c.config.require_headphones} stalled={b.stalled} "
        f"reboots={sim.reboots} light={sl.LIGHT_NAMES.get(b.light, '?')} "
        f"firmware={sim.firmware_version} slot={sim.running_slot} "
        f"protocol=v{sl.PROTOCOL_MAJOR}.{c.protocol_minor} rejected={c.frames_rejected}"
        + (f" last_rejected={c.last_rejection!r}" if c.last_rejection else "")
    )


def _help(sim: Simulator, args: list[str]) -> str:
    return "ok commands: " + " ".join(sorted(COMMANDS))


COMMANDS: dict[str, Callable[[Simulator, list[str]], str]] = {
    "over-temperature": _no_args(lambda sim: sim.over_temperature()),
    "over-current": _no_args(lambda sim: sim.over_current()),
    "over-voltage": _no_args(lambda sim: sim.over_voltage()),
    "dc-offset": _no_args(lambda sim: sim.dc_offset()),
    "ear-spl": _no_args(lambda sim: sim.ear_spl_over()),
    "clip-storm": _no_args(lambda sim: sim.clip_storm()),
    "headphones-out": _no_args(lambda sim: sim.unplug_headphones()),
    "headphones-in": _no_args(lambda sim: sim.board.set_headphones(True)),
    "garbage": _garbage,
    "crc": _crc,
    "silent": _no_args(lambda sim: sim.go_silent()),
    "speak": _no_args(lambda sim: sim.speak_again()),
    "stall": _stall,
    "unstall": _no_args(lambda sim: sim.unstall()),
    "reboot": _reboot,
    "reset": _no_args(lambda sim: sim.reset()),
    "set": _set,
    "status": _status,
    "press": _press,
    "light?": _light,
    "power-loss-at-chunk": _power_loss_at_chunk,
    "power-loss-in-commit": _no_args(lambda sim: sim.power_loss_in_commit()),
    "corrupt-write": _no_args(lambda sim: sim.corrupt_write()),
    "fail-image": _fail_image,
    "firmware?": _firmware,
    "help": _help,
}


def execute(sim: Simulator, line: str) -> str:
    """Run one control command line; return its answer. Raise ``CommandError`` if it is wrong."""
    words = line.split()
    if not words:
        raise CommandError("empty command")
    command = COMMANDS.get(words[0].lower())
    if command is None:
        raise CommandError(f"unknown command {words[0]!r} (try 'help')")
    return command(sim, words[1:])


def parse_value(name: str, text: str) -> float | bool:
    kind = READINGS.get(name)
    if kind is None:
        raise CommandError(f"no such reading {name!r} (one of {', '.join(READINGS)})")
    if kind is bool:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "on", "off", "yes", "no"):
            raise CommandError(f"{name} takes true or false, not {text!r}")
        return lowered in ("true", "1", "on", "yes")
    try:
        return float(text)
    except ValueError:
        raise CommandError(f"{name} takes a number, not {text!r}") from None


def set_reading(sim: Simulator, name: str, value: float | bool) -> None:
    try:
        sim.board.set_reading(name, value)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


# -- scenarios -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ramp:
    reading: str
    to: float
    over_s: float
    start: float | None = None


@dataclass(frozen=True)
class Step:
    """At ``at_s`` seconds: set readings, start a ramp, and/or run a command (in that order)."""

    at_s: float
    set: tuple[tuple[str, float | bool], ...] = ()
    ramp: Ramp | None = None
    command: str | None = None


@dataclass(frozen=True)
class Scenario:
    steps: tuple[Step, ...]
    name: str = "scenario"

    @classmethod
    def load(cls, path: Path | str) -> Scenario:
        """Read a ``.json`` or ``.toml`` scenario; raise ``ScenarioError`` naming the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScenarioError(f"scenario {path} cannot be read: {exc.strerror}") from None
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ScenarioError(f"scenario {path} is not valid: {exc}") from None
        try:
            return cls.from_data(data, name=path.name)
        except ScenarioError as exc:
            raise ScenarioError(f"scenario {path}: {exc}") from None

    @classmethod
    def from_data(cls, data: object, name: str = "scenario") -> Scenario:
        if (
            not isinstance(data, dict)
            or set(data) - {"step"}
            or not isinstance(data.get("step"), list)
        ):
            raise ScenarioError('expected {"step": [ ... ]} and nothing else')
        steps = [_step(index, raw) for index, raw in enumerate(data["step"], 1)]
        return cls(tuple(sorted(steps, key=lambda s: s.at_s)), name)

    def start(self, sim: Simulator, started: float) -> ScenarioRunner:
        """A runner of this scenario on ``sim`` from ``started`` (``Simulator.run_scenario``)."""
        return ScenarioRunner(self, sim, started)


def _step(index: int, raw: Any) -> Step:
    where = f"step {index}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where} is not a table")
    unknown = set(raw) - {"at", "set", "ramp", "command"}
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    at = raw.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or at < 0:
        raise ScenarioError(f"{where}: 'at' must be a number of seconds ≥ 0")
    values: list[tuple[str, float | bool]] = []
    for key, value in (raw.get("set") or {}).items():
        kind = READINGS.get(key)
        if kind is None:
            raise ScenarioError(f"{where}: no such reading {key!r}")
        if (kind is bool) != isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(
                f"{where}: {key} must be {'true/false' if kind is bool else 'a number'}"
            )
        values.append((key, kind(value)))
    ramp = None
    if "ramp" in raw:
        r = raw["ramp"]
        if not isinstance(r, dict) or set(r) - {"reading", "from", "to", "over"}:
            raise ScenarioError(f"{where}: ramp takes reading, from, to, over")
        reading = r.get("reading")
        if READINGS.get(str(reading)) is not float:
            raise ScenarioError(f"{where}: ramp reading must be a numeric reading")
        try:
            ramp = Ramp(
                str(reading),
                float(r["to"]),
                float(r["over"]),
                float(r["from"]) if "from" in r else None,
            )
        except (KeyError, TypeError, ValueError):
            raise ScenarioError(f"{where}: ramp needs numeric 'to' and 'over'") from None
        if ramp.over_s <= 0:
            raise ScenarioError(f"{where}: ramp 'over' must be > 0 seconds")
    command = raw.get("command")
    if command is not None:
        words = str(command).split()
        if not words or words[0] not in COMMANDS:
            raise ScenarioError(f"{where}: unknown command {command!r}")
    return Step(float(at), tuple(values), ramp, None if command is None else str(command))


class _ActiveRamp:
    def __init__(self, ramp: Ramp, start_time: float, start_value: float) -> None:
        self.ramp = ramp
        self.start_time = start_time
        self.start_value = start_value

    def value(self, t: float) -> tuple[float, bool]:
        progress = min(1.0, max(0.0, (t - self.start_time) / self.ramp.over_s))
        return self.start_value + (self.ramp.to - self.start_value) * progress, progress >= 1.0


class ScenarioRunner:
    """Applies a scenario's steps to ``sim`` as time passes. ``advance(now)`` with any clock."""

    def __init__(self, scenario: Scenario, sim: Simulator, started: float) -> None:
        self.scenario = scenario
        self.sim = sim
        self.started = started
        self.next_step = 0
        self.errors: list[str] = []
        self._ramps: dict[str, _ActiveRamp] = {}

    @property
    def done(self) -> bool:
        return self.next_step >= len(self.scenario.steps) and not self._ramps

    def advance(self, now: float) -> None:
        t = now - self.started
        steps = self.scenario.steps
        while self.next_step < len(steps) and steps[self.next_step].at_s <= t:
            step = steps[self.next_step]
            self.next_step += 1
            for name, value in step.set:
                self._ramps.pop(name, None)
                self.sim.board.set_reading(name, value)
            if step.ramp is not None:
                start = step.ramp.start
                if start is None:
                    start = float(getattr(self.sim.board, step.ramp.reading))
                self._ramps[step.ramp.reading] = _ActiveRamp(step.ramp, step.at_s, start)
            if step.command is not None:
                try:
                    execute(self.sim, step.command)
                except CommandError as exc:
                    self.errors.append(f"at {step.at_s:g} s: {exc}")
        for name, active in list(self._ramps.items()):
            value, finished = active.value(t)
            self.sim.board.set_reading(name, value)
            if finished:
                del self._ramps[name]
