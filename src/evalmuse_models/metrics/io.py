"""The official NTIRE 2025 file formats: readers, submission writers, truth writers, file scoring.

Alignment (track 1): ``eval.json`` (truth) and ``output.json`` (submission), each a JSON list of
``{"prompt", "img_path", "total_score", "element_score": {key: value}}``; records are matched by
``img_path``.

Structure (track 2): ``gt.pkl`` (truth) and ``output.pkl`` (submission), each a pickle of
``{image_name: {"pred_area": 2-D 0/1 uint8 array, "score": float}}``.

A submission is ``submission.zip`` holding exactly the output file and ``readme.txt``.

Pickles are read with a restricted unpickler: only the builtin containers and the NumPy pieces an
array needs are allowed, anything else is refused (loading an arbitrary pickle runs code).
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import pickle
import warnings
import zipfile
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..data.alignment import element_score_dict, official_mean
from ..data.errors import InvalidValue
from ..utils import UserInputError, atomic_file, atomic_write_bytes, atomic_write_text
from ..utils.jsonio import load_json

__all__ = [
    "RestrictedUnpickler",
    "format_codalab_scores",
    "read_alignment_file",
    "read_structure_pickle",
    "score_alignment_files",
    "score_codalab",
    "score_structure_files",
    "write_alignment_submission",
    "write_alignment_truth",
    "write_structure_submission",
    "write_structure_truth",
]

ALIGNMENT_OUTPUT = "output.json"
STRUCTURE_OUTPUT = "output.pkl"
README = "readme.txt"
SUBMISSION_ZIP = "submission.zip"


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes in protocol 0-2 pickles
    ("collections", "OrderedDict"),
    ("builtins", "bytearray"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle only dicts, lists, tuples, strings, numbers and NumPy arrays/scalars/dtypes.

    Any other global (a class or function the pickle asks to import and call) raises
    :class:`~evalmuse_models.utils.UserInputError`.
    """

    def __init__(self, file, *, source: str = "pickle"):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UserInputError(
            f"{self._source}: refusing to load {module}.{name}: the official pickle format only holds dicts, "
            "strings, numbers and NumPy arrays; re-save the file with plain dict/float/np.ndarray values"
        )

    def persistent_load(self, pid):
        raise UserInputError(f"{self._source}: persistent references are not allowed in this pickle format")


def _restricted_load(data: bytes, source: str) -> Any:
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UserInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any corrupt pickle
        raise UserInputError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from None


#: The largest official file read (a structure submission with 999 masks at 1024x1024 is about
#: 1 GiB). Raise it with ``EVALMUSE_MAX_FILE_BYTES`` for larger sets.
MAX_FILE_BYTES = 3 * 2**30


def _max_file_bytes() -> int:
    value = os.environ.get("EVALMUSE_MAX_FILE_BYTES")
    try:
        return int(value) if value else MAX_FILE_BYTES
    except ValueError:
        raise UserInputError(f"EVALMUSE_MAX_FILE_BYTES must be a number of bytes, got {value!r}") from None


def _read_member(path: Path, member: str) -> tuple[bytes, str]:
    """Read ``path``; when it is a zip archive, read ``member`` from inside it. The size is checked
    before anything is read (a small zip can hold a huge file)."""
    if not path.exists():
        raise UserInputError(f"{path}: file not found")
    if not path.is_file():
        raise UserInputError(f"{path}: not a regular file")
    limit = _max_file_bytes()

    def check(size: int, source: str) -> None:
        if size > limit:
            raise UserInputError(
                f"{source}: {size:,} bytes, more than the {limit:,} this reader accepts; if the file is genuine, "
                "set EVALMUSE_MAX_FILE_BYTES to a larger number of bytes"
            )

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if Path(i.filename).name == member]
            if len(infos) != 1:
                raise UserInputError(f"{path}: the archive must hold exactly one {member}, found {len(infos)}")
            source = f"{path}:{infos[0].filename}"
            check(infos[0].file_size, source)
            try:
                return archive.read(infos[0]), source
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
                raise UserInputError(f"{source}: cannot be extracted ({exc})") from None
    check(path.stat().st_size, str(path))
    return path.read_bytes(), str(path)


# --------------------------------------------------------------------------------------------
# Alignment files
# --------------------------------------------------------------------------------------------

def _number(value: Any, where: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise UserInputError(f"{where} is {value!r}; expected a number")
    value = float(value)
    if not math.isfinite(value):
        raise UserInputError(f"{where} is {value!r}; expected a finite number")
    return value


def read_alignment_file(path: str | os.PathLike, *, allow_null: bool = False) -> list[dict[str, Any]]:
    """Read an alignment-track file (``eval.json`` truth or ``output.json`` submission, or a
    ``submission.zip`` holding ``output.json``).

    Returns records ``{"prompt", "img_path", "total_score": float, "element_score": {key: float}}``
    in file order (extra fields are kept). ``element_score`` may be stored as a dict or, as in the
    raw release, as a Python-literal string (parsed with :func:`ast.literal_eval`). With
    ``allow_null`` (a ``test.json``-style template), null scores are kept as ``None``.

    Raises:
        UserInputError: not JSON, not a list of objects, a duplicate ``img_path``, or a missing or
            non-numeric score; the message names the file, the record and the field.
    """
    path = Path(path)
    data, source = _read_member(path, ALIGNMENT_OUTPUT)
    raw = load_json(data, source)
    if not isinstance(raw, list):
        raise UserInputError(f"{source}: expected a JSON list of records, got {type(raw).__name__}")
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(raw):
        where = f"{source}: record {i}"
        if not isinstance(rec, dict):
            raise UserInputError(f"{where}: expected an object, got {type(rec).__name__}")
        img_path = rec.get("img_path")
        if not isinstance(img_path, str) or not img_path:
            raise UserInputError(f"{where}: missing or empty 'img_path'")
        where = f"{source}: record {i} ({img_path})"
        if img_path in seen:
            raise UserInputError(f"{where}: duplicate img_path (also record {seen[img_path]})")
        seen[img_path] = i
        if "total_score" not in rec:
            raise UserInputError(f"{where}: missing 'total_score'")
        total = rec["total_score"]
        if isinstance(total, list) and total:
            # Raw-release ratings: the overall score is their mean.
            total = official_mean([_number(v, f"{where}: total_score") for v in total])
        total = _number(total, f"{where}: total_score", allow_null)
        try:
            elements = element_score_dict(rec.get("element_score", {}))
        except InvalidValue as exc:
            raise UserInputError(f"{where}: element_score: {exc}") from None
        parsed = {}
        for key, value in elements.items():
            if isinstance(value, list) and value:
                # Raw-release votes: the label is their mean.
                value = official_mean([_number(v, f"{where}: element_score[{key!r}]") for v in value])
            parsed[str(key)] = _number(value, f"{where}: element_score[{key!r}]", allow_null)
        out = dict(rec)
        out["total_score"] = total
        out["element_score"] = parsed
        records.append(out)
    return records


def _alignment_pairs(truth: list[dict], submission: list[dict], truth_src: str, sub_src: str):
    by_path = {r["img_path"]: r for r in submission}
    missing = [r["img_path"] for r in truth if r["img_path"] not in by_path]
    if missing:
        raise UserInputError(
            f"{sub_src}: {len(missing)} image(s) of the truth are missing from the submission, e.g. {missing[:5]}"
        )
    truth_paths = {r["img_path"] for r in truth}
    extra = [p for p in by_path if p not in truth_paths]
    if extra:
        raise UserInputError(
            f"{sub_src}: {len(extra)} image(s) are not in the truth {truth_src}, e.g. {extra[:5]}; the official "
            "scorer pairs records after sorting by img_path, so the submission must hold exactly the truth's images"
        )
    # The released scorer sorts both lists by img_path and zips them.
    truth_sorted = sorted(truth, key=lambda r: r["img_path"])
    return truth_sorted, [by_path[r["img_path"]] for r in truth_sorted]


#: The ``per_generator`` name of images whose generator is unknown (a flat ``img_path`` not in the map).
UNKNOWN_GENERATOR = "(unknown)"


def score_alignment_files(
    truth: str | os.PathLike,
    submission: str | os.PathLike,
    *,
    breakdown: bool = False,
    generator_map: Mapping[str, str] | str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score an alignment submission (``output.json`` or ``submission.zip``) against ``eval.json``.

    ``breakdown=True`` adds ``per_category_acc`` (the normalised category of each element key, see
    :func:`~evalmuse_models.data.split_element_key`) and ``per_generator``: the generator is the
    first folder of ``img_path`` or, for the flat paths of the validation and test releases, its
    entry in ``generator_map`` (a ``{img_path: generator}`` dict or a file read by
    :func:`~evalmuse_models.data.read_generator_map`; giving it implies ``breakdown``); images
    with no known generator are grouped as ``"(unknown)"``. Other keyword arguments go to
    :func:`~evalmuse_models.metrics.alignment_main_score`.
    """
    from ..data.alignment import generator_from_img_path, read_generator_map
    from .alignment import alignment_main_score

    if generator_map is not None:
        generator_map = read_generator_map(generator_map)
    breakdown = breakdown or generator_map is not None

    truth_records = read_alignment_file(truth)
    sub_records = read_alignment_file(submission)
    truth_sorted, sub_sorted = _alignment_pairs(truth_records, sub_records, str(truth), str(submission))
    ids = [r["img_path"] for r in truth_sorted]
    missing = [
        (r["img_path"], k) for t, r in zip(truth_sorted, sub_sorted) for k in t["element_score"] if k not in r["element_score"]
    ]
    if missing:
        img, key = missing[0]
        raise UserInputError(
            f"{submission}: image {img!r} has no score for element {key!r} of the truth "
            f"({len(missing)} missing element score(s) in total)"
        )
    if breakdown:
        kwargs.setdefault("element_categories", True)
        kwargs.setdefault(
            "generators", [generator_from_img_path(p, generator_map) or UNKNOWN_GENERATOR for p in ids]
        )
    return alignment_main_score(
        [r["total_score"] for r in sub_sorted],
        [r["total_score"] for r in truth_sorted],
        [r["element_score"] for r in sub_sorted],
        [r["element_score"] for r in truth_sorted],
        image_ids=ids,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# Structure files
# --------------------------------------------------------------------------------------------

def _validate_structure(obj: Any, source: str, only: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
    if not isinstance(obj, dict):
        raise UserInputError(f"{source}: expected a dict {{image_name: {{'pred_area', 'score'}}}}, got {type(obj).__name__}")
    if only is not None:
        # The released scorer looks up the truth's images and never reads the others.
        extra = [k for k in obj if k not in only]
        if extra:
            warnings.warn(
                f"{source}: {len(extra)} image(s) are not in the truth and are ignored, as the official scorer "
                f"ignores them, e.g. {extra[:5]}",
                stacklevel=3,
            )
            obj = {k: v for k, v in obj.items() if k in only}
    out = {}
    for name, rec in obj.items():
        where = f"{source}: image {name!r}"
        if not isinstance(name, str):
            raise UserInputError(f"{where}: image names must be strings")
        if not isinstance(rec, dict):
            raise UserInputError(f"{where}: expected a dict with 'pred_area' and 'score'")
        for key in ("pred_area", "score"):
            if key not in rec:
                raise UserInputError(f"{where}: missing key {key!r}")
        mask = rec["pred_area"]
        if not isinstance(mask, np.ndarray):
            raise UserInputError(f"{where}: pred_area must be a NumPy array, got {type(mask).__name__}")
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[:, :, 0]  # one channel: OpenCV (and so the official scorer) reads it as 2-D
        if mask.ndim != 2 or mask.size == 0:
            raise UserInputError(f"{where}: pred_area must be a non-empty 2-D array, got shape {mask.shape}")
        if mask.dtype.kind not in "biuf":
            raise UserInputError(f"{where}: pred_area dtype {mask.dtype} is not numeric")
        score = rec["score"]
        if isinstance(score, np.ndarray) and score.size == 1:
            score = score.item()
        if isinstance(score, np.generic):
            score = score.item()
        out[name] = {"pred_area": mask, "score": _number(score, f"{where}: score")}
    return out


def read_structure_pickle(path: str | os.PathLike, *, only: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
    """Read a structure-track pickle (``gt.pkl``, ``output.pkl``, or a ``submission.zip`` holding
    ``output.pkl``) with :class:`RestrictedUnpickler`.

    Returns ``{image_name: {"pred_area": np.ndarray, "score": float}}``. A one-channel
    ``(H, W, 1)`` mask is read as ``(H, W)``, as OpenCV reads it. With ``only`` (the truth's image
    names), other images are dropped unread, with a warning, as the official scorer ignores them.

    Raises:
        UserInputError: the pickle asks for anything but dicts, strings, numbers and NumPy arrays,
            or a record lacks ``pred_area``/``score``, or a mask is not a non-empty 2-D array.
    """
    path = Path(path)
    data, source = _read_member(path, STRUCTURE_OUTPUT)
    return _validate_structure(_restricted_load(data, source), source, only)


def score_structure_files(truth: str | os.PathLike, submission: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """Score a structure submission (``output.pkl`` or ``submission.zip``) against ``gt.pkl``.

    Every truth image must be in the submission; submitted images the truth does not hold are
    ignored with a warning (the official scorer never reads them). Keyword arguments go to
    :func:`~evalmuse_models.metrics.structure_final_score`."""
    from .structure import structure_final_score

    gt = read_structure_pickle(truth)
    sub = read_structure_pickle(submission, only=gt)
    missing = [k for k in gt if k not in sub]
    if missing:
        raise UserInputError(
            f"{submission}: {len(missing)} image(s) of the truth are missing from the submission, e.g. {missing[:5]}"
        )
    names = list(gt)  # the official scorer's order: the truth's
    return structure_final_score(
        [sub[k]["score"] for k in names],
        [gt[k]["score"] for k in names],
        [sub[k]["pred_area"] for k in names],
        [gt[k]["pred_area"] for k in names],
        image_ids=names,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# The Codalab scoring-program layout
# --------------------------------------------------------------------------------------------

#: Per track: the truth file under ``ref/``, the submission under ``res/``, and the lines of
#: ``scores.txt`` in the released programs' order: ``(name written, result key)``.
CODALAB_LAYOUT: dict[str, dict[str, Any]] = {
    "alignment": {
        "truth": "eval.json",
        "submission": ALIGNMENT_OUTPUT,
        "lines": (("SRCC", "srcc"), ("PLCC", "plcc"), ("ACC", "acc"), ("Final_Score", "main_score")),
    },
    "structure": {
        "truth": "gt.pkl",
        "submission": STRUCTURE_OUTPUT,
        "lines": (
            ("Final_Score", "final_score"), ("SRCC", "srcc"), ("PLCC", "plcc"), ("Precision", "precision"),
            ("Recall", "recall"), ("F1_Score", "f1"), ("GIoU", "giou"),
        ),
    },
}


def format_codalab_scores(track: str, result: Mapping[str, float]) -> str:
    """The ``scores.txt`` lines the released scoring program writes for ``result`` (4 decimals,
    its names and order), without the appended ``readme.txt``."""
    if track not in CODALAB_LAYOUT:
        raise UserInputError(f"track must be one of {sorted(CODALAB_LAYOUT)}, got {track!r}")
    return "".join(f"{name}: {result[key]:.4f}\n" for name, key in CODALAB_LAYOUT[track]["lines"])


def score_codalab(track: str, input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """Run as the Codalab scoring program of ``track`` (``"alignment"`` or ``"structure"``).

    Reads ``input_dir/ref/{eval.json|gt.pkl}`` and ``input_dir/res/{output.json|output.pkl}``,
    scores them with the official settings (:func:`score_alignment_files` /
    :func:`score_structure_files`) and writes ``output_dir/scores.txt`` as the released program
    does: one ``Name: value`` line per score with 4 decimals, then ``res/readme.txt`` appended
    byte for byte (when present; the released programs fail without it). ``output_dir`` is created.

    Returns ``(result, path of scores.txt)``; ``result`` holds the full-precision numbers.
    """
    if track not in CODALAB_LAYOUT:
        raise UserInputError(f"track must be one of {sorted(CODALAB_LAYOUT)}, got {track!r}")
    layout = CODALAB_LAYOUT[track]
    input_dir = Path(input_dir)
    ref, res = input_dir / "ref", input_dir / "res"
    for folder in (ref, res):
        if not folder.is_dir():
            raise UserInputError(
                f"{folder}: no such folder; a Codalab input folder holds ref/{layout['truth']} and "
                f"res/{layout['submission']} (+ res/{README})"
            )
    truth, submission = ref / layout["truth"], res / layout["submission"]
    scorer = score_alignment_files if track == "alignment" else score_structure_files
    result = scorer(truth, submission)
    readme = res / README
    text = format_codalab_scores(track, result).encode("utf-8")
    if readme.is_file():
        text += readme.read_bytes()
    path = atomic_write_bytes(Path(output_dir) / "scores.txt", text)
    return result, path


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

def _readme(runtime_per_image: float, gpu: bool, extra_data: bool, llm: bool | None, description: str) -> str:
    runtime = _number(runtime_per_image, "runtime_per_image")
    if runtime < 0:
        raise UserInputError(f"runtime_per_image must be >= 0 seconds, got {runtime}")
    lines = [
        f"runtime per image [s] : {runtime:.2f}",
        f"CPU[1] / GPU[0] : {0 if gpu else 1}",
        f"Extra Data [1] / No Extra Data [0] : {1 if extra_data else 0}",
    ]
    if llm is not None:
        lines.append(f"LLM[1] / Non-LLM[0] : {1 if llm else 0}")
    lines.append(f"Other description : {' '.join(description.split())}")
    return "\n".join(lines) + "\n"


def _write_submission(out_dir: Path, output_name: str, output_bytes: bytes, readme: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    output_path = atomic_write_bytes(out_dir / output_name, output_bytes)
    readme_path = atomic_write_text(out_dir / README, readme)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(output_name, output_bytes)
        archive.writestr(README, readme)
    zip_path = atomic_write_bytes(out_dir / SUBMISSION_ZIP, buf.getvalue())
    return {"output": output_path, "readme": readme_path, "zip": zip_path}


def _alignment_records(records: Iterable[Mapping[str, Any]], what: str) -> list[dict]:
    out = []
    seen = set()
    outside: list[str] = []
    for i, rec in enumerate(records):
        img_path = rec.get("img_path") if isinstance(rec, Mapping) else None
        if not isinstance(img_path, str) or not img_path:
            raise UserInputError(f"{what}: record {i} has no 'img_path'")
        if img_path in seen:
            raise UserInputError(f"{what}: record {i} ({img_path}): duplicate img_path")
        seen.add(img_path)
        where = f"{what}: record {i} ({img_path})"
        elements = rec.get("element_score") or {}
        if not isinstance(elements, Mapping):
            raise UserInputError(f"{where}: element_score must be a dict {{element key: score}}")
        clean = {}
        for key, value in elements.items():
            v = _number(value, f"{where}: element_score[{key!r}]")
            if not 0 <= v <= 1:
                outside.append(f"{where}: element_score[{key!r}] = {v}")
            clean[str(key)] = v
        out.append(
            {
                "prompt": rec.get("prompt", ""),
                "img_path": img_path,
                "total_score": _number(rec.get("total_score"), f"{where}: total_score"),
                "element_score": clean,
            }
        )
    if not out:
        raise UserInputError(f"{what}: no record to write")
    if outside:
        # Written as given: the released scorer only thresholds element scores (>= 0.5).
        warnings.warn(
            f"{outside[0]} is outside [0, 1] ({len(outside)} such element score(s)); written as given, the "
            "official scorer only thresholds them at 0.5",
            stacklevel=3,
        )
    return out


def write_alignment_submission(
    records: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    runtime_per_image: float,
    gpu: bool,
    extra_data: bool,
    llm: bool,
    description: str = "",
) -> dict[str, Path]:
    """Write an alignment-track submission: ``output.json``, ``readme.txt`` and ``submission.zip``
    (holding exactly those two files) in ``out_dir``.

    Args:
        records: one dict per image, ``{"prompt", "img_path", "total_score", "element_score"}``
            (``element_score``: ``{element key: probability}``, keys written byte-exactly; a
            finite score outside [0, 1] is written as given, with a warning).
        runtime_per_image, gpu, extra_data, llm, description: the ``readme.txt`` fields.

    Returns: ``{"output": Path, "readme": Path, "zip": Path}``.

    Example:
        >>> paths = write_alignment_submission(
        ...     [{"prompt": "a cat", "img_path": "SDXL/001.png", "total_score": 3.2,
        ...       "element_score": {"cat (animal)": 0.9}}],
        ...     "my_submission", runtime_per_image=0.12, gpu=True, extra_data=False, llm=False,
        ... )  # doctest: +SKIP
    """
    clean = _alignment_records(records, "write_alignment_submission")
    data = json.dumps(clean, ensure_ascii=False, indent=1).encode("utf-8")
    return _write_submission(
        Path(out_dir), ALIGNMENT_OUTPUT, data, _readme(runtime_per_image, gpu, extra_data, llm, description)
    )


def _structure_records(records: Mapping[str, Any], what: str) -> dict[str, dict[str, Any]]:
    if not isinstance(records, Mapping):
        raise UserInputError(f"{what}: expected a dict {{image_name: {{'pred_area': mask, 'score': float}}}}")
    out = {}
    for name, rec in records.items():
        where = f"{what}: image {name!r}"
        if not isinstance(rec, Mapping) or "pred_area" not in rec or "score" not in rec:
            raise UserInputError(f"{where}: expected a dict with 'pred_area' and 'score'")
        mask = np.asarray(rec["pred_area"])
        if mask.ndim != 2 or mask.size == 0:
            raise UserInputError(f"{where}: pred_area must be a non-empty 2-D mask, got shape {mask.shape}")
        if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
            raise UserInputError(
                f"{where}: pred_area must be a 0/1 mask; binarise the heatmap first "
                "(the baseline keeps round(heatmap * 255) > 40)"
            )
        score = rec["score"]
        if isinstance(score, np.generic):
            score = score.item()
        out[str(name)] = {"pred_area": mask.astype(np.uint8, copy=False), "score": _number(score, f"{where}: score")}
    if not out:
        raise UserInputError(f"{what}: no record to write")
    return out


def write_structure_submission(
    records: Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    runtime_per_image: float,
    gpu: bool,
    extra_data: bool,
    llm: bool | None = None,
    description: str = "",
) -> dict[str, Path]:
    """Write a structure-track submission: ``output.pkl`` (``{image_name: {"pred_area": uint8 0/1
    mask, "score": float}}``, pickle protocol 4), ``readme.txt`` and ``submission.zip``.

    ``llm=None`` leaves the ``LLM`` line out of ``readme.txt``. Returns
    ``{"output": Path, "readme": Path, "zip": Path}``.
    """
    clean = _structure_records(records, "write_structure_submission")
    data = pickle.dumps(clean, protocol=4)
    return _write_submission(
        Path(out_dir), STRUCTURE_OUTPUT, data, _readme(runtime_per_image, gpu, extra_data, llm, description)
    )


def write_alignment_truth(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write an ``eval.json`` truth file (same record layout as ``output.json``)."""
    clean = _alignment_records(records, "write_alignment_truth")
    return atomic_write_text(path, json.dumps(clean, ensure_ascii=False, indent=1))


def write_structure_truth(records: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write a ``gt.pkl`` truth file (same layout as ``output.pkl``)."""
    clean = _structure_records(records, "write_structure_truth")
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:  # streamed: a training-set gt.pkl is GBs
        pickle.dump(clean, handle, protocol=4)
    return Path(path)
