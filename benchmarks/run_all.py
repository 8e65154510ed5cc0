"""Run every benchmark and print its figures (``make bench``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "tests")]

import bench_agent  # noqa: E402
import bench_button_reaction  # noqa: E402
import bench_dashboard  # noqa: E402
import bench_fault_reaction  # noqa: E402
import bench_fleet  # noqa: E402
import bench_ingest  # noqa: E402
import bench_outcomes  # noqa: E402
import bench_prescription  # noqa: E402
import bench_prescription_loop  # noqa: E402
import bench_preview  # noqa: E402
import bench_prompt_mixer  # noqa: E402
import bench_render  # noqa: E402
import bench_safety_chain  # noqa: E402
import bench_server_api  # noqa: E402
import bench_server_ingest  # noqa: E402
import bench_synth  # noqa: E402


def main() -> None:
    bench_synth.main()
    print()
    bench_render.main()
    print()
    bench_safety_chain.main()
    print()
    bench_prompt_mixer.main()
    print()
    bench_fault_reaction.main()
    print()
    bench_button_reaction.main()
    print()
    bench_agent.main()
    print()
    bench_ingest.main()
    print()
    bench_server_ingest.main()
    print()
    bench_fleet.main()
    print()
    bench_server_api.main()
    print()
    bench_dashboard.main()
    print()
    bench_outcomes.main()
    print()
    bench_preview.main()
    print()
    bench_prescription.main()
    print()
    bench_prescription_loop.main()


if __name__ == "__main__":
    main()
