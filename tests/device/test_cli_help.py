"""``resonera-device`` explains itself: ``--version`` and ``-v`` on every command, before or after
it, help text on every option, and a settings table in device/README.md that names every key of
``DeviceSettings``."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from resonera.device.cli_parser import build_parser
from resonera.device.settings import DeviceSettings
from resonera.device.version import agent_version

BIN = Path(sys.executable).parent / "resonera-device"
README = Path(__file__).resolve().parents[2] / "device" / "README.md"


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree with the words that reach it (``("prompts", "build")``)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, (*path, name))


COMMANDS = [path for path, _ in parsers(build_parser())]


def test_every_option_of_every_command_has_help_text() -> None:
    missing = [
        f"{' '.join(path) or 'resonera-device'} {'/'.join(action.option_strings) or action.dest}"
        for path, parser in parsers(build_parser())
        for action in parser._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []
    assert len(COMMANDS) > 10  # the walk found the tree, not just the top


def test_version_is_printed_by_the_top_and_by_every_command() -> None:
    expected = f"resonera-device {agent_version()}"
    assert expected.split()[1] != "0+unknown"  # the installed package's own
    for path in [(), ("status",), ("prompts", "build"), ("measure",)]:
        result = run(*path, "--version")
        assert (result.returncode, result.stdout.strip(), result.stderr) == (0, expected, "")
    for path in COMMANDS:  # all of them, in one process
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([*path, "--version"])
        assert done.value.code in (None, 0), path


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    """A stand-in for each positional argument a command requires (``render PROGRAM OUT``)."""
    return [
        "x"
        for action in parser._actions
        if not action.option_strings
        and action.nargs is None
        and not isinstance(action, argparse._SubParsersAction)
    ]


def test_verbose_goes_before_or_after_the_command() -> None:
    for path, parser in parsers(build_parser()):
        if parser.get_default("func") is None:
            continue  # the top and `prompts`: a command must follow
        for argv in (["-v", *path, *_positionals(parser)], [*path, *_positionals(parser), "-v"]):
            assert build_parser().parse_args(argv).verbose is True, argv
    assert not getattr(build_parser().parse_args(["status"]), "verbose", False)
    # through the real command, either way
    for argv in (["-v", "programs"], ["programs", "-v"]):
        result = run(*argv)
        assert result.returncode == 0, result.stderr
        assert "demo-alpha" in result.stdout
    unknown = run("programs", "--verbosely")
    assert unknown.returncode == 2
    assert "Traceback" not in unknown.stderr


def _settings_rows() -> list[tuple[str, str]]:
    """(key cell, the rest of the row) of device/README.md's settings table."""
    text = README.read_text()
    section = text[text.index("## Settings") :]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3 and cells[0].startswith("`"):
            rows.append((cells[0], " ".join(cells[1:])))
    return rows


def _nested(field: str) -> type[BaseModel] | None:
    annotation = DeviceSettings.model_fields[field].annotation
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def test_the_settings_table_lists_every_key_of_the_device_settings() -> None:
    """Top-level keys in the first cell (`a`, `b`); a nested model as `[name]`, its keys each named
    (in backticks) in its row, so the table and the model cannot drift apart."""
    documented: set[str] = set()
    for key_cell, rest in _settings_rows():
        for name in re.findall(r"`([^`]+)`", key_cell):
            section = re.fullmatch(r"\[(\w+)\]", name)
            if section is None:
                documented.add(name)
                continue
            model = _nested(section.group(1))
            assert model is not None, f"[{section.group(1)}] is not a nested settings model"
            named = set(re.findall(r"`(\w+)`", rest))
            missing = [
                f"{section.group(1)}.{key}" for key in model.model_fields if key not in named
            ]
            assert missing == [], f"the settings table does not name {missing}"
            documented.add(section.group(1))
    assert documented == set(DeviceSettings.model_fields)


def test_a_play_without_calibration_names_the_packaged_reference_and_the_setting(
    tmp_path: Path,
) -> None:
    from support import free_port

    from resonera.engine.audio.calibration import packaged_calibration

    cfg = tmp_path / "device.toml"
    cfg.write_text(
        f'device_id = "cli-nocal"\ndata_dir = "{tmp_path / "data"}"\nsink = "null"\n'
        f"[mqtt]\nport = {free_port()}\n"
    )
    result = run("play", "--config", cfg, "--simulation", "--sync-timeout", "0.2")
    assert result.returncode == 1
    [line] = [x for x in result.stderr.splitlines() if "error" in x]
    assert "no calibration for this output" in line
    assert f'calibration_file = "{packaged_calibration()}"' in line
    assert "Traceback" not in result.stderr
    # and what it names plays
    fixed = run(
        "play", "--config", cfg, "--simulation", "--sync-timeout", "0.2",
        "--calibration", packaged_calibration(),
    )  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr
