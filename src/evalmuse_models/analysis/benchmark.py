"""Cross-benchmark evaluation: how well an alignment scorer agrees with the human scores of other benchmarks.

:func:`evaluate_benchmark` (what ``evalmuse benchmark`` runs) reads a benchmark with
:func:`~evalmuse_models.data.benchmarks.load_benchmark`, scores it with the scoring engine
(:func:`~evalmuse_models.scoring.score`: batched, resumable results JSONL) and hands the results to
:func:`benchmark_correlations`, which reports for each read-out of the scores (the four FGA-BLIP2
variants of the EvalMuse paper):

* ``os``: the overall alignment score;
* ``es_avg``: the mean of the image's element scores (images whose prompt has elements);
* ``os+es_avg``: their sum;
* ``os_without_var``: the overall score of a second checkpoint trained without the variance weighting
  of the loss (``--align-without-var``),

SRCC, PLCC (after the 4-parameter logistic fit, :func:`~evalmuse_models.metrics._stats.plcc_logistic`)
and KRCC (Kendall's tau-b) against the per-image human score, over all images and per generator, and a
per-generator table (mean of each variant, mean human score, mean element score per category). A
benchmark without human scores (``evalmuse-prompts``, ``evalscope``) gets the table alone: a ranking of
its generators. :func:`benchmark_section` draws the result as a section of the HTML report.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import UserInputError

__all__ = [
    "METRICS",
    "VARIANTS",
    "VARIANT_LABELS",
    "benchmark_correlations",
    "benchmark_section",
    "benchmark_source",
    "correlations",
    "evaluate_benchmark",
    "format_benchmark",
    "without_var_path",
]

#: The read-outs of the scores that are correlated with the human scores, in report order.
VARIANTS = ("os", "es_avg", "os+es_avg", "os_without_var")
VARIANT_LABELS = {
    "os": "os (overall score)",
    "es_avg": "es_avg (mean element score)",
    "os+es_avg": "os + es_avg",
    "os_without_var": "os, w/o var (second checkpoint)",
}
#: The correlations of each variant.
METRICS = ("srcc", "plcc", "krcc")
METRIC_LABELS = {"srcc": "SRCC", "plcc": "PLCC", "krcc": "KRCC"}


# ---------------------------------------------------------------------------------------------
# Running a benchmark


def without_var_path(out: str | os.PathLike) -> Path:
    """Where the scores of the ``--align-without-var`` checkpoint go: ``results.jsonl`` -> ``results.without_var.jsonl``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.without_var{out.suffix or '.jsonl'}")


def benchmark_source(dataset, benchmark: str, root: str | os.PathLike | None = None):
    """A loaded benchmark (:func:`~evalmuse_models.data.benchmarks.load_benchmark`) as the scoring engine's input:
    the records of the ``alignment`` config's reader (id = ``img_path``, elements, generator, the human score as
    the row's ``reference.overall``), each pointing at its image file and marked with the benchmark's name."""
    import datasets

    from ..scoring.inputs import ScoringSource, records_from_dataset

    records = records_from_dataset(dataset, config="alignment")
    images = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    for record, image in zip(records, images):
        record.path, record.index = image["image"]["path"], None
        record.extra = {**record.extra, "benchmark": benchmark}
    return ScoringSource(records, description={"kind": "benchmark", "benchmark": benchmark,
                                               "path": None if root is None else str(root)})


def loss_weighting(spec: Any) -> str | None:
    """The ``loss_weighting`` an alignment checkpoint's config records (``"none"``, ``"var"``, ``"exp_var"``), or
    ``None`` when it records none (a Hub id is not looked up; a model of another kind has none)."""
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec) / "config.json"
        if not path.is_file():
            return None
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return config.get("loss_weighting") if config.get("model_type") == "evalmuse_align" else None
    return getattr(getattr(spec, "config", None), "loss_weighting", None)


def _check_results_benchmark(out: Path, benchmark: str) -> None:
    """Refuse to resume a results file written for another benchmark."""
    from ..scoring import read_results

    for row in read_results(out, missing_ok=True)[:1]:
        if row.get("benchmark") != benchmark:
            raise UserInputError(f"{out} holds the scores of {row.get('benchmark') or 'another input'!r}, not of the "
                                 f"{benchmark} benchmark; choose another --out or pass --overwrite")


def evaluate_benchmark(
    name: str,
    root: str | os.PathLike,
    *,
    align: Any,
    out: str | os.PathLike,
    version: str | int | None = None,
    elements: str | os.PathLike | None = None,
    generators: Sequence[str] | None = None,
    align_without_var: Any = None,
    plcc_direction: str = "standard",
    batch_size: int = 8,
    num_workers: int | None = None,
    device: str | None = "auto",
    dtype: str | None = "auto",
    limit: int | None = None,
    overwrite: bool = False,
    retry_errors: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score benchmark ``name`` at ``root`` with the alignment scorer ``align`` and correlate with its human scores.

    Scores go to ``out`` (a results JSONL of :func:`~evalmuse_models.scoring.score`: rerunning resumes; the
    scores of ``align_without_var`` go to :func:`without_var_path` of it), then the whole file is read back, so
    a resumed run returns the same result as an uninterrupted one.

    Args:
        name, root, version, elements, generators: what to load (:func:`~evalmuse_models.data.benchmarks.load_benchmark`).
        align: the alignment scorer (a folder, Hub id, ``mllm:...``, ``module:factory`` or an object, as for
            ``score``).
        align_without_var: optionally a second FGA-BLIP2 checkpoint trained without the variance weighting
            (``loss_weighting="none"``); its overall score is the ``os_without_var`` variant.
        plcc_direction: ``"standard"`` (fit the scores to the human scores, the VQEG protocol) or ``"official"``
            (the EvalMuse alignment track's script: fit the human scores to the scores).
        batch_size, num_workers, device, dtype, limit, overwrite, retry_errors, progress: as for ``score``.

    Returns:
        :func:`benchmark_correlations` of the results.
    """
    from ..data.benchmarks import load_benchmark
    from ..scoring import read_results, score

    trained = loss_weighting(align_without_var) if align_without_var is not None else None
    if trained not in (None, "none"):
        raise UserInputError(f"--align-without-var {align_without_var}: its config says it was trained with "
                             f"loss_weighting={trained!r}; give a checkpoint trained without variance weighting "
                             "(loss_weighting='none')")
    dataset = load_benchmark(name, root, version=version, elements=elements, generators=generators)
    source = benchmark_source(dataset, name, root)
    runs = [(out, align)] + ([(without_var_path(out), align_without_var)] if align_without_var is not None else [])
    for path, model in runs:
        if not overwrite:
            _check_results_benchmark(Path(path), name)
        score(source, out=path, align=model, batch_size=batch_size, num_workers=num_workers, device=device,
              dtype=dtype, limit=limit, overwrite=overwrite, retry_errors=retry_errors, progress=progress)
    rows = read_results(out)
    without = read_results(without_var_path(out)) if align_without_var is not None else None
    return benchmark_correlations(
        rows, benchmark=name, version=version, without_var_rows=without, plcc_direction=plcc_direction,
        variance_weighting={"align_model": loss_weighting(align),
                            **({"align_model_without_var": trained} if align_without_var is not None else {})},
    )


# ---------------------------------------------------------------------------------------------
# Correlations


def correlations(predictions: Sequence[float], references: Sequence[float], *,
                 plcc_direction: str = "standard") -> dict[str, Any]:
    """SRCC, PLCC (logistic fit) and KRCC (tau-b) of ``predictions`` against ``references``.

    Returns ``{"n_images", "srcc", "plcc", "krcc"}`` (``"plcc_fallback": True`` when the logistic fit failed and
    PLCC is the plain Pearson correlation); where they are undefined (fewer than 3 images, constant scores) the
    three are ``None`` and ``"undefined"`` says why.
    """
    from ..metrics._stats import check_correlatable, kendall, plcc_logistic, spearman

    if plcc_direction not in ("official", "standard"):
        raise UserInputError(f"plcc_direction must be 'official' or 'standard', got {plcc_direction!r}")
    pred = np.asarray(predictions, dtype=np.float64)
    ref = np.asarray(references, dtype=np.float64)
    entry: dict[str, Any] = {"n_images": int(pred.size), "srcc": None, "plcc": None, "krcc": None}
    try:
        check_correlatable(pred, ref)
        plcc, fallback = plcc_logistic(pred, ref, plcc_direction)
    except UserInputError as error:
        entry["undefined"] = str(error)
        return entry
    entry.update(srcc=spearman(pred, ref), plcc=plcc, krcc=kendall(pred, ref))
    if fallback:
        entry["plcc_fallback"] = True
    return entry


def _row_variants(row: dict) -> dict[str, float]:
    alignment = row.get("alignment") or {}
    values: dict[str, float] = {}
    overall = alignment.get("overall")
    if overall is not None:
        values["os"] = float(overall)
    element_scores = [v for v in (alignment.get("elements") or {}).values() if v is not None]
    if element_scores:
        values["es_avg"] = float(np.mean(element_scores))
        if "os" in values:
            values["os+es_avg"] = values["os"] + values["es_avg"]
    return values


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def benchmark_correlations(
    rows: Sequence[dict],
    *,
    benchmark: str,
    version: str | int | None = None,
    without_var_rows: Sequence[dict] | None = None,
    plcc_direction: str = "standard",
    variance_weighting: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """The cross-benchmark result of a results file of a benchmark (rows of ``evalmuse score``).

    Args:
        rows: the results rows; those with ``status`` ``"ok"`` count, their ``reference.overall`` is the human score.
        benchmark, version: recorded in the result.
        without_var_rows: the rows of the checkpoint trained without variance weighting (matched by ``id``).
        plcc_direction: see :func:`correlations`.
        variance_weighting: the ``loss_weighting`` of each checkpoint, as their configs record it.

    Returns:
        A JSON-ready dict (schema in ``docs/analysis.md``): ``analysis`` (``"benchmark"``), ``benchmark``,
        ``version``, ``align_model``, ``align_model_without_var``, ``variance_weighting``, ``plcc_direction``,
        ``labelled`` (the rows carry human scores), ``num_images``, ``errors``, ``variants`` (those present),
        ``variant_labels``, ``correlations`` (``{variant: correlations}``, labelled benchmarks only),
        ``generators`` (``{generator: {"n_images", "errors", "human", "means": {variant: mean},
        "correlations", "categories": {category: mean element score}}}``, best mean ``os`` first),
        ``categories`` (``{category: {"elements", "mean"}}``) and ``unmatched_elements``.
    """
    from ..metrics import element_category

    if not rows:
        raise UserInputError("the results file has no rows; nothing to correlate")
    ok = [row for row in rows if row.get("status") == "ok" and "alignment" in row]
    without = {row["id"]: row for row in without_var_rows or () if row.get("status") == "ok" and "alignment" in row}
    values: list[dict[str, float]] = []
    for row in ok:
        entry = _row_variants(row)
        other = without.get(row["id"])
        if other is not None and (other.get("alignment") or {}).get("overall") is not None:
            entry["os_without_var"] = float(other["alignment"]["overall"])
        values.append(entry)
    human = [(row.get("reference") or {}).get("overall") for row in ok]
    labelled = any(h is not None for h in human)
    present = [v for v in VARIANTS if any(v in entry for entry in values)]

    def correlate(indices: Sequence[int]) -> dict[str, dict]:
        out = {}
        for variant in present:
            pairs = [(values[i][variant], human[i]) for i in indices if variant in values[i] and human[i] is not None]
            out[variant] = correlations([p for p, _ in pairs], [h for _, h in pairs], plcc_direction=plcc_direction)
        return out

    by_generator: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(ok):
        by_generator[row.get("generator") or ""].append(index)
    errors_by_generator: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.get("status") != "ok":
            errors_by_generator[row.get("generator") or ""] += 1
    categories: dict[str, list[float]] = defaultdict(list)
    generators: dict[str, dict[str, Any]] = {}
    for generator in sorted(set(by_generator) | set(errors_by_generator)):
        indices = by_generator.get(generator, [])
        per_category: dict[str, list[float]] = defaultdict(list)
        for i in indices:
            for key, value in (ok[i]["alignment"].get("elements") or {}).items():
                if value is not None:
                    per_category[element_category(key)].append(float(value))
        for category, scores in per_category.items():
            categories[category].extend(scores)
        entry: dict[str, Any] = {
            "n_images": len(indices) + errors_by_generator.get(generator, 0),
            "errors": errors_by_generator.get(generator, 0),
            "human": _mean([human[i] for i in indices if human[i] is not None]),
            "means": {v: _mean([values[i][v] for i in indices if v in values[i]]) for v in present},
            "categories": {c: _mean(s) for c, s in sorted(per_category.items())},
        }
        if labelled:
            entry["correlations"] = correlate(indices)
        generators[generator] = entry
    order = sorted(generators, key=lambda g: (-(generators[g]["means"].get("os") or -math.inf), g))
    meta = (ok[0] if ok else rows[0]).get("meta") or {}
    result: dict[str, Any] = {
        "analysis": "benchmark",
        "benchmark": benchmark,
        "version": None if version is None else str(version),
        "align_model": meta.get("align_model"),
        "align_model_without_var": ((next(iter(without.values())).get("meta") or {}).get("align_model")
                                    if without else None),
        "variance_weighting": dict(variance_weighting or {}),
        "plcc_direction": plcc_direction,
        "labelled": labelled,
        "num_images": len(rows),
        "errors": len(rows) - len(ok),
        "variants": present,
        "variant_labels": {v: VARIANT_LABELS[v] for v in present},
        "generators": {g: generators[g] for g in order},
        "categories": {c: {"elements": len(s), "mean": _mean(s)} for c, s in sorted(categories.items())},
        "unmatched_elements": sum(len(row["alignment"].get("unmatched_elements") or []) for row in ok),
    }
    if labelled:
        result["correlations"] = correlate(range(len(ok)))
    return result


# ---------------------------------------------------------------------------------------------
# Output


def _cell(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def format_benchmark(result: dict[str, Any]) -> str:
    """The plain-text tables of a :func:`benchmark_correlations` result (what ``evalmuse benchmark`` prints)."""
    title = result["benchmark"] + (f" {result['version']}" if result.get("version") else "")
    lines = [f"{title}: {result['num_images']} images ({result['errors']} errors), scored by {result['align_model']}"]
    variants = result["variants"]
    if result["labelled"]:
        lines.append(f"correlation with the human scores (PLCC after the {result['plcc_direction']} logistic fit)")
        lines.append(f"{'variant':<34}{'images':>7}" + "".join(f"{METRIC_LABELS[m]:>8}" for m in METRICS))
        for variant in variants:
            entry = result["correlations"][variant]
            lines.append(f"{VARIANT_LABELS[variant]:<34}{entry['n_images']:>7}"
                         + "".join(_cell(entry[m]) for m in METRICS))
    width = max([9, *(len(g) for g in result["generators"])]) + 2
    lines += ["", "per generator" + (" (correlations of os)" if result["labelled"] else " (mean scores)")]
    head = f"{'generator':<{width}}{'images':>7}" + "".join(f"{'mean ' + v:>{max(10, len(v) + 6)}}" for v in variants)
    if result["labelled"]:
        head += f"{'human':>8}" + "".join(f"{METRIC_LABELS[m]:>8}" for m in METRICS)
    lines.append(head)
    for name, entry in result["generators"].items():
        line = f"{name or '(unknown)':<{width}}{entry['n_images']:>7}" + "".join(
            _cell(entry["means"].get(v), max(10, len(v) + 6)) for v in variants)
        if result["labelled"]:
            line += _cell(entry["human"]) + "".join(_cell(entry["correlations"]["os"][m]) for m in METRICS)
        lines.append(line)
    if result["categories"]:
        lines += ["", "mean element score per category: " + ", ".join(
            f"{c} {e['mean']:.3f} ({e['elements']})" for c, e in result["categories"].items())]
    notes = [f"{v}: {e['undefined']}" for v, e in (result.get("correlations") or {}).items() if "undefined" in e]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def benchmark_section(data: dict[str, Any], uid: str) -> str:
    """The HTML report section of an ``evalmuse benchmark --json`` result: the correlations of each variant as a
    table and a dot plot, the correlations of ``os`` per generator, and the per-generator means (for a benchmark
    without human scores, the ranking of its generators by mean ``os``)."""
    from ..report.builder import _esc, _fmt, legend_html, svg_bars, svg_intervals

    title = _esc(data["benchmark"] + (f" {data['version']}" if data.get("version") else ""))
    variants = data["variants"]
    generators = data["generators"]
    names = [g or "(unknown)" for g in generators]
    parts = [f'<section class="analysis" id="{_esc(uid)}"><h2>Cross-benchmark evaluation: {title}</h2>',
             f'<p class="note">{data["num_images"]} images ({data["errors"]} errors) scored by '
             f'{_esc(data.get("align_model"))}'
             + (f' and, for the variant without variance weighting, by {_esc(data["align_model_without_var"])}'
                if data.get("align_model_without_var") else "")
             + (f'; PLCC after the {_esc(data["plcc_direction"])} logistic fit.' if data["labelled"]
                else "; the benchmark has no human scores: its generators ranked by mean alignment.") + "</p>"]

    def number(value: float | None) -> str:
        return f'<td data-value="{"" if value is None else value}">{_fmt(value, 4)}</td>'

    if data["labelled"]:
        body = "".join(f'<tr><td data-value="{_esc(v)}">{_esc(VARIANT_LABELS.get(v, v))}</td>'
                       f'<td data-value="{data["correlations"][v]["n_images"]}">{data["correlations"][v]["n_images"]}'
                       "</td>" + "".join(number(data["correlations"][v][m]) for m in METRICS) + "</tr>"
                       for v in variants)
        parts.append(f'<table class="leaderboard" id="{_esc(uid)}-variants"><thead><tr><th>Variant</th><th>Images</th>'
                     + "".join(f"<th>{METRIC_LABELS[m]}</th>" for m in METRICS) + f"</tr></thead><tbody>{body}</tbody>"
                     "</table>")
        series = {VARIANT_LABELS.get(v, v): [(data["correlations"][v][m], None, None)
                                             if data["correlations"][v][m] is not None else None for m in METRICS]
                  for v in variants}
        per_generator = {METRIC_LABELS[m]: [(e["correlations"]["os"][m], None, None)
                                            if e["correlations"]["os"][m] is not None else None
                                            for e in generators.values()] for m in METRICS}
        found = [v for s in [*series.values(), *per_generator.values()] for e in s if e for v in e[:1]]
        low = min([0.0, *found])
        parts.append('<div class="plots"><div class="plot"><h3>Agreement with the human scores</h3>'
                     + svg_intervals([METRIC_LABELS[m] for m in METRICS], series, title="correlation of each variant",
                                     vmin=math.floor(low * 10) / 10, vmax=1.0, x_title="correlation (higher is better)",
                                     y_title="correlation", zero_line=low < 0)
                     + legend_html(list(series)) + "</div>"
                     + '<div class="plot"><h3>Per generator (os)</h3>'
                     + svg_intervals(names, per_generator, title="correlation of os within each generator",
                                     vmin=math.floor(low * 10) / 10, vmax=1.0, x_title="correlation (higher is better)",
                                     y_title="generator", zero_line=low < 0)
                     + legend_html(list(per_generator)) + "</div></div>")
    else:
        means = [e["means"].get("os") for e in generators.values()]
        parts.append('<div class="plots"><div class="plot"><h3>Mean alignment per generator</h3>'
                     + svg_bars(names, means, title="mean overall alignment score per generator", vmin=1.0, vmax=5.0,
                                x_title="mean os (1-5)")
                     + "</div></div>")
    head = "<th>Generator</th><th>Images</th>" + "".join(f"<th>mean {_esc(v)}</th>" for v in variants)
    if data["labelled"]:
        head += "<th>mean human</th>" + "".join(f"<th>{METRIC_LABELS[m]} (os)</th>" for m in METRICS)
    body = []
    for name, entry in zip(names, generators.values()):
        cells = (f'<td class="name" data-value="{_esc(name)}">{_esc(name)}</td>'
                 f'<td data-value="{entry["n_images"]}">{entry["n_images"]}</td>'
                 + "".join(number(entry["means"].get(v)) for v in variants))
        if data["labelled"]:
            cells += number(entry["human"]) + "".join(number(entry["correlations"]["os"][m]) for m in METRICS)
        body.append(f"<tr>{cells}</tr>")
    parts.append(f'<h3>Per generator</h3><table class="leaderboard numeric-rows" id="{_esc(uid)}-generators"><thead><tr>'
                 f'{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
    categories = list(data["categories"])
    if categories:
        rows = "".join(f'<tr><td class="name" data-value="{_esc(name)}">{_esc(name)}</td>'
                       + "".join(number(entry["categories"].get(c)) for c in categories) + "</tr>"
                       for name, entry in zip(names, generators.values()))
        parts.append(f'<h3>Mean element score per category</h3><table class="leaderboard numeric-rows" '
                     f'id="{_esc(uid)}-categories"><thead><tr><th>Generator</th>'
                     + "".join(f"<th>{_esc(c)}</th>" for c in categories) + f"</tr></thead><tbody>{rows}</tbody></table>"
                     '<p class="note">The mean probability that an element of the category is in the image, over the '
                     "generator's images (the EvalMuse leaderboard's per-skill columns).</p>")
    parts.append("</section>")
    return "".join(parts)
