"""A cost-quality scatter chart written as a PNG, with numpy and zlib only.

Just enough plotting for the evaluation report: axes with ticks, points,
polylines, dashed guides and upper-case labels in a 5x7 pixel font. The PNG
encoder writes 8-bit RGB, one IDAT chunk.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["Series", "encode_png", "render_chart", "write_chart"]

Color = tuple[int, int, int]
Image = npt.NDArray[np.uint8]

# 5x7 glyphs, one string of five 0/1 columns per row, top row first.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11110", "00001", "00001", "01110", "00001", "00001", "11110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
    "A": ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),
    "B": ("11110", "10001", "10001", "11110", "10001", "10001", "11110"),
    "C": ("01110", "10001", "10000", "10000", "10000", "10001", "01110"),
    "D": ("11100", "10010", "10001", "10001", "10001", "10010", "11100"),
    "E": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "F": ("11111", "10000", "10000", "11110", "10000", "10000", "10000"),
    "G": ("01110", "10001", "10000", "10111", "10001", "10001", "01111"),
    "H": ("10001", "10001", "10001", "11111", "10001", "10001", "10001"),
    "I": ("01110", "00100", "00100", "00100", "00100", "00100", "01110"),
    "J": ("00111", "00010", "00010", "00010", "00010", "10010", "01100"),
    "K": ("10001", "10010", "10100", "11000", "10100", "10010", "10001"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "M": ("10001", "11011", "10101", "10101", "10001", "10001", "10001"),
    "N": ("10001", "10001", "11001", "10101", "10011", "10001", "10001"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    "P": ("11110", "10001", "10001", "11110", "10000", "10000", "10000"),
    "Q": ("01110", "10001", "10001", "10001", "10101", "10010", "01101"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "S": ("01111", "10000", "10000", "01110", "00001", "00001", "11110"),
    "T": ("11111", "00100", "00100", "00100", "00100", "00100", "00100"),
    "U": ("10001", "10001", "10001", "10001", "10001", "10001", "01110"),
    "V": ("10001", "10001", "10001", "10001", "10001", "01010", "00100"),
    "W": ("10001", "10001", "10001", "10101", "10101", "10101", "01010"),
    "X": ("10001", "10001", "01010", "00100", "01010", "10001", "10001"),
    "Y": ("10001", "10001", "01010", "00100", "00100", "00100", "00100"),
    "Z": ("11111", "00001", "00010", "00100", "01000", "10000", "11111"),
    ".": ("00000", "00000", "00000", "00000", "00000", "01100", "01100"),
    ",": ("00000", "00000", "00000", "00000", "01100", "00100", "01000"),
    "-": ("00000", "00000", "00000", "11111", "00000", "00000", "00000"),
    "+": ("00000", "00100", "00100", "11111", "00100", "00100", "00000"),
    "=": ("00000", "00000", "11111", "00000", "11111", "00000", "00000"),
    ">": ("01000", "00100", "00010", "00001", "00010", "00100", "01000"),
    "<": ("00010", "00100", "01000", "10000", "01000", "00100", "00010"),
    "(": ("00010", "00100", "01000", "01000", "01000", "00100", "00010"),
    ")": ("01000", "00100", "00010", "00010", "00010", "00100", "01000"),
    "/": ("00001", "00010", "00010", "00100", "01000", "01000", "10000"),
    ":": ("00000", "01100", "01100", "00000", "01100", "01100", "00000"),
    "%": ("11001", "11010", "00010", "00100", "01000", "01011", "10011"),
    "@": ("01110", "10001", "10111", "10101", "10111", "10000", "01111"),
    " ": ("00000",) * 7,
}
_BLACK: Color = (0, 0, 0)
_GREY: Color = (170, 170, 170)
_LIGHT: Color = (225, 225, 225)
_RED: Color = (200, 40, 40)


@dataclass(frozen=True, slots=True)
class Series:
    """Points to plot: joined by a line or not, drawn as squares."""

    label: str
    points: Sequence[tuple[float, float]]
    color: Color
    line: bool = False
    marker_px: int = 3


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.pixels: Image = np.full((height, width, 3), 255, dtype=np.uint8)

    def dot(self, x: int, y: int, color: Color, radius: int = 0) -> None:
        height, width, _ = self.pixels.shape
        top, bottom = max(y - radius, 0), min(y + radius + 1, height)
        left, right = max(x - radius, 0), min(x + radius + 1, width)
        if top < bottom and left < right:
            self.pixels[top:bottom, left:right] = color

    def line(
        self, a: tuple[int, int], b: tuple[int, int], color: Color, dash: int = 0
    ) -> None:
        steps = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
        for i in range(steps + 1):
            if dash and (i // dash) % 2:
                continue
            x = round(a[0] + (b[0] - a[0]) * i / steps)
            y = round(a[1] + (b[1] - a[1]) * i / steps)
            self.dot(x, y, color)

    def text(self, x: int, y: int, words: str, color: Color, scale: int = 2) -> None:
        for index, char in enumerate(words.upper()):
            glyph = _GLYPHS.get(char, _GLYPHS[" "])
            left = x + index * 6 * scale
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "1":
                        top, start = y + row * scale, left + col * scale
                        self.pixels[top : top + scale, start : start + scale] = color


@dataclass(frozen=True, slots=True)
class _Frame:
    left: int
    top: int
    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def at(self, x: float, y: float) -> tuple[int, int]:
        x0, x1 = self.x_range
        y0, y1 = self.y_range
        px = self.left + (min(max(x, x0), x1) - x0) / (x1 - x0) * self.width
        py = (
            self.top
            + self.height
            - (min(max(y, y0), y1) - y0) / (y1 - y0) * self.height
        )
        return round(px), round(py)


def _axes(canvas: _Canvas, frame: _Frame, x_label: str, y_label: str) -> None:
    for tick in np.arange(frame.x_range[0], frame.x_range[1] + 1e-9, 0.1):
        x, bottom = frame.at(float(tick), frame.y_range[0])
        canvas.line((x, frame.top), (x, bottom), _LIGHT)
        canvas.text(x - 18, bottom + 8, f"{tick:.1f}", _BLACK)
    for tick in np.arange(frame.y_range[0], frame.y_range[1] + 1e-9, 0.05):
        left, y = frame.at(frame.x_range[0], float(tick))
        canvas.line((left, y), (left + frame.width, y), _LIGHT)
        canvas.text(left - 58, y - 7, f"{tick:.2f}", _BLACK)
    bottom = frame.top + frame.height
    canvas.line((frame.left, bottom), (frame.left + frame.width, bottom), _BLACK)
    canvas.line((frame.left, frame.top), (frame.left, bottom), _BLACK)
    canvas.text(frame.left + frame.width // 2 - 150, bottom + 32, x_label, _BLACK)
    canvas.text(8, frame.top - 30, y_label, _BLACK)


def render_chart(
    series: Sequence[Series],
    *,
    title: str,
    target: tuple[float, float] | None = None,
    x_range: tuple[float, float] = (0.0, 1.0),
    y_range: tuple[float, float] = (0.6, 1.1),
    size: tuple[int, int] = (960, 640),
) -> Image:
    """Draw cost ratio (x) against quality ratio (y) and return the pixels.

    Args:
        series: point sets, drawn in order (later ones on top).
        title: a line of text above the plot.
        target: (max cost ratio, min quality ratio) drawn as red dashed guides.
    """
    width, height = size
    canvas = _Canvas(width, height)
    frame = _Frame(80, 76, width - 380, height - 156, x_range, y_range)
    _axes(canvas, frame, "COST / ALWAYS-BEST COST", "QUALITY / ALWAYS-BEST QUALITY")
    canvas.text(80, 12, title, _BLACK)
    if target is not None:
        x, y = frame.at(*target)
        canvas.line((x, frame.top), (x, frame.top + frame.height), _RED, dash=6)
        canvas.line((frame.left, y), (frame.left + frame.width, y), _RED, dash=6)
    for index, one in enumerate(series):
        pixels = [frame.at(px, py) for px, py in one.points]
        if one.line:
            for a, b in itertools.pairwise(pixels):
                canvas.line(a, b, one.color)
        for px, py in pixels:
            canvas.dot(px, py, one.color, one.marker_px)
        legend_y = frame.top + index * 26
        canvas.dot(frame.left + frame.width + 24, legend_y + 6, one.color, 5)
        canvas.text(frame.left + frame.width + 38, legend_y, one.label[:22], _BLACK)
    return canvas.pixels


def encode_png(pixels: Image) -> bytes:
    """Encode an RGB uint8 array of shape (height, width, 3) as PNG bytes."""
    height, width, _ = pixels.shape
    rows = np.concatenate(
        [np.zeros((height, 1), dtype=np.uint8), pixels.reshape(height, width * 3)],
        axis=1,
    )  # filter byte 0 (none) before every scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def write_chart(
    path: Path,
    series: Sequence[Series],
    *,
    title: str,
    target: tuple[float, float] | None = None,
) -> None:
    """Render a chart (see :func:`render_chart`) and write it as a PNG file."""
    path.write_bytes(encode_png(render_chart(series, title=title, target=target)))
