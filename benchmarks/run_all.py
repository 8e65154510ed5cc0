"""Run every benchmark and print its figures (``make bench``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "tests")]

import bench_agent  # noqa: E402
import bench_agent_update  # noqa: E402
import bench_button_reaction  # noqa: E402
import bench_dashboard  # noqa: E402
import bench_fault_reaction  # noqa: E402
import bench_fleet  # noqa: E402
import bench_ingest  # noqa: E402
import bench_mcu_update  # noqa: E402
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

BENCHMARKS = (
    bench_synth,
    bench_render,
    bench_safety_chain,
    bench_prompt_mixer,
    bench_fault_reaction,
    bench_button_reaction,
    bench_mcu_update,
    bench_agent,
    bench_agent_update,
    bench_ingest,
    bench_server_ingest,
    bench_fleet,
    bench_server_api,
    bench_dashboard,
    bench_outcomes,
    bench_preview,
    bench_prescription,
    bench_prescription_loop,
)


def main() -> None:
    for index, bench in enumerate(BENCHMARKS):
        if index:
            print()
        bench.main()


if __name__ == "__main__":
    main()
