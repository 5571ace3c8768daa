"""A small PNG writer for report charts: numpy rasteriser, 5x7 bitmap font, zlib.

It draws only what :mod:`governor.spend._charts` lays out (filled boxes,
horizontal or vertical rules, one-line text) so that ``governor report --png``
needs no plotting library. Text is upper-cased onto a 5x7 pixel font.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from governor.spend._charts import Box, Chart, Rule, Text

__all__ = ["render_png"]

Canvas = npt.NDArray[np.uint8]

# Each glyph is seven rows of five pixels, a row's bits read left to right;
# every printable ASCII character has one (lower case is drawn upper-cased).
_GLYPHS: dict[str, tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "0": (14, 17, 19, 21, 25, 17, 14),
    "1": (4, 12, 4, 4, 4, 4, 14),
    "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14),
    "4": (2, 6, 10, 18, 31, 2, 2),
    "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14),
    "7": (31, 1, 2, 4, 8, 8, 8),
    "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12),
    "A": (14, 17, 17, 17, 31, 17, 17),
    "B": (30, 17, 17, 30, 17, 17, 30),
    "C": (14, 17, 16, 16, 16, 17, 14),
    "D": (28, 18, 17, 17, 17, 18, 28),
    "E": (31, 16, 16, 30, 16, 16, 31),
    "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15),
    "H": (17, 17, 17, 31, 17, 17, 17),
    "I": (14, 4, 4, 4, 4, 4, 14),
    "J": (7, 2, 2, 2, 2, 18, 12),
    "K": (17, 18, 20, 24, 20, 18, 17),
    "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17),
    "N": (17, 17, 25, 21, 19, 17, 17),
    "O": (14, 17, 17, 17, 17, 17, 14),
    "P": (30, 17, 17, 30, 16, 16, 16),
    "Q": (14, 17, 17, 17, 21, 18, 13),
    "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30),
    "T": (31, 4, 4, 4, 4, 4, 4),
    "U": (17, 17, 17, 17, 17, 17, 14),
    "V": (17, 17, 17, 17, 17, 10, 4),
    "W": (17, 17, 17, 21, 21, 21, 10),
    "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 17, 10, 4, 4, 4),
    "Z": (31, 1, 2, 4, 8, 16, 31),
    ".": (0, 0, 0, 0, 0, 12, 12),
    ",": (0, 0, 0, 0, 12, 4, 8),
    ":": (0, 12, 12, 0, 12, 12, 0),
    "-": (0, 0, 0, 31, 0, 0, 0),
    "_": (0, 0, 0, 0, 0, 0, 31),
    "/": (0, 1, 2, 4, 8, 16, 0),
    "$": (4, 15, 20, 14, 5, 30, 4),
    "%": (24, 25, 2, 4, 8, 19, 3),
    "(": (2, 4, 8, 8, 8, 4, 2),
    ")": (8, 4, 2, 2, 2, 4, 8),
    "+": (0, 4, 4, 31, 4, 4, 0),
    "=": (0, 0, 31, 0, 31, 0, 0),
    "#": (10, 10, 31, 10, 31, 10, 10),
    "?": (14, 17, 1, 2, 4, 0, 4),
    "!": (4, 4, 4, 4, 0, 0, 4),
    "~": (0, 0, 8, 21, 2, 0, 0),
    "'": (12, 4, 8, 0, 0, 0, 0),
    "<": (2, 4, 8, 16, 8, 4, 2),
    ">": (8, 4, 2, 1, 2, 4, 8),
    "*": (0, 4, 21, 14, 21, 4, 0),
    '"': (10, 10, 10, 0, 0, 0, 0),
    "&": (12, 18, 20, 8, 21, 18, 13),
    ";": (0, 12, 12, 0, 12, 4, 8),
    "@": (14, 17, 1, 13, 21, 21, 14),
    "[": (14, 8, 8, 8, 8, 8, 14),
    "\\": (0, 16, 8, 4, 2, 1, 0),
    "]": (14, 2, 2, 2, 2, 2, 14),
    "^": (4, 10, 17, 0, 0, 0, 0),
    "`": (8, 4, 2, 0, 0, 0, 0),
    "{": (2, 4, 4, 8, 4, 4, 2),
    "|": (4, 4, 4, 4, 4, 4, 4),
    "}": (8, 4, 4, 2, 4, 4, 8),
}
_CELL_W = 6  # five pixels of glyph and one of spacing


def _rgb(color: str) -> tuple[int, int, int]:
    value = int(color.lstrip("#"), 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def _scale(size: int) -> int:
    # The font is 7 px tall; titles (16 px) draw at twice that.
    return 2 if size >= 14 else 1


def _pixel(value: float) -> int:
    """The pixel edge nearest ``value``, halves rounded up.

    ``round()`` rounds halves to even, so at x = 543.5 a one-pixel glyph
    column would span round(543.5) .. round(544.5), 544 .. 544: no pixel.
    Rounding every half the same way keeps each span's width at any x.
    """
    return math.floor(value + 0.5)


def _fill(canvas: Canvas, x0: float, y0: float, x1: float, y1: float, c: str) -> None:
    height, width = canvas.shape[:2]
    left, right = max(_pixel(x0), 0), min(_pixel(x1), width)
    top, bottom = max(_pixel(y0), 0), min(_pixel(y1), height)
    if left < right and top < bottom:
        canvas[top:bottom, left:right] = _rgb(c)


def _draw_text(canvas: Canvas, item: Text) -> None:
    scale = _scale(item.size)
    text = item.text.upper()
    width = len(text) * _CELL_W * scale
    x = item.x - {"start": 0, "middle": width / 2, "end": width}[item.anchor]
    top = item.y - 7 * scale
    for i, char in enumerate(text):
        rows = _GLYPHS.get(char, _GLYPHS["?"])
        left = x + i * _CELL_W * scale
        for r, bits in enumerate(rows):
            for col in range(5):
                if bits & (16 >> col):
                    px, py = left + col * scale, top + r * scale
                    _fill(canvas, px, py, px + scale, py + scale, item.fill)


def _draw(canvas: Canvas, chart: Chart, y_offset: int) -> None:
    for item in chart.items:
        if isinstance(item, Box):
            y = item.y + y_offset
            _fill(canvas, item.x, y, item.x + item.w, y + item.h, item.fill)
        elif isinstance(item, Rule):
            y1, y2 = item.y1 + y_offset, item.y2 + y_offset
            _fill(canvas, item.x1, y1, item.x2 + 1, y2 + 1, item.stroke)
        else:
            _draw_text(canvas, replace(item, y=item.y + y_offset))


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def encode_png(canvas: Canvas) -> bytes:
    """Encode an RGB ``uint8`` array of shape (height, width, 3) as PNG bytes."""
    height, width = canvas.shape[:2]
    # Filter type 0 (None) before each scanline, as the PNG spec requires.
    raw = np.zeros((height, width * 3 + 1), dtype=np.uint8)
    raw[:, 1:] = canvas.reshape(height, width * 3)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)),
            _chunk(b"IEND", b""),
        )
    )


def render_png(charts: Sequence[Chart], *, gap: int = 16) -> bytes:
    """Draw the charts one under another on white and return PNG bytes."""
    width = max((c.width for c in charts), default=1)
    height = max(sum(c.height for c in charts) + gap * (len(charts) - 1), 1)
    canvas: Canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for chart in charts:
        _draw(canvas, chart, y)
        y += chart.height + gap
    return encode_png(canvas)
