"""``resonera-device update status`` and ``resonera-device slots adopt|install-launcher``: the agent's
two slots as ``data_dir/agent/state.json`` records them (``device/updater/``, ``docs/updates.md``)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from resonera.device.cli_args import settings_from_args
from resonera.device.updater.slots import AgentSlots


def _slots(args: argparse.Namespace) -> AgentSlots:
    return AgentSlots.of(settings_from_args(args).data_dir)


def update_status_command(args: argparse.Namespace) -> int:
    slots = _slots(args)
    state = slots.state()
    summary: dict[str, Any] = {
        "agent_dir": str(slots.directory),
        "set_up": state.get("good") is not None,
        "current": slots.current(),
        "good": state.get("good"),
        "trial": state.get("trial"),
        "last_failure": state.get("failure"),
        "update_keys_pinned_by_bundle": state.get("update_keys"),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"agent slots in {slots.directory}")
    good, trial, failure = summary["good"], summary["trial"], summary["last_failure"]
    if good is None:
        print("  not set up (resonera-device slots adopt PATH)")
        return 0
    print(f"  good        slot {good['slot']}, agent {good['version']}")
    print(f"  current     slot {summary['current'] or '(no link)'}")
    if trial:
        launched = "not launched yet" if not trial.get("launches") else "on trial now"
        print(
            f"  trial       slot {trial['slot']}, agent {trial['version']} "
            f"(from {trial['from_version']}, rollout {trial['rollout']}): {launched}"
        )
    else:
        print("  trial       none")
    if failure:
        at = datetime.fromtimestamp(float(failure["at"]), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        reported = "reported" if failure.get("reported") else "not reported yet"
        print(
            f"  last failure  agent {failure['version']} at {at} ({reported}): {failure['reason']}"
        )
    return 0


def slots_adopt_command(args: argparse.Namespace) -> int:
    slots = _slots(args)
    version = slots.adopt(args.path)
    print(
        f"slot a is {args.path.resolve()} (agent {version}); launcher {slots.directory}/launch.py"
    )
    return 0


def slots_install_launcher_command(args: argparse.Namespace) -> int:
    path = _slots(args).install_launcher()
    print(f"launcher installed: {path}")
    return 0
