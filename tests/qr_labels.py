"""Reading the batch's labels back as a scanner does: the QR codes of the label PNGs and of the
printable sheet's inline SVGs, decoded by zxing-cpp (a decoder of its own, not the generator)."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import zxingcpp


def png_pixels(path: Path) -> npt.NDArray[np.uint8]:
    """The pixels of a 1-bit greyscale PNG without interlacing, as segno writes its labels (the
    test has no image library; a label in another format fails here, loudly)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    chunks: dict[bytes, bytes] = {}
    at = 8
    while at < len(data):
        (size,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        chunks[kind] = chunks.get(kind, b"") + data[at + 8 : at + 8 + size]
        at += 12 + size
    width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour, interlace) == (1, 0, 0), "expected a 1-bit greyscale PNG"
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = (width + 7) // 8 + 1
    lines = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride).copy()
    for y in range(height):
        # segno writes each row unfiltered (0) or as "Up" (2): the difference to the row above
        assert lines[y, 0] in (0, 2), f"PNG filter {lines[y, 0]} is not one segno writes"
        if lines[y, 0] == 2 and y > 0:
            lines[y, 1:] += lines[y - 1, 1:]
    bits = np.unpackbits(lines[:, 1:], axis=1)[:, :width]
    return (bits * 255).astype(np.uint8)


def svg_pixels(svg: str) -> npt.NDArray[np.uint8]:
    """The modules of one of segno's inline SVGs (a path of horizontal runs: ``M x y h n m dx dy
    ...``, one unit a module, with its quiet zone), drawn 4 pixels a module."""
    box = re.search(r'viewBox="0 0 (\d+) \d+"', svg)
    path = re.search(r' d="([^"]+)"', svg)
    scale = re.search(r"scale\((\d+)\)", svg)
    assert box is not None and path is not None, "expected segno's SVG: a viewBox and one path"
    size = int(box.group(1)) // (int(scale.group(1)) if scale else 1)
    dark = np.zeros((size, size), dtype=bool)
    x = y = 0.0
    for op, args in re.findall(r"([Mmh])([-\d. ]+)", path.group(1)):
        numbers = [float(n) for n in args.split()]
        if op == "M":
            x, y = numbers
        elif op == "m":
            x, y = x + numbers[0], y + numbers[1]
        else:
            dark[int(y), int(x) : int(x + numbers[0])] = True
            x += numbers[0]
    pixels = np.where(dark, 0, 255).astype(np.uint8)
    return pixels.repeat(4, axis=0).repeat(4, axis=1)


def read_qr(pixels: npt.NDArray[np.uint8]) -> str:
    """The one QR code's text in ``pixels``."""
    [found] = zxingcpp.read_barcodes(pixels)
    assert found.format == zxingcpp.BarcodeFormat.QRCode
    return str(found.text)


def sheet_svgs(html: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", html, flags=re.S)
