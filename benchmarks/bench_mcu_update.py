"""Updating the safety MCU's firmware (issue 25): how long a 64 KiB image takes over the link, and
how long the output is held muted for it.

The production path end to end: ``McuUpdater`` on the device's ``HardwareMonitor`` (pyserial on
the simulator's pty), the firmware's ``Controller`` and bootloader in the simulator, the image
signed with Ed25519 and checked by the simulated bootloader. The simulated MCU reads its UART no
faster than 115200 baud 8N1 delivers (11,520 bytes/s), so the transfer takes what it would on the
wire; a second run lifts that limit (the pty's own speed: what the protocol's turnarounds cost).

Printed per run: the transfer (UPDATE_BEGIN to the last chunk's answer) with its rate and the wire's
floor (every frame byte at 11,520 bytes/s), the whole update (to UPDATE_CONFIRM's answer), the time
the mute line was held by the update (from the bootloader taking UPDATE_BEGIN to the health check's
ARM after the reboot: no sound could play) and the samples of the mute line that saw it open
during the transfer (must be 0). A third run loses power at a random chunk: the resume's cost.

Figures only (printed); nothing here asserts on time.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resonera.common import serial_link as sl
from resonera.device.hwmonitor import HardwareMonitor
from resonera.device.mcu_update import McuUpdater, McuUpdateReport, McuUpdateResult, SignedImage
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.sim import Simulator, build_image, public_key_hex, sign_image

IMAGE_BYTES = 64 * 1024
UART_BYTES_PER_S = 115200 / 10  # 8N1: ten bit times a byte


@dataclass
class Run:
    result: McuUpdateResult
    muted_s: float
    open_in_transfer: int
    samples: int


def _wire_floor_s(image_size: int) -> float:
    chunks = -(-image_size // sl.UPDATE_CHUNK_MAX)
    framed = image_size + chunks * (4 + 4 + 1 + 1)  # offset, type+seq+CRC, COBS code, delimiter
    return framed / UART_BYTES_PER_S


def _one(*, throttled: bool, power_loss_at: int | None = None) -> Run:
    key = Ed25519PrivateKey.generate()
    config = BoardConfig(firmware_version="1.4.2", update_public_key=public_key_hex(key))
    image = SignedImage.parse(sign_image(key, build_image("1.5.0", IMAGE_BYTES)))
    rate = UART_BYTES_PER_S if throttled else None
    with Simulator(config, rx_bytes_per_s=rate) as sim:
        if power_loss_at is not None:
            sim.power_loss_at_chunk(power_loss_at)
        with HardwareMonitor(sim.port_path, silence_timeout_s=0.5) as monitor:
            deadline = time.monotonic() + 5
            while monitor.hello is None and time.monotonic() < deadline:
                time.sleep(0.01)
            marks: dict[str, float] = {}
            open_in_transfer = 0
            samples = 0
            stop = threading.Event()

            def probe() -> None:
                nonlocal open_in_transfer, samples
                while not stop.wait(0.001):
                    if sim.updating:
                        marks.setdefault("held", time.monotonic())
                        samples += 1
                        if not sim.muted:
                            open_in_transfer += 1

            def on_report(step: McuUpdateReport) -> None:
                if step.detail.startswith("health check"):
                    marks.setdefault("health", time.monotonic())

            watcher = threading.Thread(target=probe, daemon=True)
            watcher.start()
            result = McuUpdater(monitor, report=on_report, status_timeout_s=2.0).run(image)
            stop.set()
            watcher.join()
    held = marks.get("health", 0.0) - marks.get("held", 0.0)
    return Run(result, held, open_in_transfer, samples)


def _print(title: str, run: Run) -> None:
    r = run.result
    print(f"{title}: {r.state} ({r.from_version} → {r.to_version}) {r.reason}")
    print(
        f"  transfer {r.transfer_s:6.2f} s  {IMAGE_BYTES / r.transfer_s / 1024:6.1f} KiB/s"
        f"   (wire floor at 115200 baud {_wire_floor_s(IMAGE_BYTES):.2f} s)"
    )
    print(f"  whole update {r.total_s:6.2f} s, resumes {r.resumes}")
    print(
        f"  output held muted by the update {run.muted_s:6.2f} s; mute line open during the "
        f"transfer in {run.open_in_transfer} of {run.samples} samples"
    )


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    print(f"MCU firmware update, {IMAGE_BYTES // 1024} KiB image, Ed25519-signed")
    _print("115200 baud", _one(throttled=True))
    _print("pty speed", _one(throttled=False))
    chunk = random.Random(25).randrange(1, IMAGE_BYTES // sl.UPDATE_CHUNK_MAX)
    _print(f"115200 baud, power lost at chunk {chunk}", _one(throttled=True, power_loss_at=chunk))


if __name__ == "__main__":
    main()
