"""Time sources for the dose clock (``device/trusted_time.py``) that tests control: a wall clock
that can be set anywhere (1970, a year ahead), a boot clock that only moves forward, reboots, and
network time that comes and goes."""

from __future__ import annotations

from dataclasses import dataclass, field

from resonera.device.trusted_time import BootReading, TimeSources, read_boot_clock

#: The real clocks, with the wall clock taken as synchronised (a device with network time).
SYNCED = TimeSources(synchronized=lambda: True)


@dataclass
class FakeTime:
    """``real`` is the true time; the device's wall clock reads ``real + wall_error``; the boot
    clock counts from the last ``reboot``; ``synced``: the kernel says network time is set."""

    real: float
    wall_error: float = 0.0
    synced: bool = False
    boot_number: int = 1
    booted_at: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.booted_at = self.real

    def sources(self) -> TimeSources:
        return TimeSources(wall=self.wall, boot=self.boot, synchronized=lambda: self.synced)

    def wall(self) -> float:
        return self.real + self.wall_error

    def boot(self) -> BootReading:
        return BootReading(f"boot-{self.boot_number}", self.real - self.booted_at)

    def advance(self, seconds: float) -> None:
        self.real += seconds

    def reboot(self, *, off_for: float = 0.0, wall_error: float | None = None) -> None:
        """Power off for ``off_for`` seconds and boot again, network time not yet there."""
        self.real += off_for
        self.boot_number += 1
        self.booted_at = self.real
        self.synced = False
        if wall_error is not None:
            self.wall_error = wall_error


__all__ = ["SYNCED", "FakeTime", "read_boot_clock"]
