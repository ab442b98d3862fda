"""A static HTML report of a results file: leaderboard, plots, per-image cards (``evalmuse report``).

Layout of the output folder::

    report/
      index.html        self-contained page (CSS, JS and SVG plots inline)
      images/00000.jpg  thumbnails
      images/00000_heat.png  distortion heatmap overlays (RGBA, same size as the thumbnail); the
                        predicted and true mask outlines are inline SVG paths on the cards
      leaderboard.json  the per-generator table
      categories.json   the per-category element table (element categories normalised from the keys)
      structure_split.json  the summary of the structure images that have no generator (when there are any)
      .evalmuse-output.json  marks the folder as a report this package wrote (only such a folder is replaced)

The page needs no server and no network: open ``report/index.html`` in a browser.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from string import Template
from typing import Any

import numpy as np

from .. import __version__
from ..utils import UserInputError
from ..utils.io import claim_output_directory, owned_directory

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
PALETTE = ["#3558d6", "#e07b00", "#1a7f37", "#c62828", "#7b3fb8", "#00838f", "#8d6e63", "#d81b60"]


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

NO_GENERATOR = "(no generator)"  # the generator filter's value for the structure images that have none


def is_structure_split(row: dict) -> bool:
    """Whether ``row`` is an image of a structure split: scored without an alignment model and
    either without a generator or taken from a ``structure`` dataset split (EvalMuse-Structure has
    no generators). Such images have no place in a per-generator table; the report sums them up in
    a table of their own."""
    meta = row.get("meta") or {}
    aligned = meta.get("align_model") is not None if "align_model" in meta else "alignment" in row
    if aligned:
        return False
    return not row.get("generator") or (row.get("source") or {}).get("config") == "structure"


def generator_table(rows: list[dict]) -> list[dict]:
    """Per-generator summary rows (what the leaderboard shows), best mean alignment first. Images
    of a structure split (:func:`is_structure_split`) are left out: see :func:`structure_split_table`."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if not is_structure_split(row):
            groups[row.get("generator") or "(unknown)"].append(row)
    table = []
    for name, members in groups.items():
        ok = [r for r in members if r.get("status") == "ok"]
        align = [r["alignment"] for r in ok if "alignment" in r]
        structure = [r["structure"] for r in ok if "structure" in r]
        element_values = [p for a in align for p in a["elements"].values() if p is not None]
        refs = [r["reference"]["overall"] for r in ok if (r.get("reference") or {}).get("overall") is not None]
        table.append(
            {
                "generator": name,
                "images": len(members),
                "errors": len(members) - len(ok),
                "alignment": _mean([a["overall"] for a in align]),
                "elements_present": (float(np.mean([p >= 0.5 for p in element_values])) if element_values else None),
                "structure": _mean([s["score"] for s in structure]),
                "distorted": _distorted_share(structure),
                "reference_alignment": _mean(refs),
            }
        )
    table.sort(key=lambda r: (-(r["alignment"] if r["alignment"] is not None else -1e9), r["generator"]))
    return table


def _distorted_share(structure: list[dict]) -> float | None:
    """The share of the rows with predicted regions, among those with a mask (a score-only model's have none)."""
    located = [s for s in structure if "regions" in s]
    return float(np.mean([len(s["regions"]) > 0 for s in located])) if located else None


def _rle_has_pixels(rle: dict | None) -> bool:
    from ..scoring.rle import rle_area

    return bool(rle) and bool(rle.get("counts")) and rle_area(rle) > 0


def structure_split_table(rows: list[dict]) -> dict | None:
    """The summary of the images of a structure split (:func:`is_structure_split`), which have no
    generator: how many, errors, mean structure score, the share with predicted distortions and,
    where the rows carry their labels, the mean true score and the share with true distortions.
    ``None`` when there are no such images."""
    members = [r for r in rows if is_structure_split(r)]
    if not members:
        return None
    ok = [r for r in members if r.get("status") == "ok"]
    structure = [r["structure"] for r in ok if "structure" in r]
    truth_masks = [(r.get("reference") or {}).get("mask") for r in ok]
    truth_masks = [m for m in truth_masks if m is not None]
    return {
        "images": len(members),
        "errors": len(members) - len(ok),
        "structure": _mean([s["score"] for s in structure]),
        "distorted": _distorted_share(structure),
        "reference_structure": _mean([(r.get("reference") or {}).get("mos") for r in ok]),
        "reference_distorted": (float(np.mean([_rle_has_pixels(m) for m in truth_masks])) if truth_masks else None),
        "truth_masks": len(truth_masks),
    }


def category_table(rows: list[dict]) -> list[dict]:
    """Per element category (normalised from the keys: ``"Pale (Color) "`` and ``"red (color)"`` are
    both ``color``, ``"car (object-vehicle)"`` is ``object``): how many elements, the share
    predicted present (probability >= 0.5) and, where the rows carry true element scores, the
    element accuracy (both sides binarised at 0.5, as the official ACC). Most elements first."""
    from ..metrics import element_category

    groups: dict[str, dict] = defaultdict(lambda: {"elements": 0, "present": 0, "labelled": 0, "correct": 0})
    for row in rows:
        if row.get("status") != "ok" or "alignment" not in row:
            continue
        truth = (row.get("reference") or {}).get("elements") or {}
        for key, p in row["alignment"]["elements"].items():
            if p is None:
                continue
            entry = groups[element_category(key)]
            entry["elements"] += 1
            entry["present"] += p >= 0.5
            if truth.get(key) is not None:
                entry["labelled"] += 1
                entry["correct"] += (p >= 0.5) == (truth[key] >= 0.5)
    table = [
        {"category": name, "elements": g["elements"], "present": g["present"] / g["elements"],
         "accuracy": g["correct"] / g["labelled"] if g["labelled"] else None, "labelled": g["labelled"]}
        for name, g in groups.items()
    ]
    table.sort(key=lambda r: (-r["elements"], r["category"]))
    return table


def apply_generator_map(rows: list[dict], generator_map) -> int:
    """Set each row's ``generator`` from ``generator_map`` (a dict ``{img_path: generator}`` or a
    file read by :func:`~evalmuse_models.data.read_generator_map`), matched on the row ``id``
    (the image path); rows not in the map keep theirs. Returns how many rows were mapped."""
    from ..data import read_generator_map

    generator_map = read_generator_map(generator_map)
    mapped = 0
    for row in rows:
        generator = generator_map.get(str(PurePosixPath(str(row["id"]).replace("\\", "/"))))
        if generator:
            row["generator"] = generator
            mapped += 1
    return mapped


# ---------------------------------------------------------------------------------------------
# SVG plots
# ---------------------------------------------------------------------------------------------

_NARROW = set("iljtfr.,:;'|!()[] ")


def text_width(text: str, size: float = 12) -> float:
    """A generous estimate of the rendered width (px) of ``text`` in the page's sans-serif font at
    ``size`` px, to lay out SVG labels without measuring them (a wrapped label must not overflow)."""
    width = 0.0
    for ch in str(text):
        if ch in _NARROW:
            width += 0.36
        elif ch in "mwMW@%":
            width += 0.95
        elif ch.isupper():
            width += 0.76
        elif ch.isdigit():
            width += 0.64
        elif ord(ch) > 0x2E7F:  # CJK and other wide scripts
            width += 1.0
        else:
            width += 0.62
    return width * size


def wrap_label(text: str, max_px: float, size: float = 12) -> list[str]:
    """``text`` in lines that each fit ``max_px`` (by :func:`text_width`): broken at spaces, and
    inside a word only when the word alone is too long. Nothing is dropped."""
    lines: list[str] = []
    line = ""
    for word in str(text).split() or [""]:
        candidate = f"{line} {word}" if line else word
        if text_width(candidate, size) <= max_px:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for ch in word:  # a word longer than a line is cut into pieces
            if line and text_width(line + ch, size) > max_px:
                lines.append(line)
                line = ""
            line += ch
    lines.append(line)
    return lines


def _ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    span = (hi - lo) or 1.0
    for step in (0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if span / step <= most - 1:
            break
    first = math.ceil(lo / step - 1e-9)
    values = []
    k = first
    while k * step <= hi + 1e-9:
        values.append(round(k * step, 6))
        k += 1
    return values


def _svg_open(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">')


def _tspans(lines: list[str], x: float, y: float, line_h: float) -> str:
    return "".join(f'<tspan x="{x:.1f}" y="{y + i * line_h:.1f}">{_esc(t)}</tspan>' for i, t in enumerate(lines))


def svg_bars(labels: list[str], values: list[float | None], *, title: str, vmin: float, vmax: float,
             x_title: str, y_title: str = "generator", width: int = 460, digits: int = 2) -> str:
    """Horizontal bar chart, one bar per label, with both axes titled. Long labels wrap over several
    lines (never cut) and every bar carries its full label and value as a tooltip."""
    size, line_h, bar_h, gap = 12, 14, 18, 8
    label_px = min(max([text_width(str(lb), size) for lb in labels] + [40]), 170.0)
    left, right, top = 22 + label_px + 8, 44, 8
    wrapped = [wrap_label(str(lb), label_px, size) for lb in labels]
    heights = [max(bar_h, len(lines) * line_h + 4) for lines in wrapped]
    plot_h = sum(heights) + gap * len(heights)
    height = top + plot_h + 46
    plot_w = width - left - right
    span = (vmax - vmin) or 1.0
    axis_y = top + plot_h
    parts = [_svg_open(width, height, title)]
    y = top + gap / 2
    for i, (label, value, lines, h) in enumerate(zip(labels, values, wrapped, heights)):
        length = 0 if value is None else max(0.0, min(1.0, (value - vmin) / span)) * plot_w
        mid = y + h / 2
        first = mid - (len(lines) - 1) * line_h / 2 + 4
        parts.append(f'<g class="bar"><title>{_esc(label)}: {_fmt(value, digits)}</title>'
                     f'<text class="label" x="{left - 8:.1f}" font-size="{size}" text-anchor="end">'
                     f'{_tspans(lines, left - 8, first, line_h)}</text>'
                     f'<rect x="{left:.1f}" y="{mid - bar_h / 2:.1f}" width="{length:.1f}" height="{bar_h}" '
                     f'fill="{PALETTE[i % len(PALETTE)]}" rx="3"/>'
                     f'<text x="{left + length + 4:.1f}" y="{mid + 4:.1f}" font-size="{size}">{_fmt(value, digits)}</text>'
                     "</g>")
        y += h + gap
    parts.append(f'<line x1="{left:.1f}" y1="{axis_y:.1f}" x2="{left + plot_w:.1f}" y2="{axis_y:.1f}" stroke="#999"/>')
    for tick in _ticks(vmin, vmax):
        x = left + plot_w * (tick - vmin) / span
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y:.1f}" x2="{x:.1f}" y2="{axis_y + 4:.1f}" stroke="#999"/>'
                     f'<text class="tick" x="{x:.1f}" y="{axis_y + 16:.1f}" font-size="11" text-anchor="middle">'
                     f'{tick:g}</text>')
    parts.append(f'<text class="axis-title x" x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="12" '
                 f'text-anchor="middle">{_esc(x_title)}</text>')
    parts.append(f'<text class="axis-title y" transform="translate(13 {top + plot_h / 2:.1f}) rotate(-90)" '
                 f'font-size="12" text-anchor="middle">{_esc(y_title)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(series: dict[str, list[float]], *, title: str, lo: float, hi: float, x_title: str,
                  y_title: str = "images", bins: int = 20, width: int = 460, height: int = 220) -> str:
    """Overlaid step histograms (one line per series, colours in order of the non-empty series, as
    :func:`legend_html` lists them) of values in [lo, hi], with both axes titled."""
    left, right, bottom, top = 52, 14, 44, 10
    edges = np.linspace(lo, hi, bins + 1)
    counts = {name: np.histogram(np.clip(vals, lo, hi), bins=edges)[0] for name, vals in series.items() if vals}
    peak = max([int(c.max()) for c in counts.values()] + [1])
    plot_w, plot_h = width - left - right, height - bottom - top
    axis_y = top + plot_h
    parts = [_svg_open(width, height, title),
             f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#999"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="#999"/>']
    for tick in _ticks(lo, hi):
        x = left + plot_w * (tick - lo) / ((hi - lo) or 1.0)
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#999"/>'
                     f'<text class="tick" x="{x:.1f}" y="{axis_y + 16}" font-size="11" text-anchor="middle">'
                     f'{tick:g}</text>')
    for tick in sorted({0, peak // 2, peak} if peak >= 2 else {0, peak}):
        y = axis_y - plot_h * tick / peak
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#999"/>'
                     f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{tick}</text>')
    for i, (name, c) in enumerate(counts.items()):
        color = PALETTE[i % len(PALETTE)]
        points = []
        for b, value in enumerate(c):
            x0 = left + plot_w * b / bins
            x1 = left + plot_w * (b + 1) / bins
            y = top + plot_h - plot_h * value / peak
            points += [f"{x0:.1f},{y:.1f}", f"{x1:.1f},{y:.1f}"]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{" ".join(points)}">'
                     f"<title>{_esc(name)}</title></polyline>")
    parts.append(f'<text class="axis-title x" x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="12" '
                 f'text-anchor="middle">{_esc(x_title)}</text>')
    parts.append(f'<text class="axis-title y" transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
                 f'font-size="12" text-anchor="middle">{_esc(y_title)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def legend_html(names: list[str]) -> str:
    """The colour key of a multi-series plot, as wrapping HTML (long names stay whole)."""
    items = "".join(f'<li><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{_esc(name)}</li>'
                    for i, name in enumerate(names))
    return f'<ul class="legend">{items}</ul>'


def svg_simplex(weightings: list[dict], order: list[str], parts: list[str], part_labels: list[str], *,
                official: dict[str, float], named: list[dict] = (), ties: list[dict] = (), title: str,
                uid: str = "simplex", width: int = 440) -> str:
    """The simplex of score weights as a triangle: every grid weighting (``weightings``, each with
    ``weights`` and ``ranking``) is a hexagonal cell coloured by the system it ranks first (colours
    in the order of ``order``, as :func:`legend_html` lists them), each vertex the weighting that
    puts everything on one part. Marked on it: the official weights, the ``named`` weightings and,
    dashed, the ``ties`` (each ``{"ahead", "behind", "part_differences"}``): the line where the two
    systems score the same. ``uid`` keeps the clip path's id unique in the page."""
    margin_x, top, bottom = 40, 30, 48
    side = width - 2 * margin_x
    height = int(top + side * math.sqrt(3) / 2 + bottom)
    corners = np.array([[margin_x, top + side * math.sqrt(3) / 2], [margin_x + side, top + side * math.sqrt(3) / 2],
                        [margin_x + side / 2, top]])  # parts[0] bottom left, parts[1] bottom right, parts[2] top

    def point(weights: dict | list) -> np.ndarray:
        w = np.asarray([weights[p] for p in parts] if isinstance(weights, dict) else weights, dtype=np.float64)
        return w @ corners

    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(order)}
    grid = [w for w in weightings if w.get("name") is None]
    step = min((w["weights"][p] for w in grid for p in parts if w["weights"][p] > 0), default=1.0)
    radius = side * step / math.sqrt(3)
    hexagon = [(radius * math.cos(math.radians(30 + 60 * k)), radius * math.sin(math.radians(30 + 60 * k)))
               for k in range(6)]
    triangle = " ".join(f"{x:.1f},{y:.1f}" for x, y in corners)
    svg = [_svg_open(width, height, title),
           f'<defs><clipPath id="{_esc(uid)}-clip"><polygon points="{triangle}"/></clipPath></defs>',
           f'<g clip-path="url(#{_esc(uid)}-clip)">']
    for w in grid:
        cx, cy = point(w["weights"])
        colour = colours.get(w["ranking"][0], "#999")
        d = "M" + "L".join(f"{cx + dx:.1f} {cy + dy:.1f}" for dx, dy in hexagon) + "Z"
        label = ", ".join(f"{lb} {w['weights'][p]:.2f}" for p, lb in zip(parts, part_labels))
        svg.append(f'<path class="cell" d="{d}" fill="{colour}" stroke="{colour}" stroke-width="0.6" '
                   f'data-winner="{_esc(w["ranking"][0])}"><title>{_esc(label)}: '
                   f'{_esc(" > ".join(w["ranking"]))}</title></path>')
    svg.append("</g>")
    svg.append(f'<polygon points="{triangle}" fill="none" stroke="#555" stroke-width="1.2"/>')
    for tie in ties:
        ends = _tie_segment([tie["part_differences"][p] for p in parts])
        if ends is None:
            continue
        (x0, y0), (x1, y1) = (e @ corners for e in ends)
        svg.append(f'<line class="tie" x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#222" '
                   f'stroke-width="1.3" stroke-dasharray="5 3"><title>{_esc(tie["ahead"])} and {_esc(tie["behind"])} '
                   f'tie on this line</title></line>')
    offsets = [(0, 18, "middle"), (0, 18, "middle"), (0, -10, "middle")]
    for (x, y), label, (dx, dy, anchor) in zip(corners, part_labels, offsets):
        svg.append(f'<text class="axis-title" x="{x + dx:.1f}" y="{y + dy:.1f}" font-size="12" '
                   f'text-anchor="{anchor}">{_esc(label)} = 1</text>')
    for entry in named:
        if entry.get("name") in (None, "official"):
            continue
        x, y = point(entry["weights"])
        svg.append(f'<g class="named"><title>{_esc(entry["name"])}: {_esc(" > ".join(entry["ranking"]))}</title>'
                   f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="#fff" stroke="#222" '
                   f'stroke-width="1.5" transform="rotate(45 {x:.1f} {y:.1f})"/></g>')
    x, y = point(official)
    svg.append(f'<g class="official"><title>official weights</title><circle cx="{x:.1f}" cy="{y:.1f}" r="6" '
               f'fill="#fff" stroke="#000" stroke-width="2.2"/><text x="{x + 9:.1f}" y="{y + 4:.1f}" font-size="12" '
               f'font-weight="600">official</text></g>')
    svg.append(f'<text class="axis-title x" x="{width / 2:.1f}" y="{height - 6}" font-size="12" text-anchor="middle">'
               f'weights of {_esc(", ".join(part_labels))} (each point sums to 1)</text>')
    svg.append("</svg>")
    return "".join(svg)


def _tie_segment(delta: list[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """The two ends, as weightings, of the segment of the simplex where ``w · delta = 0``, or ``None``."""
    d = np.asarray(delta, dtype=np.float64)
    ends = []
    for i, j in ((0, 1), (1, 2), (0, 2)):
        if d[i] * d[j] > 0 or d[i] == d[j]:
            continue
        w = np.zeros(3)
        w[i], w[j] = d[j] / (d[j] - d[i]), -d[i] / (d[j] - d[i])
        if not any(np.allclose(w, e) for e in ends):
            ends.append(w)
    return (ends[0], ends[1]) if len(ends) == 2 else None


def svg_intervals(rows: list[str], series: dict[str, list[tuple[float, float | None, float | None] | None]], *,
                  title: str, vmin: float, vmax: float, x_title: str, y_title: str = "",
                  width: int = 460, zero_line: bool = False) -> str:
    """Dot-and-whisker chart: for each of ``rows`` (e.g. the score parts), one dot per series (its
    value) with a whisker (its interval, when given); colours in series order, as :func:`legend_html`
    lists them. ``None`` leaves a series out of a row."""
    size, band = 12, 12 * max(1, len(series)) + 14
    label_px = min(max([text_width(r, size) for r in rows] + [30]), 140.0)
    left, right, top = 22 + label_px + 8, 20, 8
    plot_h = band * len(rows)
    height = top + plot_h + 46
    plot_w = width - left - right
    span = (vmax - vmin) or 1.0
    axis_y = top + plot_h

    def x_of(v: float) -> float:
        return left + plot_w * (min(max(v, vmin), vmax) - vmin) / span

    parts = [_svg_open(width, height, title)]
    for r, row in enumerate(rows):
        y0 = top + r * band
        if r:
            parts.append(f'<line x1="{left}" y1="{y0:.1f}" x2="{left + plot_w}" y2="{y0:.1f}" stroke="#eee"/>')
        parts.append(f'<text class="label" x="{left - 8:.1f}" y="{y0 + band / 2 + 4:.1f}" font-size="{size}" '
                     f'text-anchor="end">{_esc(row)}</text>')
        for s_index, (name, values) in enumerate(series.items()):
            entry = values[r] if r < len(values) else None
            if entry is None or entry[0] is None:
                continue
            value, lo, hi = entry
            y = y0 + 7 + s_index * 12 + 6
            colour = PALETTE[s_index % len(PALETTE)]
            tip = f"{name} · {row}: {_fmt(value, 4)}" + (f" [{_fmt(lo, 4)}, {_fmt(hi, 4)}]" if lo is not None else "")
            whisker = (f'<line x1="{x_of(lo):.1f}" y1="{y:.1f}" x2="{x_of(hi):.1f}" y2="{y:.1f}" stroke="{colour}" '
                       'stroke-width="2"/>' if lo is not None and hi is not None else "")
            parts.append(f'<g class="interval"><title>{_esc(tip)}</title>{whisker}<circle cx="{x_of(value):.1f}" '
                         f'cy="{y:.1f}" r="4" fill="{colour}"/></g>')
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#999"/>')
    if zero_line and vmin < 0 < vmax:
        parts.append(f'<line x1="{x_of(0):.1f}" y1="{top}" x2="{x_of(0):.1f}" y2="{axis_y}" stroke="#777" '
                     'stroke-dasharray="3 3"/>')
    for tick in _ticks(vmin, vmax):
        x = x_of(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#999"/>'
                     f'<text class="tick" x="{x:.1f}" y="{axis_y + 16}" font-size="11" text-anchor="middle">'
                     f'{tick:g}</text>')
    parts.append(f'<text class="axis-title x" x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="12" '
                 f'text-anchor="middle">{_esc(x_title)}</text>')
    if y_title:
        parts.append(f'<text class="axis-title y" transform="translate(13 {top + plot_h / 2:.1f}) rotate(-90)" '
                     f'font-size="12" text-anchor="middle">{_esc(y_title)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Analysis sections (``evalmuse report --analysis FILE``)
# ---------------------------------------------------------------------------------------------

def _weights_section(data: dict, uid: str) -> str:
    """The section of an ``evalmuse analyze weights`` result: the systems' parts and rank
    probabilities, the simplex coloured by the system each weighting ranks first, the named
    weightings and the rank flips."""
    parts, labels, score = data["parts"], data["part_labels"], data["score"]
    order = data["official_ranking"]
    boot = data.get("bootstrap") or {}
    score_label = "Main Score" if score == "main_score" else "Final Score"
    weights_text = ", ".join(f"{lb} {data['official_weights'][p]:g}" for p, lb in zip(parts, labels))
    grid = data["grid"]
    html_parts = [
        (f'<section class="analysis" id="{_esc(uid)}"><h2>Weight sensitivity of the {_esc(score_label)} '
         f'({_esc(data["track"])})</h2>'),
        (f'<p class="note">{len(order)} systems scored on {_esc(data.get("num_images", "?"))} images, ranked under the '
         f"official weights ({_esc(weights_text)}), under named alternatives and under the {grid['points']} "
         f"weightings of a grid over the simplex (step {grid['step']:g}). The official ranking holds at "
         f"{grid['official_ranking_holds']} of them; Kendall tau against it: mean {grid['mean_kendall_tau']:.3f}, "
         f"min {grid['min_kendall_tau']:.3f}.</p>"),
    ]
    n = len(order)
    head = ('<th>Rank</th><th class="name">System</th>' + "".join(f"<th>{_esc(lb)}</th>" for lb in labels)
            + f"<th>{_esc(score_label)}</th>")
    if boot:
        level = round(100 * data["bootstrap_settings"]["confidence_level"])
        head += f"<th>{level}% interval</th>" + "".join(f"<th>P(rank {k})</th>" for k in range(1, n + 1))
    body = []
    for rank, name in enumerate(order, 1):
        system = data["systems"][name]
        cells = (f'<td data-value="{rank}">{rank}</td><td class="name" data-value="{_esc(name)}"><i class="swatch" '
                 f'style="background:{PALETTE[(rank - 1) % len(PALETTE)]}"></i>{_esc(name)}</td>'
                 + "".join(f'<td data-value="{system[k]}">{_fmt(system[k], 4)}</td>' for k in [*parts, score]))
        if boot:
            lo, hi = boot[name]["score_ci"]
            cells += f'<td data-value="{lo}">[{_fmt(lo, 4)}, {_fmt(hi, 4)}]</td>'
            cells += "".join(f'<td data-value="{p}" style="background:rgba(53,88,214,{0.75 * p:.3f})">{_fmt(p, 2)}</td>'
                             for p in boot[name]["rank_probabilities"])
        body.append(f"<tr>{cells}</tr>")
    html_parts.append(f'<table class="leaderboard numeric-rows" id="{_esc(uid)}-systems"><thead><tr>{head}</tr>'
                      f'</thead><tbody>{"".join(body)}</tbody></table>')
    if boot:
        settings = data["bootstrap_settings"]
        html_parts.append(f'<p class="note">Rank probabilities: the images resampled with replacement '
                          f'{settings["valid_resamples"]} times (of {settings["n_resamples"]} drawn; seed '
                          f'{settings["seed"]}), every system scored on the same resample and ranked under the '
                          "official weights.</p>")
    named = [w for w in data["weightings"] if w.get("name") is not None]
    html_parts.append('<div class="plots"><div class="plot"><h3>Which system each weighting ranks first</h3>'
                      + svg_simplex(data["weightings"], order, parts, labels, official=data["official_weights"],
                                    named=named, ties=data.get("rank_flips", []),
                                    title=f"winner over the simplex of {score_label} weights", uid=uid)
                      + legend_html(order)
                      + '<p class="note">Circle: the official weights; diamonds: the named weightings; dashed: '
                        "where a pair of systems ties (a rank flip).</p></div></div>")
    rows = "".join(
        f'<tr><td data-value="{_esc(w["name"])}">{_esc(w["name"])}</td>'
        + "".join(f'<td data-value="{w["weights"][p]}">{w["weights"][p]:.2f}</td>' for p in parts)
        + f'<td data-value="{_esc(" > ".join(w["ranking"]))}">{_esc(" > ".join(w["ranking"]))}</td>'
        f'<td data-value="{w["kendall_tau"]}">{_fmt(w["kendall_tau"], 3)}</td></tr>'
        for w in named)
    html_parts.append('<h3>Named weightings</h3><table class="leaderboard" id="' + _esc(uid) + '-named"><thead><tr>'
                      "<th>Weighting</th>" + "".join(f"<th>w({_esc(lb)})</th>" for lb in labels)
                      + f"<th>Ranking</th><th>Kendall tau</th></tr></thead><tbody>{rows}</tbody></table>")
    flips = data.get("rank_flips") or []
    if flips:
        rows = []
        for flip in flips:
            tie = flip.get("nearest_tie")
            tie_text = ("–" if not tie else ", ".join(f"{lb} {tie['weights'][p]:.2f}" for p, lb in zip(parts, labels))
                        + f" (distance {tie['distance']:.3f})")
            rows.append(f'<tr><td data-value="{_esc(flip["ahead"])}">{_esc(flip["ahead"])} &gt; '
                        f'{_esc(flip["behind"])}</td><td data-value="{flip["official_margin"]}">'
                        f'{flip["official_margin"]:+.4f}</td><td data-value="{flip["grid_share"]}">'
                        f'{_fmt(100 * flip["grid_share"], 1)}%</td><td data-value="{_esc(", ".join(flip["named"]))}">'
                        f'{_esc(", ".join(flip["named"]) or "–")}</td>'
                        f'<td data-value="{tie["distance"] if tie else ""}">'
                        f"{_esc(tie_text)}</td></tr>")
        html_parts.append('<h3>Rank flips</h3><table class="leaderboard" id="' + _esc(uid) + '-flips"><thead><tr>'
                          "<th>Official order</th><th>Margin</th><th>Grid reversed</th><th>Named reversed</th>"
                          f'<th>Nearest tie to the official weights</th></tr></thead><tbody>{"".join(rows)}</tbody>'
                          "</table>")
    else:
        html_parts.append('<p class="note">No weighting of the simplex reverses any pair of systems: every part '
                          "ranks them the same way.</p>")
    html_parts.append("</section>")
    return "".join(html_parts)


_GROUP_LABELS = {"seen": "seen generators", "unseen": "unseen generators",
                 "unseen_prompt_seen": "unseen, prompt seen", "unseen_prompt_unseen": "unseen, prompt unseen"}
_GAP_LABELS = {"generator": "seen − unseen", "prompt": "prompt seen − unseen"}


def _generalisation_section(data: dict, uid: str) -> str:
    """The section of an ``evalmuse eval alignment --by seen/unseen --json`` result: each group's
    scores and the gaps, as a table and as dot-and-whisker plots."""
    keys = [*data["parts"], data["score"]]
    labels = [*data["part_labels"], "Main Score" if data["score"] == "main_score" else "Final Score"]
    generators = ", ".join(data.get("holdout_generators") or []) or "–"
    interval_note = ""
    if data.get("bootstrap"):
        interval_note = (f', with {round(100 * data["bootstrap"]["confidence_level"])}% percentile bootstrap intervals '
                         f'over images ({data["bootstrap"]["n_resamples"]} resamples)')
    html_parts = [f'<section class="analysis" id="{_esc(uid)}"><h2>Generalisation to unseen generators</h2>',
                  (f'<p class="note">Held-out generators: {_esc(generators)}. Scores of the images of generators seen '
                   "in training and of the held-out ones (whose prompt was, or was not, in the training split)"
                   f"{interval_note}.</p>")]

    def cell(value, interval, signed=False) -> str:
        text = _esc("–" if value is None else (f"{value:+.4f}" if signed else f"{value:.4f}"))
        if value is not None and interval:
            text += f'<span class="ci">[{interval[0]:.3f}, {interval[1]:.3f}]</span>'
        return f'<td data-value="{"" if value is None else value}">{text}</td>'

    body = []
    for group, entry in data["groups"].items():
        ci = entry.get("ci") or {}
        body.append(f'<tr><td data-value="{_esc(group)}">{_esc(_GROUP_LABELS.get(group, group))}</td>'
                    f'<td data-value="{entry["n_images"]}">{entry["n_images"]}</td>'
                    + "".join(cell(entry.get(k), ci.get(k)) for k in keys) + "</tr>")
    for gap, entry in data["gaps"].items():
        ci = entry.get("ci") or {}
        body.append(f'<tr class="gap"><td data-value="gap {_esc(gap)}">gap: {_esc(_GAP_LABELS.get(gap, gap))}</td>'
                    '<td data-value=""></td>' + "".join(cell(entry["values"].get(k), ci.get(k), True) for k in keys)
                    + "</tr>")
    head = "<th>Images</th><th>n</th>" + "".join(f"<th>{_esc(lb)}</th>" for lb in labels)
    html_parts.append(f'<table class="leaderboard" id="{_esc(uid)}-table"><thead><tr>{head}</tr></thead>'
                      f'<tbody>{"".join(body)}</tbody></table>')

    def entries(source: dict, values_key: str | None) -> list:
        out = []
        for k in keys:
            value = (source[values_key] if values_key else source).get(k)
            interval = (source.get("ci") or {}).get(k)
            out.append(None if value is None else (value, *(interval or (None, None))))
        return out

    groups = {_GROUP_LABELS.get(g, g): entries(e, None) for g, e in data["groups"].items()}
    gaps = {_GAP_LABELS.get(g, g): entries(e, "values") for g, e in data["gaps"].items()}
    values = [v for series in groups.values() for e in series if e for v in e if v is not None]
    lo = min([0.0, *values]) if values else 0.0
    gap_values = [abs(v) for series in gaps.values() for e in series if e for v in e if v is not None]
    reach = max(gap_values + [0.05])
    html_parts.append('<div class="plots"><div class="plot"><h3>Scores by group</h3>'
                      + svg_intervals(labels, groups, title="scores of seen and unseen generators",
                                      vmin=math.floor(lo * 10) / 10, vmax=1.0, x_title="score (higher is better)",
                                      y_title="score")
                      + legend_html(list(groups)) + "</div>"
                      + '<div class="plot"><h3>Gaps</h3>'
                      + svg_intervals(labels, gaps, title="generalisation gaps", vmin=-reach, vmax=reach,
                                      x_title="gap (positive: the unseen side scores lower)", y_title="score",
                                      zero_line=True)
                      + legend_html(list(gaps)) + "</div></div></section>")
    return "".join(html_parts)


def _benchmark_section(data: dict, uid: str) -> str:
    from ..analysis.benchmark import benchmark_section

    return benchmark_section(data, uid)


def _refine_section(data: dict, uid: str) -> str:
    from ..analysis.refine import refine_section

    return refine_section(data, uid)


#: ``"analysis"`` key of an analysis JSON -> the function drawing its report section.
ANALYSIS_SECTIONS = {"weights": _weights_section, "generalisation": _generalisation_section,
                     "benchmark": _benchmark_section, "refine": _refine_section}
#: the keys each analysis JSON must hold
_ANALYSIS_KEYS = {
    "weights": ("track", "parts", "part_labels", "score", "official_weights", "systems", "official_ranking",
                "weightings", "grid", "rank_flips"),
    "generalisation": ("parts", "part_labels", "score", "groups", "gaps"),
    "benchmark": ("benchmark", "labelled", "variants", "generators", "categories"),
    "refine": ("settings", "summary", "images"),
}
#: the commands that write each analysis JSON (named in errors)
_ANALYSIS_COMMANDS = ("`evalmuse analyze weights --json`, `evalmuse eval alignment --by seen/unseen --json`, "
                      "`evalmuse benchmark ... --json` or the refine_report.json of `evalmuse refine-masks`")


def read_analysis(path: str | os.PathLike) -> dict:
    """Read the JSON of an analysis (``evalmuse analyze weights --json``, ``evalmuse eval alignment
    --by seen/unseen --json``, ``evalmuse benchmark --json``, ``refine_report.json``) and check that the
    report knows it."""
    from ..utils.jsonio import read_json_file

    data = read_json_file(path)
    kind = data.get("analysis") if isinstance(data, dict) else None
    if kind not in ANALYSIS_SECTIONS:
        raise UserInputError(f"{path}: not an analysis the report knows (its 'analysis' is {kind!r}; expected one of "
                             f"{', '.join(sorted(ANALYSIS_SECTIONS))}); write it with {_ANALYSIS_COMMANDS}")
    missing = [key for key in _ANALYSIS_KEYS.get(kind, ()) if key not in data]
    if missing:
        raise UserInputError(f"{path}: a {kind!r} analysis without {', '.join(missing)}; write it again with the "
                             "command that makes it")
    return data


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

class _ImageResolver:
    """Opens the image of a results row (a file path, or a row of a dataset split)."""

    def __init__(self):
        self._datasets: dict[tuple, Any] = {}

    def open(self, row: dict):
        from PIL import Image

        source = row.get("source") or {}
        if "config" in source:
            key = (source["path"], source["config"], source["split"])
            if key not in self._datasets:
                import datasets

                ds = datasets.load_dataset(source["path"], source["config"], split=source["split"])
                self._datasets[key] = ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
            value = self._datasets[key][int(source["index"])]["image"]
            import io

            image = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
        else:
            image = Image.open(source["path"])
        image.load()
        return image.convert("RGB")


def heat_overlay(structure: dict, size: tuple[int, int]):
    """An RGBA overlay (transparent → red) of the heatmap, or of the mask when no heatmap was kept."""
    from PIL import Image

    from ..scoring.adapters import decode_heatmap
    from ..scoring.rle import rle_to_mask

    if structure.get("heatmap_png"):
        heat = decode_heatmap(structure["heatmap_png"])
        heat_img = Image.fromarray(np.round(heat * 255).astype(np.uint8), mode="L").resize(size, Image.BILINEAR)
    else:
        mask = rle_to_mask(structure["mask"]) * 255
        heat_img = Image.fromarray(mask.astype(np.uint8), mode="L").resize(size, Image.NEAREST)
    h = np.asarray(heat_img, dtype=np.float32) / 255.0
    rgba = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = np.round(200 * (1 - h)).astype(np.uint8)
    rgba[..., 3] = np.round(230 * np.clip(h * 1.4, 0, 1)).astype(np.uint8)
    return Image.fromarray(rgba, mode="RGBA")


HEAT_OPACITY = 0.55  # the page shows the overlay at this opacity (report.css, .thumb .overlay)


def heat_color(level: float) -> str:
    """The colour :func:`heat_overlay` gives a heatmap level, as the page shows it (CSS ``rgba``)."""
    h = min(max(float(level), 0.0), 1.0)
    alpha = HEAT_OPACITY * round(230 * min(h * 1.4, 1.0)) / 255
    return f"rgba(255,{round(200 * (1 - h))},0,{alpha:.3f})"


def outline_path(mask: np.ndarray, size: tuple[int, int], *, max_points: int = 600) -> str:
    """SVG path data (``fill-rule: evenodd``) outlining the regions of a 0/1 ``mask``, in the
    coordinates of an image of ``size`` (width, height) — the thumbnail. Outlines are simplified to
    about half a thumbnail pixel; a mask of many tiny regions keeps its largest outlines, at most
    ``max_points`` points in all, so that thousands of cards stay light."""
    import cv2

    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if binary.ndim != 2 or not binary.any():
        return ""
    sx, sy = size[0] / binary.shape[1], size[1] / binary.shape[0]
    contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    contours = sorted(contours, key=lambda c: -cv2.contourArea(c) - len(c))
    epsilon = 0.5 / min(sx, sy)
    for _ in range(6):
        simple = [cv2.approxPolyDP(c, epsilon, True) if len(c) > 2 else c for c in contours]
        if sum(len(c) for c in simple) <= max_points:
            break
        epsilon *= 2
    parts, used = [], 0
    for contour in simple:
        points = contour.reshape(-1, 2).astype(np.float64)
        if used + max(len(points), 4) > max_points:
            break
        used += max(len(points), 4)
        if len(points) < 3:  # a pixel or a thin line: its box
            x0, y0 = points.min(axis=0) * (sx, sy)
            x1, y1 = (points.max(axis=0) + 1) * (sx, sy)
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        else:  # pixel centres -> pixel corners, roughly: the outline runs around the pixels
            points = (points + 0.5) * (sx, sy)
        parts.append("M" + "L".join(f"{x:.1f} {y:.1f}" for x, y in points) + "Z")
    return "".join(parts)


def _boxes_path(regions: list[dict], scale: tuple[float, float]) -> str:
    parts = []
    for region in regions:
        x0, y0, x1, y1 = (float(v) for v in region["bbox"])
        x0, x1, y0, y1 = x0 * scale[0], x1 * scale[0], y0 * scale[1], y1 * scale[1]
        parts.append(f"M{x0:.1f} {y0:.1f}H{x1:.1f}V{y1:.1f}H{x0:.1f}Z")
    return "".join(parts)


def card_outlines(row: dict, size: tuple[int, int]) -> tuple[str, str | None]:
    """The predicted and the true distortion outlines of a row (SVG path data in thumbnail
    coordinates): the predicted mask (its region boxes when the mask cannot be read) and, when the
    row carries one (``reference.mask``, from a labelled structure dataset), the true mask.
    The truth is ``None`` when the row has none, ``""`` when it is empty."""
    from ..scoring.rle import rle_to_mask

    structure = row.get("structure") or {}
    predicted, mask_rle = "", structure.get("mask")
    if mask_rle:
        try:
            predicted = outline_path(rle_to_mask(mask_rle), size)
        except UserInputError:
            mask_rle = None
    if not mask_rle and structure.get("regions"):
        width, height = row.get("width") or size[0], row.get("height") or size[1]
        predicted = _boxes_path(structure["regions"], (size[0] / width, size[1] / height))
    truth = None
    truth_rle = (row.get("reference") or {}).get("mask")
    if truth_rle:
        try:
            truth = outline_path(rle_to_mask(truth_rle), size)
        except UserInputError:
            truth = None
    return predicted, truth


def recorded_mask_threshold(rows: list[dict]) -> float | None | str:
    """The heatmap threshold the structure masks were made with, when the rows record it
    (``structure.threshold``, written by ``evalmuse score``): one value, ``"varies"`` when the rows
    disagree, ``None`` when none records it (results files from before it was recorded)."""
    values = set()
    for row in rows:
        value = (row.get("structure") or {}).get("threshold")
        if value is not None:
            values.add(round(float(value), 6))
    if not values:
        return None
    return values.pop() if len(values) == 1 else "varies"


def _heat_legend_html(threshold: float | None | str, has_truth: bool) -> str:
    """What the colours and outlines over the thumbnails mean: the heatmap's colour bar (0 → 1), the
    mask threshold marked on it when known, and the outline styles."""
    width, left, bar_w, top, bar_h = 300, 10, 280, 16, 14
    stops = "".join(f'<stop offset="{v:g}" stop-color="{heat_color(v)}"/>' for v in np.linspace(0, 1, 11))
    svg = [_svg_open(width, 62, "heatmap colour scale"),
           (f'<defs><linearGradient id="heat-gradient">{stops}</linearGradient>'
           '<pattern id="heat-checker" width="8" height="8" patternUnits="userSpaceOnUse">'
           '<rect width="8" height="8" fill="#fff"/><rect width="4" height="4" fill="#ddd"/>'
           '<rect x="4" y="4" width="4" height="4" fill="#ddd"/></pattern></defs>'),
           f'<rect x="{left}" y="{top}" width="{bar_w}" height="{bar_h}" fill="url(#heat-checker)"/>',
           f'<rect x="{left}" y="{top}" width="{bar_w}" height="{bar_h}" fill="url(#heat-gradient)" stroke="#999"/>']
    for v in (0, 0.25, 0.5, 0.75, 1):
        x = left + bar_w * v
        svg.append(f'<line x1="{x:g}" y1="{top + bar_h}" x2="{x:g}" y2="{top + bar_h + 4}" stroke="#666"/>'
                   f'<text class="tick" x="{x:g}" y="{top + bar_h + 15}" font-size="11" text-anchor="middle">{v:g}</text>')
    if isinstance(threshold, float):
        x = left + bar_w * threshold
        anchor = "start" if x < 80 else "end" if x > width - 80 else "middle"
        svg.append(f'<line class="threshold" x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{top + bar_h + 2}" '
                   'stroke="#111" stroke-width="2"/>'
                   f'<text class="threshold-label" x="{x:.1f}" y="{top - 6}" font-size="11" text-anchor="{anchor}">'
                   f"mask threshold {threshold:.3g}</text>")
    svg.append(f'<text class="axis-title x" x="{left + bar_w / 2}" y="60" font-size="12" text-anchor="middle">'
               "predicted distortion probability (0–1)</text></svg>")
    if isinstance(threshold, float):
        rule = f"the predicted mask is the heatmap above {threshold:.3g}"
    elif threshold == "varies":
        rule = "the predicted mask is the heatmap above a threshold that differs between the images"
    else:
        rule = "the predicted mask is the heatmap above the structure model's threshold (not recorded in the results)"
    keys = [(f'<li><svg width="26" height="10"><path d="M1 5H25" class="key-pred"/></svg>'
            f"predicted distortion outline ({_esc(rule)})</li>")]
    if has_truth:
        keys.append('<li><svg width="26" height="10"><path d="M1 5H25" class="key-truth"/></svg>'
                    "true distortion mask (shown with “truth masks”)</li>")
    return (f'<div class="heat-legend" id="heat-legend"><div><b>Heatmap</b> (red over the image)</div>'
            f'{"".join(svg)}<ul class="outline-keys">{"".join(keys)}</ul></div>')


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

def _leaderboard_html(table: list[dict], has_align: bool, has_structure: bool, has_ref: bool) -> str:
    columns = [("generator", "Generator", None), ("images", "Images", 0), ("errors", "Errors", 0)]
    if has_align:
        columns += [("alignment", "Alignment (1–5)", 3), ("elements_present", "Elements present", 3)]
    if has_ref:
        columns += [("reference_alignment", "True alignment", 3)]
    if has_structure:
        columns += [("structure", "Structure (1–5)", 3), ("distorted", "With distortions", 3)]
    head = "".join(f"<th>{_esc(label)}</th>" for _, label, _ in columns)
    body = []
    for row in table:
        cells = []
        for key, _, digits in columns:
            value = row[key]
            text = _esc(value) if digits is None or digits == 0 else _fmt(value, digits)
            sort_value = "" if value is None else value
            if digits is None:
                cells.append(f'<td data-value="{_esc(sort_value)}">{text}</td>')
            else:
                cells.append(f'<td data-value="{_esc(sort_value)}">{_esc(value) if digits == 0 else text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="leaderboard" id="leaderboard"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _structure_split_html(split: dict) -> str:
    """The one-row table of the structure images that have no generator (no generator column)."""
    columns = [("images", "Images", 0), ("errors", "Errors", 0), ("structure", "Structure (1–5)", 3)]
    if split["reference_structure"] is not None:
        columns.append(("reference_structure", "True structure (1–5)", 3))
    columns.append(("distorted", "With predicted distortions", 3))
    if split["reference_distorted"] is not None:
        columns.append(("reference_distorted", "With true distortions", 3))
    head = "".join(f"<th>{_esc(label)}</th>" for _, label, _ in columns)
    cells = "".join(f'<td data-value="{_esc("" if split[k] is None else split[k])}">'
                    f"{_esc(split[k]) if digits == 0 else _fmt(split[k], digits)}</td>" for k, _, digits in columns)
    return (f'<table class="leaderboard numeric" id="structure-split"><thead><tr>{head}</tr></thead>'
            f"<tbody><tr>{cells}</tr></tbody></table>")


def _category_html(table: list[dict]) -> str:
    has_truth = any(r["accuracy"] is not None for r in table)
    head = "<th>Category</th><th>Elements</th><th>Predicted present</th>" + (
        "<th>Element accuracy</th>" if has_truth else "")
    body = []
    for r in table:
        cells = (f'<td data-value="{_esc(r["category"])}">{_esc(r["category"])}</td>'
                 f'<td data-value="{r["elements"]}">{r["elements"]}</td>'
                 f'<td data-value="{r["present"]}">{_fmt(r["present"], 3)}</td>')
        if has_truth:
            cells += f'<td data-value="{_esc(r["accuracy"] if r["accuracy"] is not None else "")}">{_fmt(r["accuracy"], 3)}</td>'
        body.append(f"<tr>{cells}</tr>")
    return (f'<table class="leaderboard" id="categories"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _card_html(index: int, row: dict, media: dict | None) -> str:
    """One image card. ``media``: the thumbnail (``thumb``, its ``size``), the heatmap ``overlay``
    and the ``predicted`` / ``truth`` outline paths (see :func:`card_outlines`), or ``None``."""
    from ..metrics import element_category

    align = row.get("alignment")
    structure = row.get("structure")
    reference = row.get("reference") or {}
    element_probs = (align or {}).get("elements") or {}
    split = is_structure_split(row)
    generator = NO_GENERATOR if split else row.get("generator") or "(unknown)"
    data = {
        "index": index,
        "generator": generator,
        "alignment": "" if not align or align["overall"] is None else f'{align["overall"]:.6f}',
        "structure": "" if not structure or structure["score"] is None else f'{structure["score"]:.6f}',
        "regions": len(structure.get("regions") or []) if structure else 0,
        "missing": sum(1 for p in element_probs.values() if p is not None and p < 0.5),
        # normalised categories of the elements, and of the missing ones ("|color|object|"): the category filter
        "categories": "|" + "|".join(sorted({element_category(k) for k in element_probs})) + "|",
        "missing-categories": "|" + "|".join(sorted(
            {element_category(k) for k, p in element_probs.items() if p is not None and p < 0.5})) + "|",
        "text": f'{row.get("prompt", "")} {row["id"]}'.lower(),
    }
    attrs = " ".join(f'data-{k}="{_esc(v)}"' for k, v in data.items())
    classes = "card" + ("" if row.get("status") == "ok" else " error")
    parts = [f'<article class="{classes}" {attrs}>', '<div class="thumb">']
    if media:
        parts.append(f'<img src="{_esc(media["thumb"])}" alt="{_esc(row["id"])}" loading="lazy">')
        if media.get("overlay"):
            parts.append(f'<img class="overlay" src="{_esc(media["overlay"])}" alt="distortion heatmap" loading="lazy">')
        if structure:
            width, height = media["size"]
            truth = media.get("truth")
            parts.append(f'<svg class="outlines" viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMid meet" '
                         'aria-hidden="true">'
                         f'<path class="pred" d="{media.get("predicted") or ""}"/>'
                         + ("" if truth is None else f'<path class="truth" d="{truth}"/>') + "</svg>")
            if truth == "":
                parts.append('<span class="truth-empty">no true distortion</span>')
    else:
        parts.append("<span>image not available</span>")
    parts.append('</div><div class="body">')
    id_line = _esc(row["id"]) if split else f'{_esc(row["id"])} · {_esc(generator)}'
    parts.append(f'<div class="id">{id_line}</div>')
    parts.append(f'<div class="prompt">{_esc(row.get("prompt", ""))}</div>')
    if row.get("status") != "ok":
        parts.append(f'<div class="errmsg">{_esc(row.get("error"))}</div>')
    scores = []
    if align:
        ref = reference.get("overall")
        scores.append(f'<span title="alignment, 1–5">align {_fmt(align["overall"], 2)}'
                      + (f' <span class="ref">(true {_fmt(ref, 2)})</span>' if ref is not None else "") + "</span>")
    if structure:
        ref = reference.get("mos")
        scores.append(f'<span title="structure, 1–5">structure {_fmt(structure["score"], 2)}'
                      + (f' <span class="ref">(true {_fmt(ref, 2)})</span>' if ref is not None else "")
                      + (f' · {len(structure["regions"])} region(s)' if "regions" in structure else "") + "</span>")
    if scores:
        parts.append('<div class="scores">' + "".join(scores) + "</div>")
    if align and align.get("elements"):
        ref_elements = reference.get("elements") or {}
        parts.append('<ul class="checklist">')
        for key, p in align["elements"].items():
            present = p is not None and p >= 0.5
            truth = ref_elements.get(key)
            truth_text = f" · true {_fmt(truth, 2)}" if truth is not None else ""
            parts.append(f'<li class="{"yes" if present else "no"}" data-category="{_esc(element_category(key))}">'
                         f'<span class="key">{_esc(key)}</span>'
                         f'<span class="p">{_fmt(None if p is None else 100 * p, 0)}%{truth_text}</span></li>')
        parts.append("</ul>")
    parts.append("</div></article>")
    return "".join(parts)


def build_report(
    results: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    title: str = "EvalMuse report",
    max_cards: int = 1000,
    thumb_size: int = 256,
    overwrite: bool = True,
    progress: bool = True,
    generator_map=None,
    mask_threshold: float | None = None,
    analyses: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write the HTML report of ``results`` (a file written by ``evalmuse score``) to ``out_dir``.

    Args:
        max_cards: at most this many per-image cards (the first ones of the file); the
            leaderboard and plots always use every row.
        thumb_size: longest side of the thumbnails, in pixels.
        overwrite: replace an earlier report at ``out_dir`` (the folder is swapped in atomically).
            Only a report this package wrote (it holds the marker file
            :data:`~evalmuse_models.utils.io.OUTPUT_MARKER`) or an empty folder is ever replaced:
            any other file or folder there, the current directory, the results file or a folder
            holding it is refused with :class:`UserInputError`, whatever ``overwrite`` says.
        generator_map: which model made each image, for inputs whose paths do not say (the
            validation release's flat ``img_0001.png``): a file (CSV ``img_path,generator`` or
            JSON ``{img_path: generator}``, see :func:`~evalmuse_models.data.read_generator_map`)
            or a dict, matched on the row ids. The leaderboard, plots and filters group by it.
            Images scored for structure only without a generator (a structure split) are summed up
            in a table of their own, not as a generator.
        mask_threshold: the heatmap threshold the structure masks were made with (``evalmuse score
            --threshold``, else the model's ``threshold``), marked on the heatmap legend when the
            rows do not record it (``structure.threshold``).
        analyses: JSON files of analyses (``evalmuse analyze weights --json``, ``evalmuse eval
            alignment --by seen/unseen --json``), each drawn as a section with its plots (see
            :data:`ANALYSIS_SECTIONS`) and copied into the folder as ``analysis_<kind>.json``.
            ``results`` may then be ``None``: a report of the analyses alone.

    Returns: the path of ``index.html``.

    Example::

        from evalmuse_models.report import build_report
        build_report("results.jsonl", "report/")   # then open report/index.html
    """
    from tqdm.auto import tqdm

    from ..scoring import read_results

    if mask_threshold is not None and not 0.0 <= float(mask_threshold) <= 1.0:
        raise UserInputError(f"the mask threshold (--mask-threshold) must be a heatmap level in [0, 1], "
                             f"got {mask_threshold}")
    analysis_files = [Path(a) for a in analyses]
    if results is None and not analysis_files:
        raise UserInputError("nothing to report: give a results file, an analysis (--analysis FILE) or both")
    results = Path(results) if results is not None else None
    inputs = [p for p in [results, *analysis_files] if p is not None]
    claim_output_directory(out_dir, "report", inputs=inputs, overwrite=overwrite, option="the report folder (--out)")
    analysis_data = [read_analysis(path) for path in analysis_files]
    rows = read_results(results) if results is not None else []
    if results is not None and not rows:
        raise UserInputError(f"{results} has no rows; nothing to report")
    if generator_map is not None and not apply_generator_map(rows, generator_map):
        raise UserInputError(
            f"no image of {results} is in the generator map (matched on the row ids, e.g. {rows[0]['id']!r}); "
            "is it the map of this input?"
        )
    has_align = any("alignment" in r for r in rows)
    has_structure = any("structure" in r for r in rows)
    table = generator_table(rows)
    split = structure_split_table(rows)
    board_rows = [r for r in rows if not is_structure_split(r)]
    board_align = any("alignment" in r for r in board_rows)
    board_structure = any("structure" in r for r in board_rows)
    has_ref = any((r.get("reference") or {}).get("overall") is not None for r in board_rows)
    has_truth_masks = any((r.get("reference") or {}).get("mask") and r.get("structure") for r in rows[:max_cards])
    threshold = recorded_mask_threshold(rows)
    if threshold is None and mask_threshold is not None:
        threshold = float(mask_threshold)
    ok = [r for r in rows if r.get("status") == "ok"]

    summary = [("images", str(len(rows))), ("scored", str(len(ok))), ("errors", str(len(rows) - len(ok)))]
    if not rows:
        summary = [("analyses", str(len(analysis_data)))]
    if table:
        summary.append(("generators", str(len(table))))
    if split:
        summary.append(("structure images without a generator", str(split["images"])))
    if has_align:
        summary.append(("mean alignment", _fmt(_mean([r["alignment"]["overall"] for r in ok if "alignment" in r]), 2)))
    if has_structure:
        summary.append(("mean structure", _fmt(_mean([r["structure"]["score"] for r in ok if "structure" in r]), 2)))
    body = ['<section id="summary"><div class="summary">']
    body += [f'<div class="stat"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>' for k, v in summary]
    body.append("</div></section>")

    labels = [r["generator"] for r in table]
    if table:
        body.append('<section id="leaderboard-section"><h2>Leaderboard by generator</h2>')
        body.append(_leaderboard_html(table, board_align, board_structure, has_ref))
        body.append('<div class="plots">')
        if board_align:
            body.append('<div class="plot"><h3>Mean alignment per generator</h3>'
                        + svg_bars(labels, [r["alignment"] for r in table], title="mean alignment", vmin=1, vmax=5,
                                   x_title="mean alignment score (1–5)") + "</div>")
        if board_structure:
            body.append('<div class="plot"><h3>Mean structure score per generator</h3>'
                        + svg_bars(labels, [r["structure"] for r in table], title="mean structure", vmin=1, vmax=5,
                                   x_title="mean structure score (1–5)") + "</div>")
        body.append("</div></section>")
    if split:
        body.append('<section id="structure-split-section"><h2>Structure images without a generator</h2>'
                    '<p class="note">Images scored for structure only (a structure split such as '
                    "EvalMuse-Structure, or a folder without generators): they have no generator, so they are "
                    "summed up here rather than in a per-generator table.</p>")
        body.append(_structure_split_html(split))
        body.append("</section>")
    categories = category_table(rows) if has_align else []
    if categories:
        body.append('<section id="categories-section"><h2>Elements by category</h2>')
        body.append(_category_html(categories))
        body.append("</section>")

    kinds: dict[str, int] = defaultdict(int)
    analysis_names = []
    for data in analysis_data:
        kinds[data["analysis"]] += 1
        suffix = "" if kinds[data["analysis"]] == 1 else f"_{kinds[data['analysis']]}"
        analysis_names.append(f"analysis_{data['analysis']}{suffix}")
        body.append(ANALYSIS_SECTIONS[data["analysis"]](data, analysis_names[-1].replace("_", "-")))

    if rows:
        body.append('<section id="distributions"><h2>Score distributions</h2><div class="plots">')
        by_gen = defaultdict(list)
        by_gen_structure = defaultdict(list)
        for r in ok:
            group = "without a generator" if is_structure_split(r) else r.get("generator") or "(unknown)"
            if "alignment" in r and r["alignment"]["overall"] is not None:
                by_gen[group].append(r["alignment"]["overall"])
            if "structure" in r and r["structure"]["score"] is not None:
                by_gen_structure[group].append(r["structure"]["score"])

        def histogram(heading: str, series: dict, **kwargs) -> str:
            names = [name for name, values in series.items() if values]
            return (f'<div class="plot"><h3>{_esc(heading)}</h3>' + svg_histogram(series, **kwargs)
                    + legend_html(names) + "</div>")

        bin_note = "bins of 0.2"
        if has_align:
            body.append(histogram("Alignment score (1–5)", dict(by_gen), title="alignment distribution", lo=1, hi=5,
                                  x_title=f"alignment score (1–5), {bin_note}", y_title="images"))
            elements = [p for r in ok if "alignment" in r for p in r["alignment"]["elements"].values() if p is not None]
            if elements:
                body.append(histogram("Element probabilities", {"all elements": elements}, title="element distribution",
                                      lo=0, hi=1, x_title="element presence probability (0–1), bins of 0.05",
                                      y_title="elements"))
        if has_structure:
            body.append(histogram("Structure score (1–5)", dict(by_gen_structure), title="structure distribution",
                                  lo=1, hi=5, x_title=f"structure score (1–5), {bin_note}", y_title="images"))
        body.append("</div></section>")

        sort_options = [("index-asc", "file order")]
        if has_align:
            sort_options += [("alignment-asc", "alignment ↑ (worst first)"), ("alignment-desc", "alignment ↓"),
                             ("missing-desc", "most missing elements")]
        if has_structure:
            sort_options += [("structure-asc", "structure ↑ (worst first)"), ("structure-desc", "structure ↓"),
                             ("regions-desc", "most distortion regions")]
        body.append('<section id="images"><h2>Images</h2><div class="controls">')
        body.append('<label>Sort <select id="sort">' + "".join(
            f'<option value="{v}">{_esc(t)}</option>' for v, t in sort_options) + "</select></label>")
        generator_options = [(g, g) for g in sorted(labels)]
        if split:
            generator_options.append((NO_GENERATOR, "without a generator (structure)"))
        body.append('<label>Generator <select id="generator"><option value="">all</option>' + "".join(
            f'<option value="{_esc(v)}">{_esc(t)}</option>' for v, t in generator_options) + "</select></label>")
        if categories:
            body.append('<label>Category <select id="category"><option value="">all</option>' + "".join(
                f'<option value="{_esc(c)}">{_esc(c)}</option>' for c in sorted(r["category"] for r in categories))
                + "</select></label>")
        body.append('<label>Show <select id="only"><option value="">all</option>'
                    '<option value="missing">missing elements</option><option value="distorted">with distortions</option>'
                    '<option value="errors">errors</option></select></label>')
        body.append('<input type="search" id="query" placeholder="search prompt or file">')
        if has_structure:
            body.append('<label><input type="checkbox" id="heat" checked> heatmaps</label>'
                        '<label><input type="checkbox" id="outlines" checked> outlines</label>')
            if has_truth_masks:
                body.append('<label><input type="checkbox" id="truth"> truth masks</label>')
        body.append('<span id="count"></span></div>')
        if has_structure:
            body.append(_heat_legend_html(threshold, has_truth_masks))
        if len(rows) > max_cards:
            body.append(f'<p class="note">Showing cards for the first {max_cards} of {len(rows)} images '
                        "(the leaderboard and plots use all of them).</p>")
        body.append('<div class="cards" id="cards">')

    resolver = _ImageResolver()
    out_dir = Path(out_dir)
    with owned_directory(out_dir, "report", inputs=inputs, overwrite=overwrite,
                         option="the report folder (--out)") as tmp:
        (tmp / "images").mkdir()
        for index, row in enumerate(tqdm(rows[:max_cards], desc="report", unit="img", disable=not progress)):
            media = None
            if row.get("status") == "ok":
                try:
                    image = resolver.open(row)
                except Exception:  # noqa: BLE001 - a moved image only loses its thumbnail
                    image = None
                if image is not None:
                    image.thumbnail((thumb_size, thumb_size))
                    media = {"thumb": f"images/{index:05d}.jpg", "size": image.size}
                    image.save(tmp / media["thumb"], quality=85)
                    if "structure" in row:
                        if row["structure"].get("heatmap_png") or row["structure"].get("mask"):  # not score-only
                            media["overlay"] = f"images/{index:05d}_heat.png"
                            heat_overlay(row["structure"], image.size).save(tmp / media["overlay"], optimize=True)
                        media["predicted"], media["truth"] = card_outlines(row, image.size)
            body.append(_card_html(index, row, media))
        if rows:
            body.append("</div></section>")
        counts = [f"{len(rows)} images"] if rows else []
        if table:
            counts.append(f"{len(table)} generators")
        if split:
            counts.append(f"{split['images']} structure images without a generator")
        if analysis_data:
            counts.append(f"{len(analysis_data)} analys{'is' if len(analysis_data) == 1 else 'es'}")
        models = sorted({str(v) for r in rows for k, v in (r.get("meta") or {}).items()
                         if k in ("align_model", "structure_model") and v})
        page = Template((TEMPLATES / "report.html").read_text(encoding="utf-8")).substitute(
            title=_esc(title),
            subtitle=_esc(" · ".join(counts) + (" · models: " + ", ".join(models) if rows else "")),
            version=__version__,
            results_name=_esc(", ".join(p.name for p in inputs)),
            css=(TEMPLATES / "report.css").read_text(encoding="utf-8"),
            js=(TEMPLATES / "report.js").read_text(encoding="utf-8"),
            body="\n".join(body),
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        if rows:
            (tmp / "leaderboard.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
        for name, data in zip(analysis_names, analysis_data):
            (tmp / f"{name}.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
        if categories:
            (tmp / "categories.json").write_text(json.dumps(categories, indent=1), encoding="utf-8")
        if split:
            (tmp / "structure_split.json").write_text(json.dumps(split, indent=1), encoding="utf-8")
    return out_dir / "index.html"
