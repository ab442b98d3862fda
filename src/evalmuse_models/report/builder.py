"""A static HTML report of a results file: leaderboard, plots, per-image cards (``evalmuse report``).

Layout of the output folder::

    report/
      index.html        self-contained page (CSS, JS and SVG plots inline)
      images/00000.jpg  thumbnails
      images/00000_heat.png  distortion heatmap overlays (RGBA, same size as the thumbnail)
      leaderboard.json  the per-generator table
      categories.json   the per-category element table (element categories normalised from the keys)
      .evalmuse-output.json  marks the folder as a report this package wrote (only such a folder is replaced)

The page needs no server and no network: open ``report/index.html`` in a browser.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import defaultdict
from pathlib import Path
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

def generator_table(rows: list[dict]) -> list[dict]:
    """Per-generator summary rows (what the leaderboard shows), best mean alignment first."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
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
                "distorted": (float(np.mean([len(s["regions"]) > 0 for s in structure])) if structure else None),
                "reference_alignment": _mean(refs),
            }
        )
    table.sort(key=lambda r: (-(r["alignment"] if r["alignment"] is not None else -1e9), r["generator"]))
    return table


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

    if not isinstance(generator_map, dict):
        generator_map = read_generator_map(generator_map)
    mapped = 0
    for row in rows:
        generator = generator_map.get(str(row["id"]).replace("\\", "/"))
        if generator:
            row["generator"] = generator
            mapped += 1
    return mapped


# ---------------------------------------------------------------------------------------------
# SVG plots
# ---------------------------------------------------------------------------------------------

def svg_bars(labels: list[str], values: list[float | None], *, title: str, vmin: float, vmax: float,
             width: int = 420) -> str:
    """Horizontal bar chart, one bar per label."""
    bar_h, gap, left, right = 20, 6, 130, 50
    height = 14 + len(labels) * (bar_h + gap)
    span = (vmax - vmin) or 1.0
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_esc(title)}">')]
    for i, (label, value) in enumerate(zip(labels, values)):
        y = 8 + i * (bar_h + gap)
        length = 0 if value is None else max(0.0, min(1.0, (value - vmin) / span)) * (width - left - right)
        parts.append(f'<text x="{left - 6}" y="{y + 14}" font-size="12" text-anchor="end">{_esc(label[:20])}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar_h}" fill="{PALETTE[i % len(PALETTE)]}" rx="3"/>')
        parts.append(f'<text x="{left + length + 4:.1f}" y="{y + 14}" font-size="12">{_fmt(value, 2)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(series: dict[str, list[float]], *, title: str, lo: float, hi: float, bins: int = 20,
                  width: int = 420, height: int = 190) -> str:
    """Overlaid step histograms (one line per series) of values in [lo, hi]."""
    left, bottom, top = 34, 24, 10
    edges = np.linspace(lo, hi, bins + 1)
    counts = {name: np.histogram(np.clip(vals, lo, hi), bins=edges)[0] for name, vals in series.items() if vals}
    peak = max([int(c.max()) for c in counts.values()] + [1])
    plot_w, plot_h = width - left - 10, height - bottom - top
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_esc(title)}">'),
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
             f'<text x="{left}" y="{height - 6}" font-size="11">{lo:g}</text>',
             f'<text x="{left + plot_w}" y="{height - 6}" font-size="11" text-anchor="end">{hi:g}</text>',
             f'<text x="{left - 4}" y="{top + 8}" font-size="11" text-anchor="end">{peak}</text>']
    for i, (name, c) in enumerate(counts.items()):
        color = PALETTE[i % len(PALETTE)]
        points = []
        for b, value in enumerate(c):
            x0 = left + plot_w * b / bins
            x1 = left + plot_w * (b + 1) / bins
            y = top + plot_h - plot_h * value / peak
            points += [f"{x0:.1f},{y:.1f}", f"{x1:.1f},{y:.1f}"]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{" ".join(points)}"/>')
        parts.append(f'<text x="{left + plot_w - 4}" y="{top + 12 + 13 * i}" font-size="11" fill="{color}" '
                     f'text-anchor="end">{_esc(name[:24])}</text>')
    parts.append("</svg>")
    return "".join(parts)


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


def _card_html(index: int, row: dict, thumb: str | None, overlay: str | None) -> str:
    from ..metrics import element_category

    align = row.get("alignment")
    structure = row.get("structure")
    reference = row.get("reference") or {}
    element_probs = (align or {}).get("elements") or {}
    data = {
        "index": index,
        "generator": row.get("generator") or "(unknown)",
        "alignment": "" if not align or align["overall"] is None else f'{align["overall"]:.6f}',
        "structure": "" if not structure or structure["score"] is None else f'{structure["score"]:.6f}',
        "regions": len(structure["regions"]) if structure else 0,
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
    if thumb:
        parts.append(f'<img src="{_esc(thumb)}" alt="{_esc(row["id"])}" loading="lazy">')
        if overlay:
            parts.append(f'<img class="overlay" src="{_esc(overlay)}" alt="distortion heatmap">')
    else:
        parts.append("<span>image not available</span>")
    parts.append('</div><div class="body">')
    parts.append(f'<div class="id">{_esc(row["id"])} · {_esc(data["generator"])}</div>')
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
                      + f' · {len(structure["regions"])} region(s)</span>')
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
                         f'<span>{_esc(key)}</span>'
                         f'<span class="p">{_fmt(None if p is None else 100 * p, 0)}%{truth_text}</span></li>')
        parts.append("</ul>")
    parts.append("</div></article>")
    return "".join(parts)


def build_report(
    results: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    title: str = "EvalMuse report",
    max_cards: int = 1000,
    thumb_size: int = 256,
    overwrite: bool = True,
    progress: bool = True,
    generator_map=None,
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

    Returns: the path of ``index.html``.

    Example::

        from evalmuse_models.report import build_report
        build_report("results.jsonl", "report/")   # then open report/index.html
    """
    from tqdm.auto import tqdm

    from ..scoring import read_results

    results = Path(results)
    claim_output_directory(out_dir, "report", inputs=[results], overwrite=overwrite, option="the report folder (--out)")
    rows = read_results(results)
    if not rows:
        raise UserInputError(f"{results} has no rows; nothing to report")
    if generator_map is not None and not apply_generator_map(rows, generator_map):
        raise UserInputError(
            f"no image of {results} is in the generator map (matched on the row ids, e.g. {rows[0]['id']!r}); "
            "is it the map of this input?"
        )
    has_align = any("alignment" in r for r in rows)
    has_structure = any("structure" in r for r in rows)
    has_ref = any((r.get("reference") or {}).get("overall") is not None for r in rows)
    table = generator_table(rows)
    ok = [r for r in rows if r.get("status") == "ok"]

    summary = [("images", str(len(rows))), ("scored", str(len(ok))), ("errors", str(len(rows) - len(ok))),
               ("generators", str(len(table)))]
    if has_align:
        summary.append(("mean alignment", _fmt(_mean([r["alignment"]["overall"] for r in ok if "alignment" in r]), 2)))
    if has_structure:
        summary.append(("mean structure", _fmt(_mean([r["structure"]["score"] for r in ok if "structure" in r]), 2)))
    body = ['<section id="summary"><div class="summary">']
    body += [f'<div class="stat"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>' for k, v in summary]
    body.append("</div></section>")

    body.append('<section id="leaderboard-section"><h2>Leaderboard by generator</h2>')
    body.append(_leaderboard_html(table, has_align, has_structure, has_ref))
    body.append('<div class="plots">')
    labels = [r["generator"] for r in table]
    if has_align:
        body.append('<div class="plot"><h3>Mean alignment per generator</h3>'
                    + svg_bars(labels, [r["alignment"] for r in table], title="mean alignment", vmin=1, vmax=5) + "</div>")
    if has_structure:
        body.append('<div class="plot"><h3>Mean structure score per generator</h3>'
                    + svg_bars(labels, [r["structure"] for r in table], title="mean structure", vmin=1, vmax=5) + "</div>")
    body.append("</div></section>")
    categories = category_table(rows) if has_align else []
    if categories:
        body.append('<section id="categories-section"><h2>Elements by category</h2>')
        body.append(_category_html(categories))
        body.append("</section>")

    body.append('<section id="distributions"><h2>Score distributions</h2><div class="plots">')
    by_gen = defaultdict(list)
    by_gen_structure = defaultdict(list)
    for r in ok:
        if "alignment" in r and r["alignment"]["overall"] is not None:
            by_gen[r.get("generator") or "(unknown)"].append(r["alignment"]["overall"])
        if "structure" in r and r["structure"]["score"] is not None:
            by_gen_structure[r.get("generator") or "(unknown)"].append(r["structure"]["score"])
    if has_align:
        body.append('<div class="plot"><h3>Alignment score (1–5)</h3>'
                    + svg_histogram(dict(by_gen), title="alignment distribution", lo=1, hi=5) + "</div>")
        elements = [p for r in ok if "alignment" in r for p in r["alignment"]["elements"].values() if p is not None]
        if elements:
            body.append('<div class="plot"><h3>Element probabilities</h3>'
                        + svg_histogram({"all elements": elements}, title="element distribution", lo=0, hi=1) + "</div>")
    if has_structure:
        body.append('<div class="plot"><h3>Structure score (1–5)</h3>'
                    + svg_histogram(dict(by_gen_structure), title="structure distribution", lo=1, hi=5) + "</div>")
    body.append("</div></section>")

    sort_options = [("index-asc", "file order")]
    if has_align:
        sort_options += [("alignment-asc", "alignment ↑ (worst first)"), ("alignment-desc", "alignment ↓"),
                         ("missing-desc", "most missing elements")]
    if has_structure:
        sort_options += [("structure-asc", "structure ↑ (worst first)"), ("structure-desc", "structure ↓"),
                         ("regions-desc", "most distortion regions")]
    shown_rows = rows[:max_cards]
    body.append('<section id="images"><h2>Images</h2><div class="controls">')
    body.append('<label>Sort <select id="sort">' + "".join(
        f'<option value="{v}">{_esc(t)}</option>' for v, t in sort_options) + "</select></label>")
    body.append('<label>Generator <select id="generator"><option value="">all</option>' + "".join(
        f'<option value="{_esc(g)}">{_esc(g)}</option>' for g in sorted(labels)) + "</select></label>")
    if categories:
        body.append('<label>Category <select id="category"><option value="">all</option>' + "".join(
            f'<option value="{_esc(c)}">{_esc(c)}</option>' for c in sorted(r["category"] for r in categories))
            + "</select></label>")
    body.append('<label>Show <select id="only"><option value="">all</option>'
                '<option value="missing">missing elements</option><option value="distorted">with distortions</option>'
                '<option value="errors">errors</option></select></label>')
    body.append('<input type="search" id="query" placeholder="search prompt or file">')
    body.append('<label><input type="checkbox" id="heat" checked> heatmaps</label><span id="count"></span></div>')
    if len(rows) > max_cards:
        body.append(f'<p class="note">Showing cards for the first {max_cards} of {len(rows)} images '
                    "(the leaderboard and plots use all of them).</p>")
    body.append('<div class="cards" id="cards">')

    resolver = _ImageResolver()
    out_dir = Path(out_dir)
    with owned_directory(out_dir, "report", inputs=[results], overwrite=overwrite, option="the report folder (--out)") as tmp:
        (tmp / "images").mkdir()
        for index, row in enumerate(tqdm(shown_rows, desc="report", unit="img", disable=not progress)):
            thumb = overlay = None
            if row.get("status") == "ok":
                try:
                    image = resolver.open(row)
                except Exception:  # noqa: BLE001 - a moved image only loses its thumbnail
                    image = None
                if image is not None:
                    image.thumbnail((thumb_size, thumb_size))
                    thumb = f"images/{index:05d}.jpg"
                    image.save(tmp / thumb, quality=85)
                    if "structure" in row:
                        overlay = f"images/{index:05d}_heat.png"
                        heat_overlay(row["structure"], image.size).save(tmp / overlay, optimize=True)
            body.append(_card_html(index, row, thumb, overlay))
        body.append("</div></section>")
        page = Template((TEMPLATES / "report.html").read_text(encoding="utf-8")).substitute(
            title=_esc(title),
            subtitle=_esc(f"{len(rows)} images · {len(table)} generators · models: "
                          + ", ".join(sorted({str(v) for r in rows for k, v in (r.get("meta") or {}).items()
                                              if k in ("align_model", "structure_model") and v}))),
            version=__version__,
            results_name=_esc(results.name),
            css=(TEMPLATES / "report.css").read_text(encoding="utf-8"),
            js=(TEMPLATES / "report.js").read_text(encoding="utf-8"),
            body="\n".join(body),
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / "leaderboard.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
        if categories:
            (tmp / "categories.json").write_text(json.dumps(categories, indent=1), encoding="utf-8")
    return out_dir / "index.html"
