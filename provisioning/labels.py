"""Printable labels for a batch of boards: one QR code each, with the same facts in print beside it.

The QR code holds a URI, ``resonera:enroll?serial=...&device_id=...&code=...`` (percent-encoded,
``v=1``): the one-time enrollment code, for the board with that serial, enrolling as that device id.
A board that came with a factory bundle needs no code: its label holds ``resonera:device?...`` with
the serial and device id only. ``label_payload`` writes it and ``read_label_payload`` reads it back
(what a scanner at the bench does).

``write_labels`` writes ``labels.html`` (an A4 sheet, three labels a row, each QR code an inline SVG:
print it from any browser) and ``labels/<device id>.png`` (one image a label, for a label printer).
A label with a code is a secret until its board is enrolled: the files are the owner's alone (0600).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import segno

from resonera.common.errors import ResoneraError

SCHEME: Final = "resonera"
PAYLOAD_VERSION: Final = "1"
#: Medium error correction: a label that is scratched or badly printed still reads.
ERROR_LEVEL: Final = "m"
#: Pixels per QR module in the PNGs: 8 makes a 4-M code about 4 cm wide at 200 dpi.
PNG_SCALE: Final = 8
LABELS_HTML: Final = "labels.html"
LABELS_DIR: Final = "labels"


class LabelError(ResoneraError):
    """A label's QR text is not one of ours."""


@dataclass(frozen=True)
class Label:
    """What one label shows: ``code`` and ``expires_at`` only when the board enrolls with a code."""

    serial: str
    device_id: str
    code: str | None = None
    expires_at: datetime | None = None

    def payload(self) -> str:
        """The text of the label's QR code."""
        fields = {"v": PAYLOAD_VERSION, "serial": self.serial, "device_id": self.device_id}
        if self.code is not None:
            return f"{SCHEME}:enroll?{urlencode({**fields, 'code': self.code})}"
        return f"{SCHEME}:device?{urlencode(fields)}"


def read_label_payload(text: str) -> Label:
    """The label a QR text was made from; ``LabelError`` when it is not one of ours."""
    parts = urlsplit(text)
    if parts.scheme != SCHEME or parts.path not in ("enroll", "device"):
        raise LabelError(f"{text[:60]!r} is not a Resonera label")
    fields = {key: values[0] for key, values in parse_qs(parts.query, strict_parsing=True).items()}
    if fields.get("v") != PAYLOAD_VERSION or "serial" not in fields or "device_id" not in fields:
        raise LabelError(f"{text[:60]!r} is not a version {PAYLOAD_VERSION} Resonera label")
    code = fields.get("code")
    if (parts.path == "enroll") != (code is not None):
        raise LabelError(f"{text[:60]!r}: an enroll label carries a code, a device label none")
    return Label(serial=fields["serial"], device_id=fields["device_id"], code=code)


def write_labels(labels: Sequence[Label], folder: Path, *, title: str) -> Path:
    """Write the sheet and one PNG per label into ``folder``; return the sheet's path."""
    images = folder / LABELS_DIR
    images.mkdir(mode=0o700, parents=True, exist_ok=True)
    cells = []
    for label in labels:
        qr = segno.make(label.payload(), error=ERROR_LEVEL)
        with private_file(images / f"{label.device_id}.png") as out:
            qr.save(out, kind="png", scale=PNG_SCALE)
        cells.append(_cell(label, qr.svg_inline(scale=4, omitsize=True)))
    sheet = folder / LABELS_HTML
    with private_file(sheet) as out:
        out.write(_SHEET.format(title=html.escape(title), cells="\n".join(cells)).encode())
    return sheet


def _cell(label: Label, svg: str) -> str:
    lines = [
        f"<div class=serial>{html.escape(label.serial)}</div>",
        f"<div>device <b>{html.escape(label.device_id)}</b></div>",
    ]
    if label.expires_at is not None:
        day, hour = f"{label.expires_at:%Y-%m-%d}", f"{label.expires_at:%H:%M} UTC"
        lines.append(f"<div>valid until <time>{day}</time> <time>{hour}</time></div>")
    code = f"<div class=code>{html.escape(label.code)}</div>" if label.code is not None else ""
    return f"<section class=label>{svg}<div class=text>{''.join(lines)}</div>{code}</section>"


def private_file(path: Path) -> BinaryIO:
    """A new file only its owner may read (0600 from its creation, never briefly wider), for
    writing; it must not exist yet (the batch writes into a new staging folder)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


_SHEET: Final = """<!doctype html>
<html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
@page {{ size: A4; margin: 10mm; }}
body {{ font: 11pt system-ui, sans-serif; margin: 0 auto; max-width: 190mm; padding: 4mm; }}
h1 {{ font-size: 13pt; margin: 0 0 2mm; }}
p.note {{ margin: 0 0 4mm; font-size: 9pt; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(60mm, 1fr)); gap: 3mm; }}
.label {{ border: 1px dashed #888; padding: 2mm; display: grid; gap: 1mm 2mm;
  grid-template-columns: 26mm 1fr; align-items: center; break-inside: avoid; }}
.label svg {{ width: 26mm; height: 26mm; }}
.text {{ min-width: 0; overflow-wrap: anywhere; font-size: 9pt; line-height: 1.35; }}
.text time {{ white-space: nowrap; }}
.serial {{ font-size: 11pt; font-weight: 700; }}
.code {{ grid-column: 1 / -1; text-align: center; white-space: nowrap;
  font: 700 10pt ui-monospace, monospace; }}
@media print {{ p.note {{ display: none; }} .label {{ border-color: #ccc; }} }}
</style></head>
<body><h1>{title}</h1>
<p class=note>One-time enrollment codes: keep this sheet as you would a key until the boards
are enrolled. Print at 100 % (A4); each label reads with any QR scanner.</p>
<main>
{cells}
</main></body></html>
"""
