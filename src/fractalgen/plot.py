"""Training curves as PNG, drawn with Pillow (no plotting library needed).

    fractalgen plot runs/mnist                 # runs/mnist/loss.png from runs/mnist/metrics.jsonl
    fractalgen plot runs/mnist --metric lr --out lr.png

One panel: the metric against the optimizer step, with axes, gridlines at round numbers, tick
labels, axis titles and a title naming the run and the last value.
"""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .errors import UserError
from .files import save_image
from .trainlog import read_metrics

WIDTH, HEIGHT = 900, 540
MARGIN = {"left": 90, "right": 30, "top": 60, "bottom": 70}
LABELS = {"loss": "training loss (mean since the previous point)", "lr": "learning rate", "grad_norm": "gradient norm",
          "images_per_s": "images / s", "steps_per_s": "steps / s", "wall_s": "wall time (s)",
          "peak_memory_mb": "peak memory (MiB)"}
LINE, GRID, AXIS, TEXT = (31, 97, 181), (225, 225, 225), (0, 0, 0), (20, 20, 20)


MAX_TICKS = 20  # per axis
LARGEST = 1e300  # larger steps or values are left out of the plot


def font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def nice_step(span: float, target_ticks: int = 6) -> float:
    """A tick spacing of 1, 2 or 5 times a power of ten giving about `target_ticks` ticks over `span`."""
    raw = span / target_ticks
    if not (0 < raw < math.inf) or raw < 1e-300:  # no span, or one too small to take a logarithm of
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def ticks(lo: float, hi: float) -> tuple[list[float], float, float]:
    """(tick values, axis low, axis high): the axis widened to whole ticks around [lo, hi]."""
    if hi <= lo:  # a flat curve: show a band around it
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    while last - first > MAX_TICKS:  # a span nice_step could not size (extreme values): coarser ticks
        step *= 10
        first, last = math.floor(lo / step), math.ceil(hi / step)
    return [i * step for i in range(first, last + 1)], first * step, last * step


def tick_label(value: float, step: float) -> str:
    if abs(value) >= 1e5 or (value != 0 and abs(value) < 1e-3):
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def plottable(step, value) -> bool:
    """A point the axes can hold: an integer step and a finite value, both within LARGEST (the span between
    two such values is still a finite float)."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= LARGEST:
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= LARGEST if isinstance(value, int) else math.isfinite(value) and abs(value) <= LARGEST


def plot_metric(records: list[dict], path, metric: str = "loss", title: str = "") -> Path:
    """Draw `metric` against `step` from metrics.jsonl records into the PNG `path`."""
    points = [(r["step"], float(r[metric])) for r in records if plottable(r.get("step"), r.get(metric))]
    if not points:
        known = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float))} - {"step"})
        raise UserError(f"no values of {metric!r} to plot (the log has: {', '.join(known) or 'nothing'})")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks, x_lo, x_hi = ticks(min(xs) if len(xs) > 1 else 0, max(xs))
    y_ticks, y_lo, y_hi = ticks(min(ys), max(ys))
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = WIDTH - MARGIN["right"], HEIGHT - MARGIN["bottom"]

    def to_pixel(x, y):
        return (left + (x - x_lo) / (x_hi - x_lo) * (right - left),
                bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    small, large = font(14), font(18)
    x_step, y_step = x_ticks[1] - x_ticks[0], y_ticks[1] - y_ticks[0]
    for x in x_ticks:
        px, _ = to_pixel(x, y_lo)
        draw.line([(px, top), (px, bottom)], fill=GRID)
        draw.line([(px, bottom), (px, bottom + 6)], fill=AXIS)
        draw.text((px, bottom + 9), tick_label(x, x_step), font=small, fill=TEXT, anchor="ma")
    for y in y_ticks:
        _, py = to_pixel(x_lo, y)
        draw.line([(left, py), (right, py)], fill=GRID)
        draw.line([(left - 6, py), (left, py)], fill=AXIS)
        draw.text((left - 9, py), tick_label(y, y_step), font=small, fill=TEXT, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=AXIS)

    line = [to_pixel(x, y) for x, y in points]
    if len(line) > 1:
        draw.line(line, fill=LINE, width=2, joint="curve")
    if len(line) <= 60:  # few points: mark each one
        for px, py in line:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=LINE)

    draw.text(((left + right) / 2, HEIGHT - 22), "optimizer step", font=small, fill=TEXT, anchor="mm")
    y_title = LABELS.get(metric, metric)
    label = Image.new("RGBA", (int(draw.textlength(y_title, font=small)) + 8, 22), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((4, 11), y_title, font=small, fill=TEXT, anchor="lm")
    label = label.rotate(90, expand=True)
    image.paste(label, (12, int((top + bottom) / 2 - label.height / 2)), label)
    last_step, last_value = points[-1]
    heading = f"{title + ': ' if title else ''}{metric}, last {last_value:.4g} at step {last_step}"
    draw.text((left, top - 30), heading, font=large, fill=TEXT, anchor="lm")

    return save_image(image, Path(path), format="PNG")


def plot_run(run, out=None, metric: str = "loss") -> Path:
    """RUN/metrics.jsonl -> a PNG (default RUN/{metric}.png)."""
    run = Path(run)
    if not run.exists():
        raise UserError(f"no run folder or metrics file at {run}")
    records = read_metrics(run)
    folder = run if run.is_dir() else run.parent
    return plot_metric(records, out or folder / f"{metric}.png", metric,
                       title=folder.resolve().name)
