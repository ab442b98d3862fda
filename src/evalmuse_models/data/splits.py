"""Held-out generators: a ``test_unseen`` split of the images of generators no model trains on.

EvalMuse-40K pairs every prompt with images of about twenty generators. To measure how an
evaluator does on a generator it never saw, :func:`split_by_generator` moves every image of the
held-out generators, from every split, into a split of its own (``test_unseen``); the other splits
keep the other generators' images. A held-out image's prompt may still have been seen in training
(through another generator's image of it): each held-out image is marked ``prompt_seen`` (its
prompt text is among the training split's prompts) or ``prompt_unseen``.

``evalmuse prepare-data --holdout-generators A,B`` does this while building the dataset and writes
the marks to ``OUT_DIR/official/alignment/holdout.json`` (the :class:`HoldoutManifest`), which
``evalmuse eval alignment --by seen/unseen`` reads to report the generalisation gap.

Example::

    from datasets import load_dataset
    from evalmuse_models.data.splits import split_by_generator

    held = split_by_generator(load_dataset("evalmuse", "alignment"), ["SDXL-Turbo", "PixArt-alpha"])
    held.splits["test_unseen"]        # the two generators' images, from every split
    held.manifest.subset("SDXL-Turbo/00805.png")   # "unseen_prompt_seen"
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils import UserInputError, atomic_write_text

__all__ = [
    "HOLDOUT_MANIFEST",
    "HOLDOUT_SPLIT",
    "SEEN",
    "UNSEEN_PROMPT_SEEN",
    "UNSEEN_PROMPT_UNSEEN",
    "GeneratorSplit",
    "HoldoutManifest",
    "parse_generator_list",
    "read_holdout_manifest",
    "split_by_generator",
]

#: The split that holds the held-out generators' images.
HOLDOUT_SPLIT = "test_unseen"
#: Where ``prepare-data`` writes the manifest, relative to the dataset folder.
HOLDOUT_MANIFEST = "official/alignment/holdout.json"
#: The subset of an image: a generator seen in training, or a held-out one whose prompt was (not) seen.
SEEN = "seen"
UNSEEN_PROMPT_SEEN = "unseen_prompt_seen"
UNSEEN_PROMPT_UNSEEN = "unseen_prompt_unseen"
_PROMPT_MARKS = {"prompt_seen": UNSEEN_PROMPT_SEEN, "prompt_unseen": UNSEEN_PROMPT_UNSEEN}


def parse_generator_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """Generator names from ``"A,B"`` or a list, stripped, duplicates dropped, order kept."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise UserInputError(f"held-out generators must be names (strings), got {item!r}")
        name = item.strip()
        if name and name not in names:
            names.append(name)
    if not names:
        raise UserInputError("no held-out generator given; name one or more generators, e.g. --holdout-generators A,B")
    return tuple(names)


@dataclass(frozen=True)
class HoldoutManifest:
    """Which generators are held out and, for each held-out image, whether its prompt was seen in
    training (``"prompt_seen"`` / ``"prompt_unseen"``, keyed by ``img_path``)."""

    holdout_generators: tuple[str, ...]
    images: Mapping[str, str] = field(default_factory=dict)
    split: str = HOLDOUT_SPLIT
    train_split: str = "train"

    def subset(self, img_path: str) -> str:
        """:data:`SEEN` for an image not held out, else :data:`UNSEEN_PROMPT_SEEN` or
        :data:`UNSEEN_PROMPT_UNSEEN`."""
        mark = self.images.get(img_path)
        return SEEN if mark is None else _PROMPT_MARKS[mark]

    def to_json(self) -> dict[str, Any]:
        counts = {mark: sum(1 for v in self.images.values() if v == mark) for mark in _PROMPT_MARKS}
        return {
            "holdout_generators": list(self.holdout_generators),
            "split": self.split,
            "prompts_seen_in": self.train_split,
            "counts": counts,
            "images": dict(self.images),
        }

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_json(), ensure_ascii=False, indent=1))


def read_holdout_manifest(path: str | os.PathLike) -> HoldoutManifest:
    """Read a manifest written by ``prepare-data --holdout-generators`` (or by
    :meth:`HoldoutManifest.write`): ``{"holdout_generators": [...], "images": {img_path:
    "prompt_seen" | "prompt_unseen"}}``."""
    from ..utils.jsonio import read_json_file

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: holdout manifest not found (prepare-data --holdout-generators writes it "
                             f"as OUT_DIR/{HOLDOUT_MANIFEST})")
    data = read_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
        raise UserInputError(f"{path}: expected an object with 'holdout_generators' and 'images' "
                             "{img_path: 'prompt_seen' | 'prompt_unseen'}")
    generators = data.get("holdout_generators")
    if not isinstance(generators, list) or not generators:
        raise UserInputError(f"{path}: 'holdout_generators' must be a non-empty list of names")
    for img_path, mark in data["images"].items():
        if mark not in _PROMPT_MARKS:
            raise UserInputError(f"{path}: image {img_path!r} is marked {mark!r}; expected 'prompt_seen' or "
                                 "'prompt_unseen'")
    return HoldoutManifest(
        holdout_generators=parse_generator_list(generators),
        images=dict(data["images"]),
        split=str(data.get("split", HOLDOUT_SPLIT)),
        train_split=str(data.get("prompts_seen_in", "train")),
    )


@dataclass
class GeneratorSplit:
    """What :func:`split_by_generator` returns: the new splits (the input's kind: a dict of lists or
    a ``datasets.DatasetDict``), with ``test_unseen`` last, and the :class:`HoldoutManifest`."""

    splits: Any
    manifest: HoldoutManifest


def _get(record: Any, name: str) -> Any:
    return record[name] if isinstance(record, Mapping) else getattr(record, name)


def _columns(split: Any) -> tuple[list[str], list[str], list[str]]:
    """``(img_path, generator, prompt)`` of every row of a split: a list of records / row dicts, or a
    ``datasets.Dataset`` (read column-wise, images not decoded)."""
    if hasattr(split, "select_columns") and hasattr(split, "column_names"):
        missing = [c for c in ("img_path", "generator", "prompt") if c not in split.column_names]
        if missing:
            raise UserInputError(f"split_by_generator needs the columns img_path, generator and prompt of the "
                                 f"'alignment' config; this split lacks {', '.join(missing)}")
        columns = split.select_columns(["img_path", "generator", "prompt"])
        return list(columns["img_path"]), list(columns["generator"]), list(columns["prompt"])
    try:
        return ([str(_get(r, "img_path")) for r in split], [_get(r, "generator") or "" for r in split],
                [str(_get(r, "prompt")) for r in split])
    except (KeyError, AttributeError) as error:
        raise UserInputError(
            f"split_by_generator needs img_path, generator and prompt on every record ({error})") from None


def split_by_generator(
    dataset: Any,
    holdout: str | Sequence[str],
    *,
    train_split: str = "train",
    holdout_split: str = HOLDOUT_SPLIT,
) -> GeneratorSplit:
    """Move every image of the ``holdout`` generators into a split of its own.

    Args:
        dataset: the alignment splits: a ``datasets.DatasetDict`` of the ``alignment`` config, or a
            mapping ``{split: [records]}`` of :class:`~evalmuse_models.data.AlignmentRecord` or row
            dicts (with ``img_path``, ``generator`` and ``prompt``).
        holdout: generator names, as a list or ``"A,B"``. Images with an unknown generator (``""``,
            flat paths without a generator map) are never held out.
        train_split: the split whose prompts count as seen in training.
        holdout_split: the name of the new split.

    Returns:
        A :class:`GeneratorSplit`: every split without the held-out generators' images (in their
        order), then ``holdout_split`` with those images (in split order, then record order), and
        the manifest marking each of them ``prompt_seen`` when its prompt text is among
        ``train_split``'s remaining prompts, else ``prompt_unseen``.

    Raises:
        UserInputError: a held-out generator has no image, every generator is held out, or the
            input already has a split named ``holdout_split``.
    """
    names = parse_generator_list(holdout)
    if holdout_split in dataset:
        raise UserInputError(f"the dataset already has a split named {holdout_split!r}")
    columns = {split: _columns(rows) for split, rows in dataset.items()}
    known = sorted({g for _, generators, _ in columns.values() for g in generators if g})
    unknown = [n for n in names if n not in known]
    if unknown:
        listed = ", ".join(known) or "none (flat img_path values: give a generator map)"
        raise UserInputError(f"held-out generator(s) {', '.join(map(repr, unknown))} have no image in the dataset; "
                             f"its generators are: {listed}")
    if set(known) <= set(names):
        raise UserInputError(f"holding out every generator ({', '.join(known)}) leaves nothing to train on")
    held = set(names)
    keep = {split: [i for i, g in enumerate(gens) if g not in held] for split, (_, gens, _) in columns.items()}
    out = {split: [i for i, g in enumerate(gens) if g in held] for split, (_, gens, _) in columns.items()}
    train_prompts = set()
    if train_split in columns:
        train_prompts = {columns[train_split][2][i] for i in keep[train_split]}
    images = {}
    for split, indices in out.items():
        paths, _, prompts = columns[split]
        for i in indices:
            images[paths[i]] = "prompt_seen" if prompts[i] in train_prompts else "prompt_unseen"
    manifest = HoldoutManifest(holdout_generators=names, images=images, split=holdout_split, train_split=train_split)

    if hasattr(dataset, "column_names") and hasattr(next(iter(dataset.values()), None), "select"):
        from datasets import DatasetDict, concatenate_datasets

        splits = DatasetDict({split: ds.select(keep[split]) for split, ds in dataset.items()})
        splits[holdout_split] = concatenate_datasets([ds.select(out[split]) for split, ds in dataset.items()])
    else:
        splits = {split: [rows[i] for i in keep[split]] for split, rows in dataset.items()}
        splits[holdout_split] = [rows[i] for split, rows in dataset.items() for i in out[split]]
    return GeneratorSplit(splits=splits, manifest=manifest)
