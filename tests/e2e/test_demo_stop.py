"""``resonera demo`` stops every process it started on every way out: SIGTERM, SIGHUP and SIGINT
(Ctrl-C) while the stack is kept up, and a signal in the middle of starting it (the device agent
running). The children are found as they run, in /proc (every descendant of the demo), and each must
be gone once the demo has exited."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import require_tool, wait_until

BIN = Path(sys.executable).parent
STACK_UP = "The stack stays up; press Ctrl-C to stop it."


@dataclass(frozen=True)
class Proc:
    pid: int
    start_time: int  # clock ticks after boot: with the pid, this very process (pids are reused)
    cmdline: str

    def alive(self) -> bool:
        """Still there, and not a zombie left to be reaped."""
        found = _stat(self.pid)
        return found is not None and found[2] == self.start_time and found[1] != "Z"


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid``, None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> list[Proc]:
    """Every process below ``root`` now (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            parents.setdefault(found[0], []).append(int(entry.name))
    result: list[Proc] = []
    todo = list(parents.get(root, []))
    while todo:
        pid = todo.pop()
        found = _stat(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if found is not None:
            result.append(Proc(pid, found[2], cmdline))
            todo.extend(parents.get(pid, []))
    return result


@dataclass
class Demo:
    process: subprocess.Popen[str]
    lines: queue.Queue[str]
    seen: list[str]
    stderr: Path
    #: The children the test found: killed at the end if they outlive the demo (a failing run).
    children: list[Proc] = field(default_factory=list)

    def wait_for_line(self, predicate: Callable[[str], bool]) -> None:
        while True:
            try:
                line = self.lines.get(timeout=180)  # a guard against a hung demo, not a measure
            except queue.Empty:
                pytest.fail(f"the demo printed nothing more after {self.seen[-5:]}")
            if line == "":
                pytest.fail(f"the demo ended early: {self.seen}\n{self.stderr.read_text()}")
            self.seen.append(line.rstrip("\n"))
            if predicate(self.seen[-1]):
                return

    def rest(self) -> list[str]:
        while (line := self.lines.get(timeout=60)) != "":
            self.seen.append(line.rstrip("\n"))
        return self.seen


@contextmanager
def demo(tmp_path: Path, *extra: str) -> Iterator[Demo]:
    """``resonera demo`` on mosquitto and a WAV sink, its stdout read line by line; whatever it
    leaves running when the test ends is killed (so a failing run does not leak its stack)."""
    require_tool("mosquitto")
    stderr = tmp_path / "demo.stderr"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [
                str(BIN / "resonera"),
                *("demo", "--broker", "mosquitto", "--sink", "wav"),
                *("--workdir", str(tmp_path / "d"), *extra),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    running = Demo(process, lines, [], stderr)
    try:
        yield running
    finally:
        running.children.extend(descendants(process.pid))
        if process.poll() is None:
            process.kill()
            process.wait()
        for proc in running.children:
            if proc.alive():
                os.kill(proc.pid, signal.SIGKILL)


def stop_and_check(running: Demo, children: list[Proc], signum: int) -> int:
    """Send ``signum`` to the demo alone (as ``kill`` does; a terminal's Ctrl-C or hangup reaches
    the demo's process group, the demo alone since its children have groups of their own), wait
    for it to end; every child it had is gone. Returns its exit code."""
    running.children.extend(children)
    running.process.send_signal(signum)
    code = running.process.wait(timeout=120)  # a guard: stopping takes seconds
    left = [proc for proc in children if proc.alive()]
    assert left == [], f"still running after the demo ended: {left}"
    return code


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_stops_the_kept_up_stack_and_every_child(
    signum: signal.Signals, tmp_path: Path
) -> None:
    with demo(tmp_path, "--keep-running") as running:
        running.wait_for_line(lambda line: line == STACK_UP)
        children = descendants(running.process.pid)
        commands = " | ".join(proc.cmdline for proc in children)
        for part in ("mosquitto", "resonera-server run", "resonera-hwsim"):
            assert part in commands, commands
        code = stop_and_check(running, children, signum)
        assert code == 0, running.stderr.read_text()  # the way to stop a kept-up stack
        assert running.rest()[-1] == "stopping"


@pytest.mark.slow
def test_sigterm_while_the_stack_starts_stops_every_child_the_device_too(tmp_path: Path) -> None:
    with demo(tmp_path) as running:
        running.wait_for_line(lambda line: line.startswith("[device]"))
        started: list[Proc] = []

        def device_started() -> bool:
            started[:] = descendants(running.process.pid)
            return any("resonera-device" in proc.cmdline for proc in started)

        wait_until(device_started, timeout=60, what="the device agent to start")
        commands = " | ".join(proc.cmdline for proc in started)
        for part in ("mosquitto", "resonera-server run", "resonera-hwsim"):
            assert part in commands, commands
        code = stop_and_check(running, started, signal.SIGTERM)
        assert code == 128 + signal.SIGTERM, running.stderr.read_text()
        assert "resonera: stopped by SIGTERM" in running.stderr.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "exit_code"),
    [([], 0), (["--program", "no-such-program"], 1)],  # the end; an error (the device refuses)
    ids=["end", "error"],
)
def test_the_demo_ending_or_failing_leaves_no_child(
    extra: list[str], exit_code: int, tmp_path: Path
) -> None:
    with demo(tmp_path, *extra) as running:
        running.wait_for_line(lambda line: line.startswith("[hardware]"))
        children = descendants(running.process.pid)
        running.children.extend(children)
        assert len(children) >= 3, children  # mosquitto, the server, the MCU simulator
        code = running.process.wait(timeout=180)  # a guard against a hung demo
        assert code == exit_code, running.stderr.read_text()
        assert [proc for proc in children if proc.alive()] == []
