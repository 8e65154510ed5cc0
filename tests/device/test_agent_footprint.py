"""The agent's memory (issue 6: RSS ≤ 100 MB while playing): importing ``scipy.signal`` costs some
70 MB and SQLAlchemy with its ORM some 20 MB, so the agent must import neither at start, nor while
it plays with its prompts loaded and records the session (the store and the dose ledger use plain
``sqlite3``). Only building the prompts (install time) may import scipy.signal. Checked in a fresh
interpreter, where nothing else has imported them yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import require_tool

from resonera.device.prompts import build_prompts, prompts_dir
from resonera.engine.audio.calibration import load_calibration_file, packaged_calibration

#: The agent as ``resonera-device run`` has it: the service (its panel loads the cached prompts),
#: then a short session played through the panel's prompt mixer and the safety chain.
AGENT = """
import sys
from pathlib import Path

from resonera.common.program import Program, Step, ToneLayer
from resonera.device.session import Session
from resonera.engine.audio.sinks import NullSink
from resonera.device.service import DeviceService
from resonera.device.settings import DeviceSettings

assert "scipy.signal" not in sys.modules, "imported at start"
settings = DeviceSettings(
    device_id="footprint",
    data_dir=Path(sys.argv[1]),
    simulation=True,
    sink="null",
    calibration_file=Path(sys.argv[2]),
    sample_rate=44100,
)
tone = ToneLayer(frequency_hz=440.0, gain=0.1)
program = Program(name="tone", fade_in_s=0.5, fade_out_s=0.5, steps=[Step(duration_s=3, layers=[tone])])
service = DeviceService(settings, lambda _name: program)
assert service.panel.library is not None, "the prompts were not loaded"
service.panel.mixer.say(*service.panel.library.clips("session_start"))
record = Session(service.session_parts).run(program, NullSink())
assert record.outcome == "completed", record
assert list(service.panel.mixer.spoken) == ["session_start"]
assert service.status()["outbox_depth"] >= 1
assert service.store.sessions()[0].session_id == record.session_id
service.store.close()
print(sorted(m for m in ("scipy.signal", "sqlalchemy", "sqlmodel", "alembic") if m in sys.modules))
"""


def test_the_agent_plays_with_its_prompts_and_records_without_scipy_signal_or_the_orm(
    tmp_path: Path,
) -> None:
    require_tool("espeak-ng")
    data = tmp_path / "data"
    calibration = packaged_calibration()
    build_prompts(
        prompts_dir(data),
        load_calibration_file(calibration),
        sample_rate=44100,
        keys=["session_start"],
    )
    result = subprocess.run(
        [sys.executable, "-c", AGENT, str(data), str(calibration)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
