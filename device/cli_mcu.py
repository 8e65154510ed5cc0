"""``resonera-device mcu-update FILE``: flash the safety MCU by hand with a signed firmware image
(``resonera-provision update sign-firmware``), as a technician at the bench does; in the field the
agent updates its MCU itself (``docs/updates.md``).

The serial port has one owner: while the agent runs, it holds the port, so this command refuses
and says how to stop it. Each step is printed as it happens; the exit status is 0 when the new
image runs and was confirmed, 1 when it was refused or rolled back (the MCU runs its old image).
"""

from __future__ import annotations

import argparse
import time

from resonera.common.errors import ResoneraError
from resonera.device.cli_args import settings_from_args
from resonera.device.cli_service import service_status

#: How long the MCU has to say HELLO once its port is open.
HELLO_WAIT_S = 5.0


def mcu_update_command(args: argparse.Namespace) -> int:
    # the agent's modules (the link's threads, pyserial) only for this command
    from resonera.device.hwmonitor import HardwareMonitor
    from resonera.device.mcu_update import McuUpdateReport, SignedImage, update_mcu

    settings = settings_from_args(args)
    if settings.serial_url is None:
        raise ResoneraError("serial_url is not set: the settings name no safety MCU to update")
    SignedImage.load(args.image)  # a bad file is said before the port is touched
    if service_status(settings) is not None:
        raise ResoneraError(
            "the agent is running and holds the safety MCU's serial port (it updates the MCU "
            "from its update bundles itself); to flash by hand, stop it first: "
            "systemctl stop resonera-device"
        )

    def show(report: McuUpdateReport) -> None:
        detail = f": {report.detail}" if report.detail else ""
        print(
            f"{report.state:<11} {report.from_version} -> {report.to_version}{detail}", flush=True
        )

    with HardwareMonitor(settings.serial_url) as monitor:
        deadline = time.monotonic() + HELLO_WAIT_S
        while monitor.hello is None and time.monotonic() < deadline:
            time.sleep(0.05)
        result = update_mcu(monitor, args.image, report=show)
    if result.state == "installed":
        print(
            f"the safety MCU runs firmware {result.to_version} (was {result.from_version}); "
            f"sent in {result.transfer_s:.1f} s, {result.total_s:.1f} s in all"
        )
        return 0
    print(f"the safety MCU still runs firmware {result.from_version}: {result.reason}")
    return 1
