"""Text with a real font on OpenCV images, with every text box recorded (the picture test checks them).

Shapes are drawn with OpenCV on the BGR canvas; text is queued with its box (measured with the
font) and drawn in one Pillow pass by `flush()`, on a solid label background instead of an
outline shadow, so a label reads the same at every size. The font is DejaVu Sans as matplotlib
ships it (no system font needed).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@functools.lru_cache(maxsize=None)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


@dataclass(frozen=True)
class TextBox:
    text: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in canvas pixels (x1, y1 exclusive), background included


@dataclass(frozen=True)
class _Queued:
    box: TextBox
    origin: tuple[int, int]
    size: int
    bold: bool
    color: tuple[int, int, int]  # BGR
    background: tuple[int, int, int] | None


class Painter:
    """Queues text for one canvas; `flush()` draws it and returns the boxes."""

    PAD = 2

    def __init__(self, canvas: np.ndarray) -> None:
        self.canvas = canvas
        self._queue: list[_Queued] = []

    @staticmethod
    def measure(text: str, size: int, bold: bool = False) -> tuple[int, int]:
        x0, y0, x1, y1 = font(size, bold).getbbox(text)
        return int(x1), int(y1)

    def fit(self, text: str, width: int, size: int, bold: bool = False) -> str:
        """`text`, shortened with an ellipsis in the middle until it is at most `width` pixels wide."""
        if self.measure(text, size, bold)[0] <= width:
            return text
        keep = len(text)
        while keep > 3:
            keep -= 1
            head = (keep + 1) // 2
            short = text[:head] + "…" + text[len(text) - (keep - head):]
            if self.measure(short, size, bold)[0] <= width:
                return short
        return "…"

    def text(self, text: str, x: int, y: int, size: int = 13, color: tuple[int, int, int] = (255, 255, 255),
             background: tuple[int, int, int] | None = (0, 0, 0), bold: bool = False, anchor: str = "lt") -> TextBox:
        """Queue `text` with its top-left (anchor "lt"), top-right ("rt") or top-centre ("mt") at (x, y)."""
        width, height = self.measure(text, size, bold)
        pad = self.PAD if background is not None else 0
        if anchor == "rt":
            x -= width + 2 * pad
        elif anchor == "mt":
            x -= (width + 2 * pad) // 2
        box = TextBox(text, (int(x), int(y), int(x + width + 2 * pad), int(y + height + 2 * pad)))
        self._queue.append(_Queued(box, (int(x + pad), int(y + pad)), size, bold, color, background))
        return box

    def flush(self) -> list[TextBox]:
        image = Image.fromarray(np.ascontiguousarray(self.canvas[:, :, ::-1]))
        draw = ImageDraw.Draw(image)
        for item in self._queue:
            if item.background is not None:
                x0, y0, x1, y1 = item.box.box
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=tuple(reversed(item.background)))
            draw.text(item.origin, item.box.text, font=font(item.size, item.bold), fill=tuple(reversed(item.color)))
        self.canvas[:] = np.asarray(image)[:, :, ::-1]
        boxes = [item.box for item in self._queue]
        self._queue = []
        return boxes


def overlapping(boxes: list[TextBox]) -> list[tuple[str, str]]:
    """Pairs of text boxes that overlap (for the picture test)."""
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            ax0, ay0, ax1, ay1 = a.box
            bx0, by0, bx1, by1 = b.box
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                out.append((a.text, b.text))
    return out
