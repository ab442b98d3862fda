"""``evalmuse analyze weights``: weight sensitivity and rank stability of the official scores."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from scipy.stats import kendalltau

from evalmuse_models.analysis import (
    AlignmentParts,
    analyze_weights,
    bootstrap_ranks,
    nearest_tie,
    simplex_grid,
    weight_sensitivity,
)
from evalmuse_models.cli import main
from evalmuse_models.metrics import score_alignment_files, score_structure_files, write_alignment_truth
from evalmuse_models.utils import UserInputError

# Two systems whose order flips at a weight computed by hand: Main(A) - Main(B) =
# 0.3 (w_srcc + w_plcc) - 0.2 w_acc = 0.3 - 0.5 w_acc, so A leads iff w_acc < 0.6.
FLIP = {"A": {"srcc": 0.9, "plcc": 0.9, "acc": 0.6}, "B": {"srcc": 0.6, "plcc": 0.6, "acc": 0.8}}


def test_simplex_grid():
    grid = simplex_grid(0.05)
    assert grid.shape == (231, 3)
    assert np.allclose(grid.sum(axis=1), 1) and grid.min() == 0
    assert len({tuple(np.round(w, 6)) for w in grid}) == 231
    assert simplex_grid(0.25).shape == (15, 3)
    with pytest.raises(UserInputError, match="whole steps"):
        simplex_grid(0.3)


def test_a_flip_at_a_weight_computed_by_hand():
    result = weight_sensitivity(FLIP, track="alignment")
    assert result["official_ranking"] == ["A", "B"]
    assert result["systems"]["A"]["main_score"] == pytest.approx(0.75)
    assert result["systems"]["B"]["main_score"] == pytest.approx(0.70)
    named = {w["name"]: w for w in result["weightings"] if w["name"]}
    assert list(named) == ["official", "equal_thirds", "correlation_only", "acc_only"]
    assert named["equal_thirds"]["ranking"] == ["A", "B"]  # 0.8 vs 0.667
    assert named["correlation_only"]["ranking"] == ["A", "B"]
    assert named["acc_only"]["ranking"] == ["B", "A"] and named["acc_only"]["kendall_tau"] == -1.0
    grid = [w for w in result["weightings"] if w["name"] is None]
    assert len(grid) == result["grid"]["points"] == 231
    for w in grid:
        # B leads exactly where w_acc > 0.6; at 0.6 they tie and the official order stays.
        expected = ["B", "A"] if w["weights"]["acc"] > 0.6 + 1e-9 else ["A", "B"]
        assert w["ranking"] == expected, w["weights"]
    # w_acc in {0.65, ..., 1.0}: 8 + 7 + ... + 1 = 36 grid weightings.
    (flip,) = result["rank_flips"]
    assert (flip["ahead"], flip["behind"]) == ("A", "B")
    assert flip["official_margin"] == pytest.approx(0.05)
    assert len(flip["grid_weights"]) == 36 and flip["grid_share"] == pytest.approx(36 / 231)
    assert all(w["acc"] > 0.6 for w in flip["grid_weights"])
    assert flip["named"] == ["acc_only"]
    # The tie line is w_acc = 0.6; its point nearest (0.25, 0.25, 0.5) is (0.2, 0.2, 0.6).
    tie = flip["nearest_tie"]
    assert [tie["weights"][p] for p in ("srcc", "plcc", "acc")] == pytest.approx([0.2, 0.2, 0.6])
    assert tie["distance"] == pytest.approx(np.sqrt(0.05**2 * 2 + 0.1**2))
    assert result["grid"]["official_ranking_holds"] == 231 - 36
    assert result["grid"]["winners"] == {"A": 195, "B": 36}


def test_nearest_tie_stays_on_the_simplex():
    # The tie line w . (1, -3, 0) = 0 crosses the simplex from (0, 0, 1) to (0.75, 0.25, 0); its
    # point nearest (0.8, 0.2, 0) without the constraint w >= 0 lies outside, so the end is taken.
    point = nearest_tie([1.0, -3.0, 0.0], [0.8, 0.2, 0.0])
    assert point.min() >= 0 and point.sum() == pytest.approx(1)
    assert point @ np.array([1.0, -3.0, 0.0]) == pytest.approx(0, abs=1e-12)
    assert point == pytest.approx([0.75, 0.25, 0.0])
    assert nearest_tie([0.1, 0.2, 0.0], [0.25, 0.25, 0.5]) is None  # every part favours the first


def test_kendall_tau_and_rankings_under_named_weightings_for_several_systems():
    systems = {"x": {"srcc": 0.8, "plcc": 0.7, "acc": 0.70}, "y": {"srcc": 0.5, "plcc": 0.9, "acc": 0.75},
               "z": {"srcc": 0.9, "plcc": 0.85, "acc": 0.60}, "w": {"srcc": 0.4, "plcc": 0.4, "acc": 0.90}}
    result = weight_sensitivity(systems)
    official = result["official_ranking"]
    scores = {n: 0.25 * s["srcc"] + 0.25 * s["plcc"] + 0.5 * s["acc"] for n, s in systems.items()}
    assert official == sorted(scores, key=lambda n: -scores[n])
    for row in result["weightings"]:
        w = row["weights"]
        by_hand = {n: w["srcc"] * s["srcc"] + w["plcc"] * s["plcc"] + w["acc"] * s["acc"] for n, s in systems.items()}
        # ties (x, z and w score 0.7 at weights (0, 0.4, 0.6)) keep the official order
        assert row["ranking"] == sorted(by_hand, key=lambda n: (-round(by_hand[n], 9), official.index(n)))
        tau = kendalltau([official.index(n) for n in systems], [row["ranking"].index(n) for n in systems])[0]
        assert row["kendall_tau"] == pytest.approx(tau)
    flipped = {(f["ahead"], f["behind"]) for f in result["rank_flips"]}
    for i, a in enumerate(official):
        for b in official[i + 1:]:
            reversed_somewhere = any(row["ranking"].index(b) < row["ranking"].index(a)
                                     for row in result["weightings"])
            if reversed_somewhere:
                assert (a, b) in flipped


def test_weight_sensitivity_errors():
    with pytest.raises(UserInputError, match="at least 2 systems"):
        weight_sensitivity({"A": FLIP["A"]})
    with pytest.raises(UserInputError, match="missing part"):
        weight_sensitivity({"A": FLIP["A"], "B": {"srcc": 1.0}})
    with pytest.raises(UserInputError, match="summing to 1"):
        weight_sensitivity(FLIP, weightings={"bad": (0.5, 0.5, 0.5)})


def _alignment_files(tmp_path, n=40):
    rng = np.random.default_rng(7)
    truth = []
    for i in range(n):
        elements = {f"thing {j} (object)": float(rng.integers(0, 4) / 3) for j in range(int(rng.integers(1, 4)))}
        truth.append({"prompt": f"prompt {i}", "img_path": f"G{i % 3}/{i:03d}.png",
                      "total_score": float(rng.uniform(1, 5)), "element_score": elements})
    write_alignment_truth(truth, tmp_path / "eval.json")
    paths = {}
    # good correlations / fair elements, fair correlations / good elements, poor both
    for name, noise, flip in (("sharp", 0.4, 0.15), ("balanced", 1.2, 0.02), ("weak", 2.5, 0.35)):
        sub = [{"prompt": r["prompt"], "img_path": r["img_path"], "total_score": r["total_score"] + rng.normal(0, noise),
                "element_score": {k: 1 - v if rng.random() < flip else v for k, v in r["element_score"].items()}}
               for r in truth]
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(sub))
    return tmp_path / "eval.json", paths


def test_analyze_weights_cli_on_alignment_files(tmp_path, capsys):
    truth, subs = _alignment_files(tmp_path)
    args = ["analyze", "weights", "--truth", str(truth), *[a for n, p in subs.items() for a in ("--submission", f"{n}={p}")],
            "--n-resamples", "40", "--seed", "3"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"systems", "official_ranking", "weightings", "rank_flips", "bootstrap"}
    assert result["analysis"] == "weights" and result["track"] == "alignment" and result["num_images"] == 40
    # Each system's parts are the official scores of its submission.
    for name, path in subs.items():
        official = score_alignment_files(truth, path)
        for key in ("srcc", "plcc", "acc", "main_score"):
            assert result["systems"][name][key] == pytest.approx(official[key], abs=1e-12), (name, key)
    mains = {n: s["main_score"] for n, s in result["systems"].items()}
    assert result["official_ranking"] == sorted(mains, key=lambda n: -mains[n])
    for row in result["weightings"]:
        assert set(row) == {"name", "weights", "scores", "ranking", "kendall_tau"}
        assert sum(row["weights"].values()) == pytest.approx(1)
    # Bootstrap rank probabilities: each system's sum to 1, and so does each rank's.
    probabilities = np.array([result["bootstrap"][n]["rank_probabilities"] for n in result["official_ranking"]])
    assert probabilities.shape == (3, 3)
    assert np.allclose(probabilities.sum(axis=1), 1) and np.allclose(probabilities.sum(axis=0), 1)
    assert result["bootstrap"]["weak"]["rank_probabilities"][-1] > 0.9
    for name in subs:
        lo, hi = result["bootstrap"][name]["score_ci"]
        assert lo < hi
    assert result["bootstrap_settings"]["n_resamples"] == 40

    assert main(args[:-4] + ["--n-resamples", "0"]) == 0
    text = capsys.readouterr().out
    assert "named weightings" in text and "acc_only" in text and "rank flips" in text
    assert " > ".join(result["official_ranking"]) in text


def test_bootstrap_ranks_are_paired_and_reproducible():
    rng = np.random.default_rng(0)
    n = 30
    ref = rng.uniform(1, 5, n)
    elements = [[1.0, 0.0]] * n
    good = AlignmentParts.from_arrays(ref + rng.normal(0, 1.0, n), ref, [[0.9, 0.1]] * n, elements)
    noisy = AlignmentParts.from_arrays(ref + rng.normal(0, 3.0, n), ref, [[0.1, 0.1]] * n, elements)
    first = bootstrap_ranks({"good": good, "noisy": noisy}, order=["good", "noisy"], n_resamples=20, seed=1)
    # Far better ACC (1 vs 0.5) and correlations: first on every resample.
    assert first["systems"]["good"]["rank_probabilities"] == [1.0, 0.0]
    assert first["valid_resamples"] == 20
    assert bootstrap_ranks({"good": good, "noisy": noisy}, order=["good", "noisy"], n_resamples=20, seed=1) == first
    # Paired: a copy of a system scores the same on every resample, so the tie keeps the given order.
    twin = AlignmentParts(**{**good.__dict__, "image_ids": list(good.image_ids)})
    paired = bootstrap_ranks({"good": good, "twin": twin}, order=["twin", "good"], n_resamples=10, seed=2)
    assert paired["systems"]["twin"]["rank_probabilities"] == [1.0, 0.0]
    assert paired["systems"]["twin"]["score_ci"] == paired["systems"]["good"]["score_ci"]
    other = AlignmentParts.from_arrays(ref[:-1], ref[:-1], [[0.9, 0.1]] * (n - 1), elements[:-1])
    with pytest.raises(UserInputError, match="other images"):
        bootstrap_ranks({"good": good, "other": other}, order=["good", "other"], n_resamples=5)


def _mask(boxes):
    mask = np.zeros((512, 512), np.uint8)
    for y, x, h, w in boxes:
        mask[y:y + h, x:x + w] = 1
    return mask


def test_structure_variant_on_tiny_pickles(tmp_path, capsys):
    rng = np.random.default_rng(5)
    gt, subs = {}, {"near": {}, "shifted": {}, "empty_ish": {}}
    for i in range(8):
        y, x = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        gt[f"img{i}"] = {"pred_area": _mask([(y, x, 80, 80)]), "score": float(1 + i * 0.5)}
        # near: the right region, noisy score; shifted: a region half off, good score; empty_ish: a far region.
        subs["near"][f"img{i}"] = {"pred_area": _mask([(y + 5, x + 5, 80, 80)])[::2, ::2].copy(),
                                   "score": float(1 + i * 0.5 + rng.normal(0, 1.0))}
        subs["shifted"][f"img{i}"] = {"pred_area": _mask([(y + 60, x + 60, 80, 80)]),
                                      "score": float(1 + i * 0.5 + rng.normal(0, 0.1))}
        subs["empty_ish"][f"img{i}"] = {"pred_area": _mask([(440, 440, 40, 40)]), "score": float(rng.uniform(1, 5))}
    (tmp_path / "gt.pkl").write_bytes(pickle.dumps(gt))
    for name, sub in subs.items():
        (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(sub))
    args = ["analyze", "weights", "--truth", str(tmp_path / "gt.pkl"),
            *[a for n in subs for a in ("--submission", f"{n}={tmp_path / f'{n}.pkl'}")], "--n-resamples", "20"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["track"] == "structure" and result["parts"] == ["f1", "plcc", "srcc"]
    assert result["official_weights"] == {"f1": 0.7, "plcc": 0.15, "srcc": 0.15}
    for name in subs:
        official = score_structure_files(tmp_path / "gt.pkl", tmp_path / f"{name}.pkl")
        for key in ("f1", "plcc", "srcc", "final_score"):
            assert result["systems"][name][key] == pytest.approx(official[key], abs=1e-12), (name, key)
    named = {w["name"]: w["ranking"] for w in result["weightings"] if w["name"]}
    assert set(named) == {"official", "equal_thirds", "correlation_only", "f1_only"}
    f1 = {n: s["f1"] for n, s in result["systems"].items()}
    assert named["f1_only"][0] == max(f1, key=f1.get)
    corr = {n: s["plcc"] + s["srcc"] for n, s in result["systems"].items()}
    assert named["correlation_only"][0] == max(corr, key=corr.get)
    for entry in result["bootstrap"].values():
        assert sum(entry["rank_probabilities"]) == pytest.approx(1)


def test_analyze_weights_errors(tmp_path, capsys):
    truth, subs = _alignment_files(tmp_path, n=12)
    assert main(["analyze", "weights", "--truth", str(truth), "--submission", f"a={subs['sharp']}"]) == 2
    assert "at least 2 submissions" in capsys.readouterr().err
    assert main(["analyze", "weights", "--truth", str(truth), "--submission", f"a={subs['sharp']}",
                 "--submission", f"a={subs['weak']}"]) == 2
    assert "given twice" in capsys.readouterr().err
    odd = tmp_path / "truth.txt"
    odd.write_text("[]")
    with pytest.raises(UserInputError, match="--track"):
        analyze_weights(odd, {"a": subs["sharp"], "b": subs["weak"]})
    short = json.loads(subs["weak"].read_text())[:-1]
    (tmp_path / "short.json").write_text(json.dumps(short))
    assert main(["analyze", "weights", "--truth", str(truth), "--submission", f"a={subs['sharp']}",
                 "--submission", f"b={tmp_path / 'short.json'}", "--n-resamples", "0"]) == 2
    assert "short.json" in capsys.readouterr().err
