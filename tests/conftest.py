from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright
from support import Mosquitto, real_clock_env, require_tool, run_mosquitto, wait_until


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the whole test session (tests use distinct device ids to stay apart)."""
    with run_mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of the test's own, for tests that stop or restart it."""
    with run_mosquitto(tmp_path / "broker", persistent=True) as broker:
        yield broker


PULSE_TEST_SINK = "resonera_test"


def _pactl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("pactl"), *args], capture_output=True, text=True, timeout=10, check=False
    )


@pytest.fixture(scope="session")
def pulse_null_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PulseAudio null sink named ``resonera_test`` (48 kHz) as the default sink; yields its name.

    The daemon is started as docs/architecture.md §9 describes (it works as root without ``--system``),
    but in a runtime folder of its own (``PULSE_RUNTIME_PATH``, ``PULSE_SERVER``), so it never
    meets a desktop's or another test session's PulseAudio, and ``pulseaudio --kill`` stops only
    this one.
    PortAudio (through ALSA's ``pulse`` plugin) and ``parec`` find it through the environment.
    """
    pulseaudio = require_tool("pulseaudio")
    require_tool("parec")
    require_tool("pactl")
    runtime = tmp_path_factory.mktemp("pulse")
    socket = runtime / "native"
    env = {
        "PULSE_RUNTIME_PATH": str(runtime),
        "PULSE_STATE_PATH": str(runtime / "state"),
        "PULSE_SERVER": f"unix:{socket}",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        started = subprocess.run(
            [
                pulseaudio,
                "--daemonize=yes",
                "--exit-idle-time=-1",
                "-n",
                f"--load=module-null-sink sink_name={PULSE_TEST_SINK} rate=48000",
                f"--load=module-native-protocol-unix auth-anonymous=1 socket={socket}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=real_clock_env(),  # a sound server needs no date, and faketime stalls its timers
        )
        if started.returncode != 0:
            pytest.fail(f"pulseaudio did not start: {started.stderr.strip()[-500:]}")
        try:
            wait_until(lambda: _pactl("info").returncode == 0, what="pulseaudio to answer")
            default = _pactl("set-default-sink", PULSE_TEST_SINK)
            assert default.returncode == 0, default.stderr
            yield PULSE_TEST_SINK
        finally:
            subprocess.run([pulseaudio, "--kill"], capture_output=True, timeout=10, check=False)


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# One Playwright for the whole session: its sync API cannot be started a second time while one
# runs in the same thread, so the dashboard's tests and the end-to-end ones share it.
@pytest.fixture(scope="session")
def playwright_session() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def browser(playwright_session: Playwright) -> Iterator[Browser]:
    """Headless Chromium (``/usr/bin/chromium``), one for the session; tests open contexts."""
    executable = require_tool("chromium")
    browser = playwright_session.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    yield browser
    browser.close()
