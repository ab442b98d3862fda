"""How much SAM shrank the structure truth masks: the text summary and the report section of the
``refine_report.json`` that ``evalmuse refine-masks`` writes (see :mod:`evalmuse_models.data.refine`).

Example::

    from evalmuse_models.analysis.refine import format_refine_report, read_refine_report

    report = read_refine_report("data/evalmuse-refined/refine_report.json")
    print(format_refine_report(report))

``evalmuse report --analysis data/evalmuse-refined/refine_report.json`` draws it (:func:`refine_section`).
"""

from __future__ import annotations

import os
from typing import Any

from ..utils import UserInputError

__all__ = ["REPORT_KEYS", "format_refine_report", "read_refine_report", "refine_section"]

#: The keys a ``refine_report.json`` holds (besides ``"analysis": "refine"``).
REPORT_KEYS = ("settings", "summary", "images")


def read_refine_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``refine_report.json``."""
    from ..utils.jsonio import read_json_file

    data = read_json_file(path)
    if not isinstance(data, dict) or data.get("analysis") != "refine":
        raise UserInputError(f"{path}: not a refine-masks report (no \"analysis\": \"refine\"); it is the "
                             "refine_report.json that `evalmuse refine-masks` writes in its output folder")
    missing = [key for key in REPORT_KEYS if key not in data]
    if missing:
        raise UserInputError(f"{path}: a refine-masks report without {', '.join(missing)}; run refine-masks again")
    return data


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_refine_report(report: dict[str, Any]) -> str:
    """The plain-text summary of a refine report (what ``evalmuse refine-masks`` prints)."""
    settings = report["settings"]
    lines = [f"SAM {settings['model']}; mask = pixels of at least {settings['mask_min_votes']} annotator(s)"]
    head = f"{'split':<12}{'images':>8}{'marked':>8}{'shapes':>8}{'whole':>7}{'area before':>13}{'area after':>12}"
    head += f"{'shrink':>9}{'median':>9}{'p10-p90':>17}"
    lines.append(head)
    splits = dict(report["summary"].get("splits") or {})
    splits["all"] = report["summary"]
    for name, s in splits.items():
        q = s["quantiles"]
        spread = "-" if q["p10"] is None else f"{_pct(q['p10'])}-{_pct(q['p90'])}"
        lines.append(f"{name:<12}{s['num_images']:>8}{s['images_with_regions']:>8}{s['num_shapes']:>8}"
                     f"{s['shapes_kept_whole']:>7}{s['area_before']:>13}{s['area_after']:>12}"
                     f"{_pct(s['pooled_shrink']):>9}{_pct(s['median_shrink']):>9}{spread:>17}")
    total = report["summary"]
    lines.append(f"shrink: share of the truth-mask area (original size) SAM removed, pooled over the images; median "
                 f"and p10-p90 over the {total['images_with_regions']} images with a marked region. "
                 f"{total['images_unchanged']} image(s) unchanged, {total['images_emptied']} emptied; "
                 f"{total['shapes_kept_whole']} of {total['num_shapes']} shapes kept whole (SAM found nothing in them)")
    return "\n".join(lines)


def refine_section(data: dict[str, Any], uid: str) -> str:
    """The HTML report section of a ``refine_report.json``: the summary per split and the histogram of
    the per-image shrink (one line per split)."""
    from ..report.builder import _esc, _fmt, legend_html, svg_histogram

    settings, summary = data["settings"], data["summary"]
    splits = dict(summary.get("splits") or {})
    head = ("<th>Split</th><th>Images</th><th>With regions</th><th>Shapes</th><th>Kept whole</th>"
            "<th>Area before</th><th>Area after</th><th>Pooled shrink</th><th>Median shrink</th>")
    rows = []
    for name, s in [*splits.items(), ("all", summary)]:
        cells = [name, s["num_images"], s["images_with_regions"], s["num_shapes"], s["shapes_kept_whole"],
                 s["area_before"], s["area_after"]]
        row = "".join(f'<td data-value="{_esc(v)}">{_esc(v)}</td>' for v in cells)
        for key in ("pooled_shrink", "median_shrink"):
            value = s[key]
            row += f'<td data-value="{"" if value is None else value}">{_fmt(value, 3)}</td>'
        rows.append(f"<tr>{row}</tr>")
    series: dict[str, list[float]] = {name: [] for name in splits}
    for entry in data["images"]:
        if entry.get("shrink") is not None:
            series.setdefault(entry.get("split", "all"), []).append(float(entry["shrink"]))
    shown = [name for name, values in series.items() if values]
    plot = ('<p class="note">No image has a marked region: nothing to plot.</p>' if not shown else
            svg_histogram({name: series[name] for name in shown}, title="shrink of the truth mask per image", lo=0.0,
                          hi=1.0, x_title="shrink (share of the mask area SAM removed)") + legend_html(shown))
    return (f'<section class="analysis" id="{_esc(uid)}"><h2>Box annotations vs refined masks</h2>'
            f'<p class="note">Each annotated shape\'s bounding box prompted SAM ({_esc(settings["model"])}); the '
            "refined shape is SAM's mask inside the shape as drawn, and the truth mask (pixels of at least "
            f'{_esc(settings["mask_min_votes"])} annotator(s)) and heatmap were made again from the refined shapes. '
            "Shrink: the share of an image's truth-mask area (original size) that refinement removed.</p>"
            f'<table class="leaderboard" id="{_esc(uid)}-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            f'<div class="plots"><div class="plot"><h3>Shrink per image</h3>{plot}</div></div></section>')
