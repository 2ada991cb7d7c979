"""Hand-written SVG scatter charts for the HTML variants report.

Why not matplotlib: the page must be one self-contained, deterministic file
that the core can write without the ML extra. An SVG written here is plain
text, identical for identical figures, and readable in any browser.

Every point is a ``<circle data-target=...>`` (with ``data-pareto`` "1" when it
is on the Pareto front), so tests and people can find them; every label and
tooltip is escaped.

Example::

    pts = [Point("a", 0.27, 0.9898, "pass"), Point("b", 0.72, 0.99999, "pass")]
    svg = scatter(pts, chart="size", x=Axis("size (MB)"), x_better="low")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

__all__ = ["Axis", "Point", "pareto_front", "scatter", "nines", "NINES_CAP"]

W, H = 620, 380
LEFT, RIGHT, TOP, BOTTOM = 96, 24, 18, 52
#: Cosines closer to 1 than 1e-7 are drawn at the top (float32 logits rarely do better).
NINES_CAP = 7.0
_CHAR_W = 6.3  # average width of an 11px sans-serif character, for label boxes


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float  # a cosine: drawn on the nines scale
    status: str = "measured"  # a CSS class: pass, fail, measured, ...
    tip: str = ""


@dataclass(frozen=True)
class Axis:
    title: str
    log: bool = False


def nines(cosine: float) -> float:
    """-log10(1 - cosine): 2 for 0.99, 3 for 0.999, capped at ``NINES_CAP``; negative below 0."""
    return min(-math.log10(max(1.0 - cosine, 10 ** -NINES_CAP)), NINES_CAP)


def pareto_front(points: list[Point], x_better: str) -> list[bool]:
    """True for each point that no other point beats on both x (``"low"`` or ``"high"``) and accuracy."""
    sign = -1.0 if x_better == "low" else 1.0
    flags = []
    for p in points:
        dominated = any(sign * q.x >= sign * p.x and q.y >= p.y and (sign * q.x > sign * p.x or q.y > p.y)
                        for q in points)
        flags.append(not dominated)
    return flags


def _fmt_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _linear_ticks(hi: float) -> tuple[float, list[float]]:
    """A domain [0, top] with 4-6 round ticks covering ``hi``."""
    hi = hi if hi > 0 else 1.0
    raw = hi / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    top = step * math.ceil(hi * 1.05 / step)
    return top, [i * step for i in range(int(round(top / step)) + 1)]


def _log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if a == b:
        b += 1
    ticks = []
    for e in range(a, b + 1):
        ticks.append(10.0 ** e)
        if b - a <= 2 and e < b:
            ticks += [2 * 10.0 ** e, 5 * 10.0 ** e]
    return 10.0 ** a, 10.0 ** b, sorted(ticks)


def _nines_label(n: float) -> str:
    if n <= -math.log10(2) + 1e-9:
        return "-1"
    if n == 0:
        return "0"
    return "0." + "9" * int(n)


class _Frame:
    """Maps data to pixels for one chart."""

    def __init__(self, points: list[Point], x: Axis):
        xs = [p.x for p in points]
        self.xlog = x.log and min(xs) > 0
        if self.xlog:
            self.x0, self.x1, self.xticks = _log_ticks(min(xs), max(xs))
        else:
            self.x0 = 0.0
            self.x1, self.xticks = _linear_ticks(max(xs))
        ys = [nines(p.y) for p in points]
        self.y0 = max(min(math.floor(min(ys)), math.floor(max(ys)) - 1), -math.log10(2))
        self.y1 = max(math.ceil(max(ys)), self.y0 + 1)
        self.yticks = [float(n) for n in range(math.ceil(self.y0), int(self.y1) + 1)]
        if self.y0 < 0:
            self.yticks.insert(0, self.y0)

    def px(self, value: float) -> float:
        if self.xlog:
            f = (math.log10(value) - math.log10(self.x0)) / (math.log10(self.x1) - math.log10(self.x0))
        else:
            f = (value - self.x0) / (self.x1 - self.x0)
        return LEFT + f * (W - LEFT - RIGHT)

    def py(self, cosine: float) -> float:
        f = (nines(cosine) - self.y0) / (self.y1 - self.y0)
        return TOP + (1 - f) * (H - TOP - BOTTOM)

    def py_nines(self, n: float) -> float:
        return TOP + (1 - (n - self.y0) / (self.y1 - self.y0)) * (H - TOP - BOTTOM)


def _place_labels(points: list[Point], xy: list[tuple[float, float]]) -> list[tuple[float, float, str]]:
    """Label positions (x, y, anchor) that overlap neither each other nor the points, where possible."""
    boxes: list[tuple[float, float, float, float]] = [(x - 7, y - 7, x + 7, y + 7) for x, y in xy]
    placed: list[tuple[float, float, str]] = [(0.0, 0.0, "start")] * len(points)
    order = sorted(range(len(points)), key=lambda i: (xy[i][1], xy[i][0], points[i].label))
    for i in order:
        x, y = xy[i]
        width = len(points[i].label) * _CHAR_W
        right = x + 10 + width <= W - 4
        for dy in (0, -14, 14, -28, 28, -42, 42, -56, 56):
            for side in ((1, -1) if right else (-1, 1)):
                lx = x + 10 if side == 1 else x - 10
                x0, x1 = (lx, lx + width) if side == 1 else (lx - width, lx)
                box = (x0, y + dy - 9, x1, y + dy + 4)
                if x0 < LEFT + 2 or x1 > W - 2 or box[1] < 2 or box[3] > H - BOTTOM - 2:
                    continue
                if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                    boxes.append(box)
                    placed[i] = (lx, y + dy + 4, "start" if side == 1 else "end")
                    break
            else:
                continue
            break
        else:  # nowhere free: keep it beside the point
            placed[i] = (x + 10, y + 4, "start") if right else (x - 10, y + 4, "end")
    return placed


def scatter(points: list[Point], *, chart: str, x: Axis, x_better: str) -> str:
    """An SVG scatter of accuracy (cosine, nines scale) against ``x``, the Pareto front marked."""
    if not points:
        return ""
    f = _Frame(points, x)
    front = pareto_front(points, x_better)
    xy = [(f.px(p.x), f.py(p.y)) for p in points]
    out = [f'<svg class="chart" data-chart="{escape(chart)}" viewBox="0 0 {W} {H}" role="img" '
           f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(x.title)} against accuracy">']
    plot_bottom = H - BOTTOM
    out.append(f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{plot_bottom - TOP}"/>')
    for t in f.xticks:
        px = f.px(t)
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{plot_bottom}"/>')
        out.append(f'<text class="tick" x="{px:.1f}" y="{plot_bottom + 16}" text-anchor="middle">{_fmt_tick(t)}</text>')
    for n in f.yticks:
        py = f.py_nines(n)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{py:.1f}" x2="{W - RIGHT}" y2="{py:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{_nines_label(n)}</text>')
    scale = " (log scale)" if f.xlog else ""
    out.append(f'<text class="axis" x="{(LEFT + W - RIGHT) / 2:.0f}" y="{H - 12}" text-anchor="middle">'
               f'{escape(x.title)}{scale} {"← smaller is better" if x_better == "low" else "faster is better →"}</text>')
    out.append(f'<text class="axis" transform="translate(16 {(TOP + plot_bottom) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">cosine vs reference (nines) ↑</text>')
    on_front = sorted((xy[i] for i in range(len(points)) if front[i]))
    if len(on_front) > 1:
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in on_front)
        out.append(f'<polyline class="front" points="{path}"/>')
    for i, (label_x, label_y, anchor) in enumerate(_place_labels(points, xy)):
        p, (px, py) = points[i], xy[i]
        if abs(label_y - 4 - py) > 8:  # moved away from its point: a leader line says whose it is
            edge = label_x - 2 if anchor == "start" else label_x + 2
            out.append(f'<line class="leader" x1="{px:.1f}" y1="{py:.1f}" x2="{edge:.1f}" y2="{label_y - 4:.1f}"/>')
        out.append(f'<text class="label" x="{label_x:.1f}" y="{label_y:.1f}" text-anchor="{anchor}">{escape(p.label)}</text>')
    for i, p in enumerate(points):
        px, py = xy[i]
        tip = escape(p.tip or p.label)
        out.append(f'<circle class="pt {escape(p.status)}{" pareto" if front[i] else ""}" cx="{px:.1f}" cy="{py:.1f}" '
                   f'r="{7 if front[i] else 5.5}" data-target="{escape(p.label)}" data-pareto="{int(front[i])}">'
                   f'<title>{tip}</title></circle>')
    out.append("</svg>")
    return "\n".join(out)
