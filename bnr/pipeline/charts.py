"""Small line charts as PNG with Pillow only (no plotting library, no system font): the seed
threshold curve and the training curves that ``metrics/report.md`` embeds.

A chart is a title, one or more named series of (x, y) points, axis labels, and optionally a
marked point (the best threshold). The y axis is linear, or logarithmic when asked (learning
rates); tick labels use as many significant digits as the axis needs, so 0.001 never reads 0.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bnr.errors import BnrError
from bnr.io import atomic_path

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (23, 190, 207), (140, 86, 75))
WIDTH, HEIGHT = 560, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 44


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    log_y: bool = False
    mark: tuple[float, float] | None = None  # a point to circle (x, y), labelled with its values
    notes: tuple[str, ...] = field(default=())


def read_columns(path: Path, x: str, delimiter: str = ",") -> dict[str, list[tuple[float, float]]]:
    """``{column: [(x, value), ...]}`` of every numeric column but ``x`` in a CSV / TSV file;
    BnrError naming the file when it is missing or has no column ``x``."""
    if not Path(path).is_file():
        raise BnrError(f"{path}: not found (the stage that writes it has not run)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=delimiter))
    if not rows or x not in rows[0]:
        raise BnrError(f"{path}: no column {x!r} (expected a header line naming it)")
    out: dict[str, list[tuple[float, float]]] = {}
    for name in rows[0]:
        if name == x:
            continue
        try:
            out[name] = [(float(r[x]), float(r[name])) for r in rows]
        except (TypeError, ValueError):
            continue  # a text column
    return out


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (about ``count`` of them)."""
    if not high > low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def tick_label(value: float) -> str:
    """``value`` as short as it is exact (``0.25``, ``600``), tiny values as ``1e-03``."""
    if value != 0 and abs(value) < 1e-2:
        return f"{value:.0e}"
    return f"{round(value, 9):g}"


def _bounds(values: list[float], log: bool) -> tuple[float, float]:
    low, high = min(values), max(values)
    if log:
        low, high = math.floor(math.log10(low)), math.ceil(math.log10(high))
        return (low, high) if high > low else (low - 1, high)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        return low - pad, high + pad
    return low, high


def render(chart: Chart) -> Image.Image:
    """The chart as an RGB image."""
    values = [(x, y) for s in chart.series for x, y in s.points
              if not chart.log_y or y > 0]
    if not values:
        raise BnrError(f"chart {chart.title!r}: no points to draw")
    font = ImageFont.load_default()
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    x0, x1 = _bounds([v[0] for v in values], False)
    y0, y1 = _bounds([v[1] for v in values], chart.log_y)
    plot = (LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM)

    def px(x: float, y: float) -> tuple[float, float]:
        yy = math.log10(y) if chart.log_y else y
        return (plot[0] + (x - x0) / (x1 - x0) * (plot[2] - plot[0]),
                plot[3] - (yy - y0) / (y1 - y0) * (plot[3] - plot[1]))

    draw.rectangle(plot, outline=(0, 0, 0))
    xt = ticks(x0, x1)
    for t in xt:
        x = px(t, 10 ** y0 if chart.log_y else y0)[0]
        draw.line([(x, plot[3]), (x, plot[3] + 4)], fill=(0, 0, 0))
        draw.text((x, plot[3] + 6), tick_label(t), fill=(0, 0, 0), font=font, anchor="ma")
    yt = [float(e) for e in range(int(y0), int(y1) + 1)] if chart.log_y else ticks(y0, y1)
    for t in yt:
        value = 10 ** t if chart.log_y else t
        y = px(x0, value)[1]
        draw.line([(plot[0] - 4, y), (plot[2], y)], fill=(225, 225, 225))
        label = f"1e{int(t)}" if chart.log_y else tick_label(t)
        draw.text((plot[0] - 6, y), label, fill=(0, 0, 0), font=font, anchor="rm")
    draw.text((WIDTH / 2, 8), chart.title, fill=(0, 0, 0), font=font, anchor="ma")
    draw.text(((plot[0] + plot[2]) / 2, HEIGHT - 14), chart.x_label, fill=(0, 0, 0), font=font,
              anchor="ma")
    draw.text((4, TOP - 16), chart.y_label, fill=(0, 0, 0), font=font)
    for i, s in enumerate(chart.series):
        colour = COLOURS[i % len(COLOURS)]
        points = [px(x, y) for x, y in s.points if not chart.log_y or y > 0]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        elif points:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2,
                          points[0][1] + 2], fill=colour)
        if len(chart.series) > 1:  # legend, top right inside the frame
            lx, ly = plot[2] - 110, plot[1] + 6 + 14 * i
            draw.line([(lx, ly + 5), (lx + 16, ly + 5)], fill=colour, width=2)
            draw.text((lx + 20, ly), s.name, fill=(0, 0, 0), font=font)
    if chart.mark is not None:
        mx, my = px(*chart.mark)
        draw.ellipse([mx - 5, my - 5, mx + 5, my + 5], outline=(214, 39, 40), width=2)
        text = f"best {chart.mark[0]:g}: {chart.mark[1]:.1f}"
        right = mx > plot[2] - 90  # near the right edge: the label goes to the left
        draw.text((mx - 8 if right else mx + 8, my + 8), text, fill=(214, 39, 40), font=font,
                  anchor="ra" if right else "la")
    for i, note in enumerate(chart.notes):
        draw.text((plot[0] + 6, plot[1] + 6 + 12 * i), note, fill=(90, 90, 90), font=font)
    return img


def write_chart(chart: Chart, path: Path) -> None:
    """Render ``chart`` to the PNG ``path`` atomically."""
    image = render(chart)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
