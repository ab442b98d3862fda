"""Held-out generators: ``split_by_generator``, ``prepare-data --holdout-generators`` (the
``test_unseen`` split, its truth and manifest) and ``evalmuse eval alignment --by seen/unseen``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evalmuse_models.analysis import AlignmentParts, generalisation_gap
from evalmuse_models.cli import main
from evalmuse_models.data.splits import (
    HOLDOUT_MANIFEST,
    HoldoutManifest,
    read_holdout_manifest,
    split_by_generator,
)
from evalmuse_models.metrics import alignment_main_score, read_alignment_file, write_alignment_truth
from evalmuse_models.utils import UserInputError

HELD = "PixelForge-Pastel"


def _row(img_path, generator, prompt):
    return {"img_path": img_path, "generator": generator, "prompt": prompt}


HAND_MADE = {
    "train": [_row("A/1.png", "A", "p1"), _row("B/1.png", "B", "p1"), _row("C/1.png", "C", "p1"),
              _row("A/2.png", "A", "p2"), _row("B/2.png", "B", "p2")],
    "validation": [_row("A/3.png", "A", "p3"), _row("B/3.png", "B", "p3")],
    "test": [_row("B/4.png", "B", "p2"), _row("C/5.png", "C", "p5"), _row("x.png", "", "p6")],
}


def test_split_by_generator_on_rows_and_on_a_datasetdict():
    held = split_by_generator(HAND_MADE, "B")
    paths = {split: [r["img_path"] for r in rows] for split, rows in held.splits.items()}
    assert paths == {
        "train": ["A/1.png", "C/1.png", "A/2.png"],
        "validation": ["A/3.png"],
        "test": ["C/5.png", "x.png"],
        "test_unseen": ["B/1.png", "B/2.png", "B/3.png", "B/4.png"],
    }
    # p1 and p2 remain in train through A and C; p3 is a validation prompt.
    assert dict(held.manifest.images) == {"B/1.png": "prompt_seen", "B/2.png": "prompt_seen",
                                          "B/3.png": "prompt_unseen", "B/4.png": "prompt_seen"}
    assert held.manifest.subset("B/3.png") == "unseen_prompt_unseen"
    assert held.manifest.subset("A/3.png") == "seen"

    # A prompt drawn in train only by the held-out generator is not seen.
    two = split_by_generator(HAND_MADE, ["A", "B"])
    assert two.manifest.images["A/2.png"] == "prompt_unseen" and two.manifest.images["A/1.png"] == "prompt_seen"

    from datasets import Dataset, DatasetDict

    dd = DatasetDict({split: Dataset.from_list(rows) for split, rows in HAND_MADE.items()})
    from_datasets = split_by_generator(dd, "B")
    assert {split: list(ds["img_path"]) for split, ds in from_datasets.splits.items()} == paths
    assert dict(from_datasets.manifest.images) == dict(held.manifest.images)


def test_split_by_generator_refuses_bad_holdouts():
    with pytest.raises(UserInputError, match=r"'D' have no image.*A, B, C"):
        split_by_generator(HAND_MADE, "B,D")
    with pytest.raises(UserInputError, match="every generator"):
        split_by_generator(HAND_MADE, "A,B,C")
    with pytest.raises(UserInputError, match="no held-out generator"):
        split_by_generator(HAND_MADE, " , ")
    with pytest.raises(UserInputError, match="already has a split"):
        split_by_generator({**HAND_MADE, "test_unseen": []}, "B")


@pytest.fixture(scope="module")
def holdout_dataset(tmp_path_factory):
    """A synthetic release with the held-out pastel generator, prepared with it held out (CLI)."""
    from evalmuse_models.data.synthetic import write_alignment_release

    tmp = tmp_path_factory.mktemp("holdout")
    write_alignment_release(tmp / "raw", num_prompts=20, seed=3, holdout_generator=True)
    assert main(["prepare-data", str(tmp / "data"), "--alignment", str(tmp / "raw"), "--holdout-generators", HELD,
                 "--no-progress"]) == 0
    return tmp


def test_prepare_data_holds_out_the_generator(holdout_dataset, tmp_path):
    from datasets import load_dataset

    data = holdout_dataset / "data"
    ds = load_dataset(str(data), "alignment", cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "validation", "test", "test_unseen"}
    assert set(ds["test_unseen"]["generator"]) == {HELD}
    for split in ("train", "validation", "test"):
        assert HELD not in set(ds[split]["generator"]) and len(ds[split]) > 0
    raw = [r for name in ("train_list.json", "val_list.json", "test.json")
           for r in json.loads((holdout_dataset / "raw" / name).read_text())]
    assert sum(len(d) for d in ds.values()) == len(raw)
    assert sorted(ds["test_unseen"]["img_path"]) == sorted(r["img_path"] for r in raw if r["img_path"].startswith(HELD))

    # The manifest marks a held-out image prompt_seen exactly when its prompt is in the train split.
    manifest = read_holdout_manifest(data / HOLDOUT_MANIFEST)
    assert manifest.holdout_generators == (HELD,)
    train_prompts = set(ds["train"]["prompt"])
    expected = {p: "prompt_seen" if q in train_prompts else "prompt_unseen"
                for p, q in zip(ds["test_unseen"]["img_path"], ds["test_unseen"]["prompt"])}
    assert dict(manifest.images) == expected
    assert {"prompt_seen", "prompt_unseen"} <= set(expected.values())

    # Its official truth holds the labelled held-out images (those of the labelled train and val files).
    truth = read_alignment_file(data / "official/alignment/test_unseen/eval.json")
    labelled = [p for p, s in zip(ds["test_unseen"]["img_path"], ds["test_unseen"]["total_score"]) if s is not None]
    assert sorted(r["img_path"] for r in truth) == sorted(labelled)
    assert 0 < len(labelled) < len(ds["test_unseen"])


def test_the_holdout_generator_leaves_the_other_images_unchanged(tmp_path):
    from evalmuse_models.data.synthetic import write_alignment_release

    write_alignment_release(tmp_path / "plain", num_prompts=3, seed=1)
    write_alignment_release(tmp_path / "held", num_prompts=3, seed=1, holdout_generator=True)
    plain = json.loads((tmp_path / "plain/train_list.json").read_text())
    held = json.loads((tmp_path / "held/train_list.json").read_text())
    assert [r for r in held if not r["img_path"].startswith(HELD)] == plain
    assert any(r["img_path"].startswith(HELD) for r in held)
    for record in plain:
        assert (tmp_path / "plain" / record["img_path"]).read_bytes() == (tmp_path / "held" / record["img_path"]).read_bytes()


def _noisy_submission(truth: list[dict], noise: float, flip: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"prompt": r["prompt"], "img_path": r["img_path"], "total_score": r["total_score"] + rng.normal(0, noise),
             "element_score": {k: (1.0 - v if rng.random() < flip else v) for k, v in r["element_score"].items()}}
            for r in truth]


def test_eval_by_seen_unseen_prints_the_gap(holdout_dataset, tmp_path, capsys):
    official = holdout_dataset / "data" / "official" / "alignment"
    seen_truth, unseen_truth = official / "validation" / "eval.json", official / "test_unseen" / "eval.json"
    seen_sub, unseen_sub = tmp_path / "seen.json", tmp_path / "unseen.json"
    # A submission that is good on the seen generators and poor on the held-out one.
    seen_sub.write_text(json.dumps(_noisy_submission(read_alignment_file(seen_truth), 0.2, 0.05, 0)))
    unseen_sub.write_text(json.dumps(_noisy_submission(read_alignment_file(unseen_truth), 1.5, 0.35, 1)))
    args = ["eval", "alignment", "--by", "seen/unseen", "--truth", str(seen_truth), str(unseen_truth),
            "--submission", str(seen_sub), str(unseen_sub)]

    assert main([*args, "--n-resamples", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["analysis"] == "generalisation" and result["holdout_generators"] == [HELD]

    # Each group's scores are the official ones of its images, computed independently here.
    manifest = read_holdout_manifest(official / "holdout.json")
    truth = read_alignment_file(seen_truth) + read_alignment_file(unseen_truth)
    sub = {r["img_path"]: r for r in json.loads(seen_sub.read_text()) + json.loads(unseen_sub.read_text())}
    members = {"seen": lambda p: p not in manifest.images, "unseen": lambda p: p in manifest.images,
               "unseen_prompt_seen": lambda p: manifest.images.get(p) == "prompt_seen",
               "unseen_prompt_unseen": lambda p: manifest.images.get(p) == "prompt_unseen"}
    for group, member in members.items():
        recs = sorted((r for r in truth if member(r["img_path"])), key=lambda r: r["img_path"])  # the scorer's order
        official_scores = alignment_main_score(
            [sub[r["img_path"]]["total_score"] for r in recs], [r["total_score"] for r in recs],
            [sub[r["img_path"]]["element_score"] for r in recs], [r["element_score"] for r in recs])
        entry = result["groups"][group]
        assert entry["n_images"] == len(recs)
        for key in ("srcc", "plcc", "acc", "main_score"):
            assert entry[key] == pytest.approx(official_scores[key], abs=1e-9), (group, key)
            lo, hi = entry["ci"][key]
            assert lo <= hi
    gap = result["gaps"]["generator"]
    for key in ("srcc", "plcc", "acc", "main_score"):
        assert gap["values"][key] == pytest.approx(result["groups"]["seen"][key] - result["groups"]["unseen"][key])
    assert gap["values"]["main_score"] > 0.1 and gap["ci"]["main_score"][0] > 0

    assert main([*args, "--n-resamples", "10"]) == 0
    text = capsys.readouterr().out
    assert f"held-out generators: {HELD}" in text
    for label in ("seen generators", "unseen generators", "unseen, prompt seen", "unseen, prompt unseen",
                  "gap: seen - unseen", "gap: prompt seen - unseen"):
        assert label in text
    assert f"{result['gaps']['generator']['values']['main_score']:+.4f}" in text


def test_eval_by_seen_unseen_errors(holdout_dataset, tmp_path, capsys):
    official = holdout_dataset / "data" / "official" / "alignment"
    truth = official / "validation" / "eval.json"
    elsewhere = tmp_path / "eval.json"
    write_alignment_truth(read_alignment_file(truth), elsewhere)
    # No manifest beside a truth file outside the dataset folder.
    assert main(["eval", "alignment", "--by", "seen/unseen", "--truth", str(elsewhere), "--submission",
                 str(elsewhere)]) == 2
    assert "holdout manifest" in capsys.readouterr().err
    assert main(["eval", "alignment", "--truth", str(truth), str(truth), "--submission", str(truth)]) == 2
    assert "--by seen/unseen" in capsys.readouterr().err
    assert main(["eval", "alignment", "--truth", str(truth), "--submission", str(truth), "--holdout",
                 str(official / "holdout.json")]) == 2
    assert "--by seen/unseen" in capsys.readouterr().err
    # The same image in two truth files.
    assert main(["eval", "alignment", "--by", "seen/unseen", "--truth", str(truth), str(elsewhere), "--submission",
                 str(truth), "--holdout", str(official / "holdout.json")]) == 2
    assert "also in" in capsys.readouterr().err
    # A held-out image the manifest does not list.
    with pytest.raises(UserInputError, match="not in the holdout manifest"):
        from evalmuse_models.analysis import generalisation_gap_files

        generalisation_gap_files([official / "test_unseen" / "eval.json"], [official / "test_unseen" / "eval.json"],
                                 HoldoutManifest(holdout_generators=(HELD,), images={}), n_resamples=0)


def test_generalisation_gap_of_tiny_groups_is_none_not_an_error():
    rng = np.random.default_rng(0)
    n = 12
    ref = rng.uniform(1, 5, n)
    parts = AlignmentParts.from_arrays(ref + rng.normal(0, 0.3, n), ref, [[0.9]] * n, [[1.0]] * n)
    subsets = ["seen"] * 10 + ["unseen_prompt_seen"] * 2
    result = generalisation_gap(parts, subsets, n_resamples=0)
    assert result["groups"]["unseen"]["main_score"] is None and "at least 3" in result["groups"]["unseen"]["undefined"]
    assert result["groups"]["unseen_prompt_unseen"]["n_images"] == 0
    assert result["gaps"]["generator"]["values"]["main_score"] is None
    assert result["groups"]["seen"]["main_score"] is not None
