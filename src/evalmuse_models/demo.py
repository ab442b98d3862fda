"""The end-to-end demo on the embedded synthetic data (``evalmuse demo``, ``make demo``).

With no network and no weights it:

1. writes the synthetic EvalMuse-40K and EvalMuse-Structure releases (exact raw formats);
2. prepares the Hub-ready dataset folder (``alignment`` and ``structure`` configs);
3. trains the tiny alignment model (FGA-BLIP2 recipe) and the tiny structure model for a small
   step budget on CPU (or the GPU with ``device="cuda"``);
4. scores the held-out test splits with ``evalmuse score``'s engine;
5. computes both official NTIRE 2025 scores next to a chance baseline (random predictions,
   averaged over several draws);
6. writes the HTML report and ``summary.json``.

Every step is seeded: the same ``seed`` gives the same numbers on the same machine. Each step
reuses its output when it is already complete, so an interrupted demo resumes. Every setting and the
output folder are checked before any work (:func:`check_demo_arguments`): a bad one is a one-line
:class:`~evalmuse_models.utils.UserInputError` and nothing is written.

Example::

    from evalmuse_models.demo import run_demo
    summary = run_demo("demo_output", seed=0)
    print(summary["alignment"]["trained"]["main_score"], summary["alignment"]["chance"]["main_score"])
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .utils import UserInputError, atomic_write_text

#: The smallest synthetic releases the demo can score: each of the train, validation and test splits
#: needs a prompt, and the structure validation and test splits (15 % of the images each, see
#: :func:`evalmuse_models.data.synthetic.write_structure_release`) the 3 images the correlations need.
MIN_PROMPTS = 3
MIN_STRUCTURE_IMAGES = 17
#: The options of ``evalmuse demo`` for the settings it exposes (the others are named as DemoConfig fields).
CLI_OPTIONS = {
    "seed": "--seed", "device": "--device", "num_prompts": "--num-prompts",
    "num_structure_images": "--num-structure-images", "align_steps": "--align-steps",
    "structure_epochs": "--structure-epochs",
}


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (defaults: about 3 minutes on 2 idle CPU cores)."""

    seed: int = 0
    device: str = "auto"
    num_prompts: int = 600
    num_structure_images: int = 400
    align_steps: int = 1000
    align_learning_rate: float = 2e-3
    align_batch_size: int = 14
    align_freeze_vision: bool = False
    structure_epochs: int = 10
    structure_batch_size: int = 8
    time_budget_s: float | None = 150.0
    score_batch_size: int = 16
    num_workers: int = 0
    chance_draws: int = 20
    gap_resamples: int = 200
    report: bool = True
    progress: bool = True


def _setting(name: str) -> str:
    return CLI_OPTIONS.get(name, f"DemoConfig.{name}")


def _check_config(config: DemoConfig) -> None:
    """Every setting of ``config`` has the type and range the demo needs; raises :class:`UserInputError`."""

    def refuse(name: str, expected: str) -> UserInputError:
        return UserInputError(f"{_setting(name)} must be {expected}, got {getattr(config, name)!r}")

    minimum = {"num_prompts": MIN_PROMPTS, "num_structure_images": MIN_STRUCTURE_IMAGES, "align_steps": 1,
               "align_batch_size": 1, "structure_epochs": 1, "structure_batch_size": 1, "score_batch_size": 1,
               "num_workers": 0, "chance_draws": 1, "gap_resamples": 0}
    why = {"num_prompts": " (a prompt each for the train, validation and test splits)",
           "num_structure_images": " (3 images each in the validation and test splits for the correlations)"}
    for field in fields(DemoConfig):
        name, value = field.name, getattr(config, field.name)
        if field.type == "bool" and not isinstance(value, bool):
            raise refuse(name, "true or false")
        if field.type == "int" and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise refuse(name, "an integer")
    for name, low in minimum.items():
        if getattr(config, name) < low:
            raise refuse(name, f"at least {low}{why.get(name, '')}")
    if not 0 <= config.seed < 2**32:
        raise refuse("seed", "an integer from 0 to 2**32 - 1")
    rate = config.align_learning_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and rate > 0):
        raise refuse("align_learning_rate", "a positive number")
    budget = config.time_budget_s
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not (math.isfinite(budget) and budget > 0)):
        raise refuse("time_budget_s", "a positive number of seconds or None")
    if not isinstance(config.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device):
        raise refuse("device", "auto, cpu, cuda or cuda:N")


def _check_out_dir(out_dir) -> Path:
    """``out_dir`` may be new, empty, or the folder of an earlier demo run (``.steps/recipe``, the demo's
    first file); returns it absolute. Anything else (a file, a folder of other things, the current
    directory) raises :class:`UserInputError`: the demo writes ``raw/``, ``dataset/``, ``runs/``... there."""
    out = Path(os.path.abspath(out_dir))
    if out.is_dir() and (out / ".steps" / "recipe").is_file():
        return out
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out_dir} is a file; nothing was changed: choose a new folder for the demo")
    if out.is_dir() and any(out.iterdir()):
        raise UserInputError(
            f"--out {out_dir} holds other files and is not the folder of an earlier demo run (no .steps/recipe); "
            "nothing was changed: choose a new or empty folder for the demo"
        )
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserInputError(f"--out {out_dir}: {ancestor} is a file, not a folder; choose another place for the demo")
    return out


def check_demo_arguments(out_dir, config: DemoConfig) -> Path:
    """Check every setting of ``config`` and the output folder before any work (nothing is written):
    raises :class:`UserInputError` naming the option, what it must be and what it was. Returns the
    output folder made absolute. ``device="cuda"`` also needs a CUDA GPU here."""
    _check_config(config)
    out = _check_out_dir(out_dir)
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserInputError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
        index = int(config.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserInputError(f"--device {config.device}: there are only {torch.cuda.device_count()} CUDA devices")
    return out


def _log(message: str) -> None:
    print(f"[evalmuse demo] {message}", flush=True)


def _done(marker: Path) -> bool:
    return marker.is_file()


def _mark(marker: Path, payload: Any = None) -> None:
    atomic_write_text(marker, json.dumps(payload if payload is not None else {}, default=str))


def _configure_device(device: str) -> str:
    import torch

    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
        return "cpu"
    if device.startswith("cuda"):  # checked by check_demo_arguments
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def chance_alignment(references: list[float], reference_elements: list[dict], draws: int, seed: int) -> dict:
    """Official Main Score of uniformly random predictions (overall in [1, 5], elements in [0, 1]), mean over draws."""
    from .metrics import alignment_main_score

    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(draws):
        pred = rng.uniform(1, 5, size=len(references)).tolist()
        pred_elements = [{k: float(rng.uniform()) for k in ref} for ref in reference_elements]
        scores.append(alignment_main_score(pred, references, pred_elements, reference_elements))
    return {key: float(np.mean([s[key] for s in scores])) for key in ("srcc", "plcc", "acc", "main_score")}


def chance_structure(references: list[float], reference_masks: list[np.ndarray], draws: int, seed: int) -> dict:
    """Official Final Score of random predictions: a uniform score and one random box per image
    (a quarter of the image in area, anywhere), mean over draws."""
    from .metrics import structure_final_score

    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(draws):
        pred = rng.uniform(1, 5, size=len(references)).tolist()
        masks = []
        for _ in references:
            mask = np.zeros((64, 64), np.uint8)
            y, x = rng.integers(0, 33, size=2)
            mask[y:y + 32, x:x + 32] = 1
            masks.append(mask)
        scores.append(structure_final_score(pred, references, masks, reference_masks, progress=False))
    return {key: float(np.mean([s[key] for s in scores])) for key in ("precision", "recall", "f1", "plcc", "srcc",
                                                                      "final_score")}


def _ok_rows(results: Path, track: str) -> dict[str, dict]:
    """The ``track`` objects of the successful rows of an ``evalmuse score`` results file, by image id."""
    from .scoring import read_results

    return {row["id"]: row[track] for row in read_results(results) if row.get("status") == "ok" and track in row}


def evaluate_alignment(results: Path, truth_file: Path, dataset_dir: Path) -> tuple[dict, list[float], list[dict]]:
    """Official Main Score of the ``alignment`` rows of ``results`` on the ``test`` split's images, against
    the hidden test labels (an ``eval.json`` truth file, which also labels the held-out generator's test
    images), through :func:`evalmuse_models.evaluation.evaluate_alignment`; with the true overall and
    element scores."""
    import datasets

    from .evaluation import evaluate_alignment as main_score
    from .evaluation.alignment import truth_file_split

    test = set(datasets.load_dataset(str(dataset_dir), "alignment", split="test")["img_path"])
    truth = truth_file_split(truth_file).filter(lambda path: path in test, input_columns="img_path")
    scores = main_score(_ok_rows(results, "alignment"), truth)
    return scores, list(truth["total_score"]), [{e["key"]: e["score"] for e in elements} for elements in truth["elements"]]


def generalisation(results: list[Path], truth_files: list[Path], dataset_dir: Path, *, n_resamples: int,
                   seed: int) -> dict:
    """The generalisation gap of the demo's alignment model to the held-out synthetic generator: its
    scored images (the ``test`` split and the held-out generator's ``test_unseen`` split) against every
    truth file that labels them, grouped by the ``prepare-data --holdout-generators`` manifest."""
    from .analysis import AlignmentParts, generalisation_gap
    from .data.splits import HOLDOUT_MANIFEST, read_holdout_manifest
    from .metrics import read_alignment_file

    truth = {record["img_path"]: record for path in truth_files for record in read_alignment_file(path)}
    rows = {}
    for path in results:
        rows.update(_ok_rows(path, "alignment"))
    ids = [image for image in rows if image in truth]
    parts = AlignmentParts.from_records(
        [truth[image] for image in ids],
        [{"img_path": image, "total_score": rows[image]["overall"], "element_score": rows[image]["elements"]}
         for image in ids],
    )
    manifest = read_holdout_manifest(dataset_dir / HOLDOUT_MANIFEST)
    return generalisation_gap(parts, [manifest.subset(image) for image in parts.image_ids], n_resamples=n_resamples,
                              seed=seed, holdout_generators=manifest.holdout_generators)


def evaluate_structure(results: Path, dataset_dir: Path, min_votes: int = 1) -> tuple[dict, list[float], list]:
    """Official Final Score of the ``structure`` rows of ``results`` on the labelled test split (through
    :func:`evalmuse_models.evaluation.evaluate_structure`), with the split's MOS and truth masks."""
    import datasets

    from .evaluation.structure import evaluate_structure as final_score
    from .evaluation.structure import truth_masks
    from .scoring import rle_to_mask

    split = datasets.load_dataset(str(dataset_dir), "structure", split="test")
    predictions = {name: {"score": row["score"], "mask": rle_to_mask(row["mask_512"])}
                   for name, row in _ok_rows(results, "structure").items()}
    truth = truth_masks(split, min_votes=min_votes)
    scores = final_score(predictions, split, truth=truth, min_votes=min_votes, progress=False)
    return scores, [float(m) for m in split["mos"]], truth


def format_table(summary: dict) -> str:
    """The demo's score table (what ``evalmuse demo`` prints)."""
    lines = []
    a, s = summary["alignment"], summary["structure"]
    lines.append(f"Alignment track (EvalMuse-40K synthetic test split, {a['num_images']} images)")
    lines.append(f"  {'':<22}{'SRCC':>8}{'PLCC':>8}{'ACC':>8}{'Main':>8}")
    for label, key in (("tiny FGA-BLIP2 (trained)", "trained"), ("chance baseline", "chance")):
        m = a[key]
        lines.append(f"  {label:<22}{m['srcc']:>8.4f}{m['plcc']:>8.4f}{m['acc']:>8.4f}{m['main_score']:>8.4f}")
    lines.append(f"Structure track (EvalMuse-Structure synthetic test split, {s['num_images']} images)")
    lines.append(f"  {'':<22}{'P':>8}{'R':>8}{'F1':>8}{'PLCC':>8}{'SRCC':>8}{'Final':>8}")
    for label, key in (("tiny structure (trained)", "trained"), ("chance baseline", "chance")):
        m = s[key]
        lines.append(f"  {label:<22}{m['precision']:>8.4f}{m['recall']:>8.4f}{m['f1']:>8.4f}{m['plcc']:>8.4f}"
                     f"{m['srcc']:>8.4f}{m['final_score']:>8.4f}")
    if a.get("generalisation"):
        from .analysis import format_generalisation

        held = ", ".join(a["generalisation"].get("holdout_generators") or [])
        lines.append(f"Alignment on a generator held out of training ({held}): the generalisation gap")
        lines.append(format_generalisation(a["generalisation"]))
    return "\n".join(lines)


def run_demo(out_dir: str | os.PathLike = "demo_output", config: DemoConfig | None = None, **overrides) -> dict:
    """Run the whole demo into ``out_dir``; returns (and writes to ``summary.json``) the scores.

    Keyword arguments override :class:`DemoConfig` fields, e.g. ``run_demo("out", seed=1, device="cuda")``.
    Every setting and ``out_dir`` are checked first (:func:`check_demo_arguments`); a bad one raises
    :class:`UserInputError` before anything is written.
    """
    config = DemoConfig(**asdict(config)) if config is not None else DemoConfig()
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise TypeError(f"unknown demo option {key!r}")
        setattr(config, key, value)
    out = check_demo_arguments(out_dir, config)
    saved_env = os.environ.get("ACCELERATE_USE_CPU")
    try:
        return _run(out, config)
    finally:
        if saved_env is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = saved_env


def _run(out_dir, config: DemoConfig) -> dict:
    import torch

    from .data import prepare_dataset
    from .data.synthetic import HOLDOUT_GENERATOR, write_alignment_release, write_structure_release
    from .scoring import read_results, score
    from .scoring.results import ResultsWriter
    from .training.align import AlignRecipeArguments, AlignTrainingArguments, train_align
    from .training.structure import StructureRecipeArguments, StructureTrainingArguments, train_structure

    device = _configure_device(config.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    marks = out / ".steps"
    started = time.perf_counter()
    timings: dict[str, float] = {}
    torch.manual_seed(config.seed)

    def step(name: str):
        timings[name] = round(time.perf_counter() - step.t0, 1)
        step.t0 = time.perf_counter()

    step.t0 = time.perf_counter()

    raw_align, raw_structure, dataset_dir = out / "raw" / "evalmuse-40k", out / "raw" / "evalmuse-structure", out / "dataset"
    recipe = {key: getattr(config, key) for key in ("seed", "num_prompts", "num_structure_images", "align_steps",
                                                     "align_learning_rate", "align_batch_size", "align_freeze_vision",
                                                     "structure_epochs", "structure_batch_size")}
    recipe["holdout_generators"] = sorted(HOLDOUT_GENERATOR)  # the data layout: a run without it is another recipe
    if _done(marks / "recipe"):
        previous = json.loads((marks / "recipe").read_text())
        changed = {k: (previous.get(k), v) for k, v in recipe.items() if previous.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise UserInputError(f"{out} holds a demo run with other settings ({detail}); pass a new --out or "
                                 "delete that folder to start over")
    else:
        _mark(marks / "recipe", recipe)

    if not _done(marks / "data"):
        _log(f"writing the synthetic releases (seed {config.seed})")
        write_alignment_release(raw_align, num_prompts=config.num_prompts, seed=config.seed, holdout_generator=True)
        write_structure_release(raw_structure, num_images=config.num_structure_images, seed=config.seed)
        _log(f"preparing the dataset (Parquet, alignment + structure configs; {', '.join(HOLDOUT_GENERATOR)} held out)")
        prepare_dataset(dataset_dir, alignment_dir=raw_align, structure_dir=raw_structure, overwrite=True,
                        holdout_generators=list(HOLDOUT_GENERATOR))
        _mark(marks / "data")
    step("data")

    align_run = out / "runs" / "align"
    if not _done(marks / "align"):
        _log(f"training the tiny alignment model ({config.align_steps} steps max, {config.time_budget_s}s budget)")
        metrics = train_align(
            AlignRecipeArguments(dataset_dir=str(dataset_dir), preset="tiny", freeze_vision=config.align_freeze_vision,
                                 time_budget_s=config.time_budget_s),
            AlignTrainingArguments(output_dir=str(align_run), learning_rate=config.align_learning_rate,
                                   max_steps=config.align_steps, per_device_train_batch_size=config.align_batch_size,
                                   seed=config.seed, eval_on_start=False, eval_strategy="no",
                                   disable_tqdm=not config.progress, dataloader_num_workers=config.num_workers,
                                   use_cpu=device == "cpu"),
        )
        _mark(marks / "align", metrics)
    align_model = align_run / "model"
    step("train_align")

    structure_run = out / "runs" / "structure"
    if not _done(marks / "structure"):
        _log(f"training the tiny structure model ({config.structure_epochs} epochs)")
        metrics = train_structure(
            StructureRecipeArguments(dataset_dir=str(dataset_dir), preset="tiny"),
            StructureTrainingArguments(output_dir=str(structure_run), num_train_epochs=config.structure_epochs,
                                       per_device_train_batch_size=config.structure_batch_size, seed=config.seed,
                                       eval_on_start=False, disable_tqdm=not config.progress,
                                       dataloader_num_workers=config.num_workers, use_cpu=device == "cpu"),
        )
        _mark(marks / "structure", metrics)
    structure_metrics = json.loads((marks / "structure").read_text())
    structure_model = Path(structure_metrics.get("model_dir") or structure_run / "model")
    threshold = structure_metrics.get("threshold")
    step("train_structure")

    _log("scoring the held-out test splits")
    common = {"batch_size": config.score_batch_size, "num_workers": config.num_workers, "device": device,
              "threshold": threshold, "progress": config.progress}
    align_results, structure_results = out / "results_alignment.jsonl", out / "results_structure.jsonl"
    score(dataset_dir, config="alignment", split="test", out=align_results, align=str(align_model),
          structure=str(structure_model), **common)
    score(dataset_dir, config="structure", split="test", out=structure_results, structure=str(structure_model),
          **common)
    unseen_results = out / "results_alignment_unseen.jsonl"
    score(dataset_dir, config="alignment", split="test_unseen", out=unseen_results, align=str(align_model), **common)
    step("score")

    _log("computing the official scores")
    align_scores, align_refs, align_ref_elements = evaluate_alignment(align_results, raw_align / "test_eval.json",
                                                                      dataset_dir)
    gap = generalisation([align_results, unseen_results],
                         [raw_align / "test_eval.json", dataset_dir / "official" / "alignment" / "test_unseen" / "eval.json"],
                         dataset_dir, n_resamples=config.gap_resamples, seed=config.seed)
    structure_scores, structure_refs, structure_masks = evaluate_structure(structure_results, dataset_dir)
    summary = {
        "seed": config.seed,
        "device": device,
        "config": asdict(config),
        "alignment": {
            "num_images": len(align_refs),
            "trained": align_scores,
            "chance": chance_alignment(align_refs, align_ref_elements, config.chance_draws, config.seed),
            "generalisation": gap,
        },
        "structure": {
            "num_images": len(structure_refs),
            "trained": structure_scores,
            "chance": chance_structure(structure_refs, structure_masks, config.chance_draws, config.seed),
            "threshold": threshold,
        },
        "models": {"alignment": str(align_model), "structure": str(structure_model)},
    }
    step("evaluate")

    if config.report:
        combined = out / "results.jsonl"
        combined.unlink(missing_ok=True)
        from .metrics import read_alignment_file

        truth = {rec["img_path"]: rec for rec in read_alignment_file(raw_align / "test_eval.json")}
        align_rows = read_results(align_results)
        for row in align_rows:  # the hidden test labels, shown next to the predictions in the report
            if row["id"] in truth:
                row["reference"] = {"overall": truth[row["id"]]["total_score"],
                                    "elements": truth[row["id"]]["element_score"]}
        structure_rows = read_results(structure_results)
        with ResultsWriter(combined) as writer:
            writer.write(align_rows)
            writer.write(structure_rows)
        from .report import build_report

        gap_file = out / "generalisation.json"  # the held-out generator's section of the report
        atomic_write_text(gap_file, json.dumps(gap, indent=1, default=float))
        index = build_report(combined, out / "report", title="EvalMuse demo: tiny models on synthetic data",
                             analyses=[gap_file], progress=config.progress)
        summary["report"] = str(index)
    step("report")
    summary["timings_s"] = timings
    summary["seconds"] = round(time.perf_counter() - started, 1)
    for model_dir, key in ((align_model, "alignment"), (structure_model, "structure")):
        # The measured test scores travel with the model: `evalmuse push` puts them in the card.
        atomic_write_text(Path(model_dir) / "eval_results.json", json.dumps({
            "task": key, "dataset": "evalmuse-synthetic", "split": "test", "metrics": summary[key]["trained"],
        }, indent=1))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=float))
    return summary
