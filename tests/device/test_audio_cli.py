"""``resonera-device render``, ``play PROGRAM --out`` and ``programs``, run as a person runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile
from support import free_port

from resonera.device.audio.chain import session_processors
from resonera.device.cli import resolve_program
from resonera.engine.audio.calibration import packaged_calibration
from resonera.engine.audio.synth import ProgramRenderer
from resonera.engine.safety.chain import SafetyChain, pass_through

BIN = Path(sys.executable).parent / "resonera-device"

SHORT = """
name = "short"
fade_in_s = 0.1
fade_out_s = 0.1
[[steps]]
duration_s = 1.0
label = "first"
[[steps.layers]]
type = "noise"
colour = "pink"
gain = 0.4
[[steps.layers]]
type = "binaural"
carrier_hz = 200
beat_hz = 10
gain = 0.3
slide = "exponential"
[[steps]]
duration_s = 1.0
label = "second"
[[steps.layers]]
type = "noise"
colour = "pink"
gain = 0.4
[[steps.layers]]
type = "binaural"
carrier_hz = 200
beat_hz = 4
gain = 0.3
"""


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def test_programs_lists_every_preset() -> None:
    result = run("programs")
    assert result.returncode == 0, result.stderr
    for name in ("demo-alpha", "calm-tone", "alpha-relax", "theta-descent", "focus-isochronic"):
        assert name in result.stdout


def test_render_writes_each_format_with_plain_progress_lines(tmp_path: Path) -> None:
    program = tmp_path / "short.toml"
    program.write_text(SHORT)
    for fmt, subtype in (("16", "PCM_16"), ("24", "PCM_24"), ("float", "FLOAT")):
        out = tmp_path / f"short-{fmt}.wav"
        result = run("render", program, out, "--format", fmt, "--rate", "48000", "--block", "1000")
        assert result.returncode == 0, result.stderr
        info = soundfile.info(str(out))
        assert (info.subtype, info.samplerate, info.frames) == (subtype, 48000, 96000)
        assert "x real time" in result.stdout
        # Not a terminal: plain lines (no carriage returns), naming the steps.
        assert "\r" not in result.stdout
        assert "rendering:" in result.stdout and "step 2/2 second" in result.stdout
    pcm, _ = soundfile.read(str(tmp_path / "short-float.wav"))
    assert np.abs(pcm).max() <= 1.0
    assert list(tmp_path.glob(".*tmp")) == []


def test_render_of_an_sbg_schedule(tmp_path: Path) -> None:
    sbg = tmp_path / "drift.sbg"
    sbg.write_text(
        "a: pink/30 200+10/20\nb: pink/30 200+6/20\nNOW == a ->\n+00:00:02 == b\n+00:00:03 b\n"
    )
    out = tmp_path / "drift.wav"
    result = run("render", sbg, out)
    assert result.returncode == 0, result.stderr
    assert soundfile.info(str(out)).frames == 3 * 44100
    assert "marks the end" in result.stderr  # the importer's note, not dropped


def test_render_refuses_a_bad_program_before_writing_anything(tmp_path: Path) -> None:
    program = tmp_path / "bad.toml"
    program.write_text(SHORT.replace("beat_hz = 4", "beat_hz = 99"))
    result = run("render", program, tmp_path / "x.wav")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "bad.toml" in line and "beat_hz" in line
    assert not (tmp_path / "x.wav").exists()
    result = run("render", "no-such-preset", tmp_path / "x.wav")
    assert result.returncode == 1 and "built-in programs" in result.stderr
    for block in ("0", "100000", "big"):
        result = run("render", "demo-alpha", tmp_path / "x.wav", "--block", block)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "argument --block" in result.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == [program]


def test_play_takes_the_program_as_an_argument_and_plays_into_out(tmp_path: Path) -> None:
    config = tmp_path / "device.toml"
    config.write_text(
        f'device_id = "cli-dev"\ndata_dir = "{tmp_path / "data"}"\n[mqtt]\nport = {free_port()}\n'
    )
    calibration = tmp_path / "cal.toml"
    calibration.write_text(
        'name = "t"\noutput = "headphones"\ndac_full_scale_vrms = 1.0\n'
        "sensitivity_db_spl_per_v = 100.0\n"
    )
    program = tmp_path / "short.toml"
    program.write_text(SHORT)
    out = tmp_path / "played.wav"
    result = run(
        "play", program, "--config", config, "--simulation", "--no-sync",
        "--out", out, "--format", "24", "--calibration", calibration,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "played 'short' for 2.0 s" in result.stdout
    assert "dB(A) SPL" in result.stdout  # the level, from the calibration
    assert soundfile.info(str(out)).subtype == "PCM_24"
    both = run("play", "demo-alpha", "--program", "calm-tone", "--config", config)
    assert both.returncode == 1 and "give the program once" in both.stderr


RENDER_IN_PROCESS = """
import sys
from pathlib import Path
from resonera.device.cli import main
code = main(sys.argv[1:])
status = Path("/proc/self/status").read_text()
peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
heavy = ("scipy.signal", "scipy.ndimage", "sqlmodel", "sqlalchemy", "paho", "pydantic_settings",
         "cryptography")
print("RESULT", code, peak, ",".join(name for name in heavy if name in sys.modules))
"""


def render_in_process(*args: object) -> tuple[int, int, list[str]]:
    """Exit code, peak RSS (KiB, this process's own) and heavy packages imported by a render."""
    result = subprocess.run(
        [sys.executable, "-c", RENDER_IN_PROCESS, "render", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    _, code, peak, heavy = line.split(" ")
    return int(code), int(peak), [name for name in heavy.split(",") if name]


def test_render_streams_in_flat_memory_and_starts_without_the_agent(tmp_path: Path) -> None:
    """Ten times the program needs no more memory (the render streams), and a render loads
    neither the store, the sync, the settings machinery nor scipy's signal package (the safety
    chain's A-weighting needs only its compiled filter cascade)."""
    peaks = []
    for minutes in (1, 10):
        program = tmp_path / f"noise-{minutes}.toml"
        program.write_text(SHORT.replace("duration_s = 1.0", f"duration_s = {minutes * 30}.0"))
        out = tmp_path / f"noise-{minutes}.wav"
        code, peak_kib, heavy = render_in_process(program, out, "--rate", "44100")
        assert code == 0 and heavy == []
        assert soundfile.info(str(out)).frames == minutes * 60 * 44100
        peaks.append(peak_kib)
    # Held whole, the longer render would take ~100 MB more (5 min of float32 stereo at 44.1 kHz);
    # streamed, only the read-ahead's queue varies (a few MiB on a loaded machine).
    assert peaks[1] - peaks[0] < 16 * 1024, peaks


def test_a_render_without_a_calibration_goes_through_the_safety_chain(tmp_path: Path) -> None:
    """Nothing reaches a file around the safety chain: without --calibration the render is held to
    the packaged reference headphones, the same bytes as naming that calibration. The chain's
    look-ahead is compensated: the file is the program's length, sample-aligned with it, to its
    last frame."""
    program = tmp_path / "short.toml"
    program.write_text(SHORT)
    bare, named = tmp_path / "bare.wav", tmp_path / "named.wav"
    result = run("render", program, bare, "--rate", "44100")
    assert result.returncode == 0, result.stderr
    assert "no calibration given: levels held as for the packaged 'reference-headphones'" in (
        result.stdout
    )
    calibration = packaged_calibration()
    result = run("render", program, named, "--rate", "44100", "--calibration", calibration)
    assert result.returncode == 0, result.stderr
    assert "no calibration given" not in result.stdout
    assert bare.read_bytes() == named.read_bytes()
    audio, _ = soundfile.read(str(bare), dtype="float32")
    [chain] = session_processors(None, 44100)
    assert isinstance(chain, SafetyChain)
    # the program itself as the chain makes it where no limit acts (onset, DC blocker), from its
    # first frame to its last (within the 16-bit dither), not the look-ahead's silence first and
    # the program's end cut off
    renderer = ProgramRenderer(resolve_program(str(program)), 44100)
    expected = pass_through(renderer.render(renderer.total_frames), 44100)
    assert chain.latency_frames > 0 and audio.shape == expected.shape
    assert np.max(np.abs(audio - expected)) <= 2 / 32768
    assert np.sqrt(np.mean(audio**2)) > 0.05
