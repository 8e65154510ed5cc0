"""The prescription loop's latency (issue 20): from a clinician's save (``PUT
/patients/{id}/desired`` answered) to the server showing every prescribed program applied by the
device (its ``reported`` message ingested), over 100 saves, one device, everything real on loopback:
mosquitto, the server (API and ingest in one process, SQLite), and a device agent (``DeviceService``:
the signed state verified, each program checked, kept sealed, reported; simulation mode, no MCU).
Each save swaps the order of two library programs, so every one is a new version to apply.

The clock starts when the API has answered the save (the state is signed, stored and published) and
stops at the first poll of ``GET .../desired`` (every 5 ms) that shows both programs applied: the
figure includes up to one poll interval. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "tests")]

from clinic import clinic, signing_key  # noqa: E402
from device_peer import device_settings  # noqa: E402
from support import run_mosquitto  # noqa: E402

from resonera.device.cli import resolve_program  # noqa: E402
from resonera.device.service import DeviceService  # noqa: E402

SAVES = 100
DEVICE = "bench-loop-1"
POLL_S = 0.005
PROGRAM = """name = "{name}"
fade_in_s = 1.0
fade_out_s = 1.0
[[steps]]
duration_s = 300.0
[[steps.layers]]
type = "binaural"
carrier_hz = {carrier}
beat_hz = 8.0
gain = 0.25
"""


def _all_applied(desired: dict[str, object]) -> bool:
    programs = desired["programs"]
    assert isinstance(programs, list)
    return bool(programs) and all(entry["state"] == "applied" for entry in programs)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder, run_mosquitto(Path(folder)) as broker:
        tmp = Path(folder)
        key_file, public_key = signing_key(tmp)
        settings = device_settings(broker, tmp, DEVICE, server_public_key=public_key)
        with clinic(broker, tmp, DEVICE, key_file) as site:
            api = site.api
            ids = []
            for name, carrier in (("Loop A", 180.0), ("Loop B", 220.0)):
                added = api.post(
                    f"{site.server.api_url}/programs",
                    json={"document": PROGRAM.format(name=name, carrier=carrier)},
                )
                added.raise_for_status()
                ids.append(added.json()["id"])
            service = DeviceService(settings, resolve_program)
            service.start()
            try:
                latencies = []
                for save in range(SAVES + 1):  # the first warms up (connection, caches)
                    order = ids if save % 2 == 0 else ids[::-1]
                    etag = api.get("/desired").headers["ETag"]
                    put = api.put(
                        "/desired",
                        json={
                            "programs": [{"library_id": i} for i in order],
                            "sessions_per_week": 5,
                        },
                        headers={"If-Match": etag},
                    )
                    put.raise_for_status()
                    saved = time.perf_counter()
                    deadline = saved + 60.0
                    while not _all_applied(api.get("/desired").json()):
                        if time.perf_counter() > deadline:
                            raise SystemExit(f"save {save}: not applied within 60 s")
                        time.sleep(POLL_S)
                    if save:
                        latencies.append((time.perf_counter() - saved) * 1000)
            finally:
                service.close()
    ms = sorted(latencies)
    print(f"prescription loop, save answered → both programs shown applied ({SAVES} saves):")
    print(
        f"  p50 {statistics.median(ms):.0f} ms   p95 {ms[int(0.95 * (len(ms) - 1))]:.0f} ms   "
        f"max {ms[-1]:.0f} ms   (one device, loopback, polled every {POLL_S * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
