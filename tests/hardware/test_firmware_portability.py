"""The files that run on the MCU stay MicroPython-compatible: checked on their syntax trees."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What is copied onto the board (hardware/README.md, "Put it on a board").
MCU_FILES = [
    ROOT / "common" / "serial_link.py",
    ROOT / "hardware" / "firmware" / "logic.py",
    ROOT / "hardware" / "firmware" / "config.py",
    ROOT / "hardware" / "firmware" / "main.py",
    ROOT / "hardware" / "firmware" / "bootloader.py",
    ROOT / "hardware" / "firmware" / "ed25519.py",
    ROOT / "hardware" / "firmware" / "flash_files.py",
]
#: Modules MicroPython provides on the RP2040 port, plus the firmware's own flat files.
ALLOWED = {
    "struct",
    "json",
    "time",
    "hashlib",
    "machine",
    "micropython",
    "serial_link",
    "config",
    "logic",
    "bootloader",
    "ed25519",
    "flash_files",
    "os",
    "sys",
    "binascii",
}
#: Imports of CPython-only modules allowed only inside ``try: ... except ImportError:``.
GUARDED_PREFIX = "resonera."
#: Never, not even guarded: what MicroPython lacks and a port must not need.
FORBIDDEN = {"dataclasses", "enum", "typing", "abc", "pydantic", "numpy", "serial", "__future__"}


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(module name, guarded by ``except ImportError``) for every import in the file."""
    guarded_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
        ):
            for inner in node.body:
                for sub in ast.walk(inner):
                    guarded_nodes.add(id(sub))
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in guarded_nodes) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", id(node) in guarded_nodes))
    return found


@pytest.mark.parametrize("path", MCU_FILES, ids=lambda p: p.name)
def test_mcu_files_import_only_what_micropython_has(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for module, guarded in _imports(tree):
        top = module.split(".")[0]
        assert top not in FORBIDDEN, f"{path.name} imports {module}"
        if module.startswith(GUARDED_PREFIX):
            assert guarded, f"{path.name} imports {module} outside try/except ImportError"
        else:
            assert top in ALLOWED, f"{path.name} imports {module}, which MicroPython lacks"


@pytest.mark.parametrize("path", MCU_FILES, ids=lambda p: p.name)
def test_mcu_files_avoid_cpython_only_syntax(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        # Decorators such as @dataclass/@property.setter need modules or features the port lacks;
        # @property alone is fine.
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                assert isinstance(decorator, ast.Name) and decorator.id in {
                    "property",
                    "staticmethod",
                    "classmethod",
                }, f"{path.name}:{node.lineno} uses decorator {ast.unparse(decorator)}"
        assert not isinstance(node, ast.Match), f"{path.name}:{node.lineno} uses match"
        if isinstance(node, ast.FormattedValue):
            # f"{x=}" and nested format specs are not in MicroPython's f-strings.
            spec = node.format_spec
            assert spec is None or (
                isinstance(spec, ast.JoinedStr)
                and all(isinstance(v, ast.Constant) for v in spec.values)
            ), f"{path.name}:{node.lineno} uses a nested f-string format spec"
        if isinstance(node, ast.Call):
            names = {kw.arg for kw in node.keywords}
            assert "strict" not in names, f"{path.name}:{node.lineno}: zip(strict=) is CPython-only"
        if isinstance(node, ast.arg) and node.annotation is not None:
            # Annotations are fine as long as they need no import: only names and strings.
            for sub in ast.walk(node.annotation):
                assert not isinstance(sub, ast.Subscript) or isinstance(
                    node.annotation, ast.Constant
                ), f"{path.name}:{node.lineno} has an evaluated generic annotation"
