"""The files of an imported batch, all or nothing: they are written into a staging folder beside
the batch's folder and renamed to it in one step, just before the registry commits; if the commit
fails the folder is removed again. So either the registry holds the batch and the folder holds
every code of it, or neither changed.

The folder (0700, its files 0600: they hold one-time codes or device keys):

- ``codes.csv`` (boards that enroll with a code): ``serial,device_id,code,expires_at``;
- ``devices.csv`` (factory bundles): ``serial,device_id,certificate_sha256,bundle``;
- ``bundles/<device id>/``: each board's factory bundle (``provisioning/bundle.py``);
- ``labels.html`` and ``labels/<device id>.png``: the printable labels (``labels.py``);
- ``report.txt``: every row of the file and what was found or made for it.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Final

from resonera.provisioning.batch import BatchError, Outcome, Standing
from resonera.provisioning.labels import Label, private_file, write_labels

CODES_CSV: Final = "codes.csv"
DEVICES_CSV: Final = "devices.csv"
BUNDLES: Final = "bundles"
REPORT: Final = "report.txt"


def summary(outcomes: Sequence[Outcome]) -> str:
    """``12 serials: 10 new, 2 already registered`` (and how many got a new code)."""
    made = [o for o in outcomes if o.made]
    fresh = sum(1 for o in made if o.standing is Standing.NEW)
    renewed = len(made) - fresh
    parts = [f"{fresh} new"]
    if renewed:
        parts.append(f"{renewed} given a new code")
    parts.append(f"{len(outcomes) - len(made)} already registered")
    return f"{len(outcomes)} serials: " + ", ".join(parts)


def report_text(outcomes: Sequence[Outcome], *, source: Path, now: datetime) -> str:
    lines = [
        f"resonera-provision devices import {source.name}, {now:%Y-%m-%d %H:%M} UTC",
        summary(outcomes),
        "",
        *(f"line {o.row.line}: {o.describe()}" for o in outcomes),
    ]
    return "\n".join(lines) + "\n"


class BatchFolder:
    """The batch's folder ``out``, made by ``publish`` (which refuses an existing ``out``: a new
    batch never overwrites an old one's codes) and taken back by ``discard``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._stage: Path | None = None
        self._published = False

    def check_free(self) -> None:
        if self.out.exists():
            raise BatchError(
                f"{self.out} exists: give a new folder (--out) for this batch's codes; "
                "an earlier batch's files are never overwritten"
            )

    @property
    def stage(self) -> Path:
        """The staging folder (made on first use), where bundles are written as they are made."""
        if self._stage is None:
            self.check_free()
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        return self._stage

    def publish(self, outcomes: Sequence[Outcome], *, source: Path, now: datetime) -> bool:
        """Write the batch's files and rename the staging folder to ``out``; False (nothing
        written) when no row made anything."""
        made = [o for o in outcomes if o.made]
        if not made:
            self.discard()
            return False
        stage = self.stage
        if any(o.bundle is not None for o in made):
            rows = [
                [
                    o.row.serial,
                    o.row.device_id,
                    o.certificate_sha256 or "",
                    f"{BUNDLES}/{o.row.device_id}",
                ]
                for o in made
            ]
            _write_csv(
                stage / DEVICES_CSV, ["serial", "device_id", "certificate_sha256", "bundle"], rows
            )
        else:
            rows = [[o.row.serial, o.row.device_id, o.code or "", _iso(o.expires_at)] for o in made]
            _write_csv(stage / CODES_CSV, ["serial", "device_id", "code", "expires_at"], rows)
        labels = [
            Label(o.row.serial, o.row.device_id, code=o.code, expires_at=o.expires_at) for o in made
        ]
        write_labels(labels, stage, title=f"Resonera enrollment labels: {source.name}")
        with private_file(stage / REPORT) as out:
            out.write(report_text(outcomes, source=source, now=now).encode())
        self.check_free()
        stage.rename(self.out)
        self._stage = None
        self._published = True
        return True

    def discard(self) -> None:
        """Remove what this batch wrote (the staging folder, or ``out`` once published)."""
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None
        if self._published:
            shutil.rmtree(self.out, ignore_errors=True)
            self._published = False


def _iso(when: datetime | None) -> str:
    return "" if when is None else when.isoformat(timespec="seconds")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with private_file(path) as out:
        out.write(text.getvalue().encode())
