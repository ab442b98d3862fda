"""The released NTIRE 2025 scoring programs, re-implemented here straightforwardly from a reading of
``NTIRE2025/Track1_Alignment/evaluate.py`` and ``NTIRE2025/Track2_Structure/evaluate.py``
(DYEvaLab/EvalMuse), and compared with the package on inputs carrying the quirks of the real files:
flat image paths, byte-exact messy element keys, element scores outside [0, 1], masks at each
image's original size in every dtype OpenCV resizes, empty masks, extra submitted images, scores
min-max rescaled to [1, 5]. ``evalmuse eval --codalab`` must write the same ``scores.txt``.
"""

from __future__ import annotations

import json
import pickle
import uuid
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import optimize, stats

from evalmuse_models.cli import main as cli_main
from evalmuse_models.metrics import format_codalab_scores, score_alignment_files, score_codalab
from evalmuse_models.utils import UserInputError

# --- the released programs, as read ------------------------------------------------------------


def _logistic(x, b1, b2, b3, b4):
    return b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4)))


def _fit_then_pearson(x, target):
    """Fit the logistic x -> target from the scorers' initial guess; Pearson(target, f(x))."""
    x, target = np.asarray(x, float), np.asarray(target, float)
    p0 = [np.max(target), np.min(target), np.mean(x), np.std(x)]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        popt, _ = optimize.curve_fit(_logistic, x, target, p0=p0, maxfev=int(1e8))
    return stats.pearsonr(target, _logistic(x, *popt))[0]


def released_track1(input_dir: Path, output_dir: Path) -> dict:
    truth = json.loads((input_dir / "ref" / "eval.json").read_text(encoding="utf-8"))
    sub = json.loads((input_dir / "res" / "output.json").read_text(encoding="utf-8"))
    truth.sort(key=lambda r: r["img_path"])
    sub.sort(key=lambda r: r["img_path"])
    true_total, sub_total, true_el, sub_el = [], [], [], []
    for i, t in enumerate(truth):  # zipped by position after sorting
        true_total.append(t["total_score"])
        sub_total.append(sub[i]["total_score"])
        for key in t["element_score"]:
            true_el.append(t["element_score"][key])
            sub_el.append(sub[i]["element_score"][key])
    srcc = stats.spearmanr(sub_total, true_total)[0]
    # The released script fits from the TRUE scores to the SUBMITTED ones.
    plcc = _fit_then_pearson(true_total, sub_total)
    acc = np.sum((np.array(true_el) >= 0.5) == (np.array(sub_el) >= 0.5)) / len(true_el)
    final = srcc * 0.25 + plcc * 0.25 + acc * 0.5
    text = f"SRCC: {srcc:.4f}\nPLCC: {plcc:.4f}\nACC: {acc:.4f}\nFinal_Score: {final:.4f}\n"
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "scores.txt").write_bytes(text.encode() + (input_dir / "res" / "readme.txt").read_bytes())
    return {"srcc": srcc, "plcc": plcc, "acc": acc, "main_score": final}


def _contours(mask):
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return list(found)


def _filled(contour, shape):
    canvas = np.zeros(shape, np.uint8)
    cv2.drawContours(canvas, [contour], -1, 1, thickness=cv2.FILLED)
    return canvas


def released_track2(input_dir: Path, output_dir: Path) -> dict:
    with open(input_dir / "res" / "output.pkl", "rb") as f:
        pred_data = pickle.load(f)  # test-made files only
    with open(input_dir / "ref" / "gt.pkl", "rb") as f:
        gt_data = pickle.load(f)
    n_pred = n_true = missed = hit = 0
    iou_sum = 0.0
    pred_scores, true_scores = [], []
    for name in gt_data:
        pred_map = cv2.resize(pred_data[name]["pred_area"], (512, 512))
        pred_map[pred_map > 0] = 1
        gt_map = gt_data[name]["pred_area"]
        pred_scores.append(pred_data[name]["score"])
        true_scores.append(gt_data[name]["score"])
        preds = [c for c in _contours(pred_map) if cv2.contourArea(c) > 512 * 512 * 0.0006]
        trues = [c for c in _contours(gt_map) if cv2.contourArea(c) > 150]
        pf = [_filled(c, pred_map.shape) for c in preds]
        tf = [_filled(c, gt_map.shape) for c in trues]

        def iou(a, b):
            union = np.logical_or(a, b).sum()
            return 0.0 if union == 0 else np.logical_and(a, b).sum() / union

        true_hits, pred_hits = [0] * len(trues), [0] * len(preds)
        for i in range(len(preds)):
            for j in range(len(trues)):
                if iou(pf[i], tf[j]) > 0.1:
                    true_hits[j] = pred_hits[i] = 1
                    break
        for j in range(len(trues)):
            if true_hits[j]:
                continue
            for i in range(len(preds)):
                if iou(pf[i], tf[j]) > 0.1:
                    true_hits[j] = pred_hits[i] = 1
                    break
        fg_pred, fg_true = pred_map == 1, gt_map == 1
        iou_sum += (np.logical_and(fg_pred, fg_true).sum() + 1e-4) / (np.logical_or(fg_pred, fg_true).sum() + 1e-4)
        n_true += len(trues)
        n_pred += len(preds)
        missed += true_hits.count(0)
        hit += sum(pred_hits)
    precision = hit / n_pred
    recall = 1.0 - missed / n_true
    f1 = 2 * precision * recall / (precision + recall + 1e-10)
    plcc = _fit_then_pearson(pred_scores, true_scores)  # here fitted submitted -> true
    srcc = stats.spearmanr(true_scores, pred_scores)[0]
    final = f1 * 0.7 + (plcc + srcc) * 0.3 / 2
    result = {"final_score": final, "srcc": srcc, "plcc": plcc, "precision": precision, "recall": recall,
              "f1": f1, "giou": iou_sum / len(gt_data)}
    text = "".join(
        f"{label}: {result[key]:.4f}\n"
        for label, key in [("Final_Score", "final_score"), ("SRCC", "srcc"), ("PLCC", "plcc"),
                           ("Precision", "precision"), ("Recall", "recall"), ("F1_Score", "f1"), ("GIoU", "giou")]
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "scores.txt").write_bytes(text.encode() + (input_dir / "res" / "readme.txt").read_bytes())
    return result


# --- inputs with the real files' quirks ----------------------------------------------------------

README = "runtime per image [s] : 0.42\nCPU[1] / GPU[0] : 0\nExtra Data [1] / No Extra Data [0] : 1\n" \
         "LLM[1] / Non-LLM[0] : 1\nOther description : Qwen2.5-VL + LoRA, 5 checkpoints (集成)\n"

QUIRKY_KEYS = [
    "Pale (Color) ", "car (object-vehicle)", "cup (object-household goods)", "hat (object-cloth&accessories)",
    "two (counting)", "pig giants (animal)", "man (in red) (human)", "glow (other)", "wooden (Material)",
    "left of (spatial)",
]


def alignment_case(n: int, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    truth, sub = [], []
    for i in range(n):
        keys = list(rng.choice(QUIRKY_KEYS, size=int(rng.integers(0, 5)), replace=False))
        t_total = float(np.round(rng.uniform(1, 5) * 3) / 3)
        img = f"img_{i + 1:04d}.png"  # flat paths, as in the validation and test releases
        truth.append({"prompt": f"“{i}” 一只猫 ", "img_path": img, "total_score": t_total,
                      "element_score": {k: float(rng.integers(0, 4) / 3) for k in keys}})
        # Element scores slightly outside [0, 1], as in a real submission (up to 1.036).
        sub.append({"prompt": truth[-1]["prompt"], "img_path": img,
                    "total_score": float(t_total * 0.8 + rng.normal(0, 0.6)),
                    "element_score": {k: float(np.clip(rng.uniform(-0.05, 1.04), -0.05, 1.036)) for k in keys}})
    rng.shuffle(sub)  # any order: records are paired by img_path
    return truth, sub


def _write_alignment_input(root: Path, truth, sub, readme: str | None = README) -> Path:
    (root / "ref").mkdir(parents=True)
    (root / "res").mkdir()
    (root / "ref" / "eval.json").write_text(json.dumps(truth, ensure_ascii=False), encoding="utf-8")
    (root / "res" / "output.json").write_text(json.dumps(sub, ensure_ascii=False), encoding="utf-8")
    if readme is not None:
        (root / "res" / "readme.txt").write_text(readme, encoding="utf-8")
    return root


def _image_names(n, rng):
    names = []
    for i in range(n):
        u = uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63)))
        names.append([u.hex, f"1_{u.hex}", str(u)][i % 3])  # 32-hex, 1_<32hex>, dashed UUIDs
    return names


def _truth_mask(rng):
    mask = np.zeros((512, 512), np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        if rng.random() < 0.5:
            x, y = rng.integers(0, 480, 2)
            w, h = rng.integers(8, 120, 2)
            mask[y:y + h, x:x + w] = 1
        else:
            pts = rng.integers(-40, 552, (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1)
    return mask


PRED_DTYPES = [np.uint8, np.float32, np.float64, np.uint16, np.int16]
PRED_SIZES = [(1024, 1024), (1024, 1024), (768, 1344), (512, 512), (1536, 640), (300, 300)]


def structure_case(n: int, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    gt, sub = {}, {}
    raw_scores = rng.normal(size=n)
    rescaled = 1 + 4 * (raw_scores - raw_scores.min()) / np.ptp(raw_scores)  # min-max to [1, 5], as submitted
    for i, name in enumerate(_image_names(n, rng)):
        truth = _truth_mask(rng)
        gt[name] = {"pred_area": truth, "score": float(np.round(rng.uniform(1, 5) * 3) / 3)}
        h, w = PRED_SIZES[i % len(PRED_SIZES)]
        if i % 5 == 4:
            pred = np.zeros((h, w), np.uint8)  # empty masks are common in real submissions
        else:
            # A noisy copy of the truth at the image's original size, plus a stray blob.
            jitter = cv2.resize(truth, (w, h), interpolation=cv2.INTER_NEAREST)
            jitter = np.roll(jitter, int(rng.integers(-30, 30)), axis=int(rng.integers(0, 2)))
            x, y = rng.integers(0, w - 60), rng.integers(0, h - 60)
            jitter[y:y + int(rng.integers(2, 60)), x:x + int(rng.integers(2, 60))] = 1
            dtype = PRED_DTYPES[i % len(PRED_DTYPES)]
            pred = jitter.astype(dtype) * (255 if i % 7 == 3 and dtype is np.uint8 else 1)
            if i % 11 == 6:
                pred = pred[:, :, None]  # (H, W, 1): OpenCV reads it as one channel
        sub[name] = {"pred_area": pred, "score": np.float32(rescaled[i]) if i % 2 else float(rescaled[i])}
    sub["not_in_truth_" + "0" * 20] = {"pred_area": np.ones((64, 64), np.uint8), "score": 3.0}
    return gt, sub


def _write_structure_input(root: Path, gt, sub, readme: str | None = README) -> Path:
    (root / "ref").mkdir(parents=True)
    (root / "res").mkdir()
    (root / "ref" / "gt.pkl").write_bytes(pickle.dumps(gt, protocol=2))
    (root / "res" / "output.pkl").write_bytes(pickle.dumps(sub, protocol=4))
    if readme is not None:
        (root / "res" / "readme.txt").write_text(readme, encoding="utf-8")
    return root


def _assert_close(ours: dict, released: dict):
    for key, value in released.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key


# --- the comparisons --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alignment_equals_the_released_program(tmp_path, seed):
    truth, sub = alignment_case(120, seed)
    root = _write_alignment_input(tmp_path / "in", truth, sub)
    released = released_track1(root, tmp_path / "released")
    with pytest.warns(UserWarning, match=r"outside \[0, 1\]"):
        ours, path = score_codalab("alignment", root, tmp_path / "ours")
    _assert_close(ours, released)
    assert path.read_bytes() == (tmp_path / "released" / "scores.txt").read_bytes()
    with pytest.warns(UserWarning):
        direct = score_alignment_files(root / "ref" / "eval.json", root / "res" / "output.json")
    assert direct == ours  # the Codalab mode is the same computation


@pytest.mark.parametrize("seed", [0, 1])
def test_structure_equals_the_released_program(tmp_path, seed):
    gt, sub = structure_case(36, seed)
    root = _write_structure_input(tmp_path / "in", gt, sub)
    released = released_track2(root, tmp_path / "released")
    with pytest.warns(UserWarning, match="not in the truth and are ignored"):
        ours, path = score_codalab("structure", root, tmp_path / "ours")
    _assert_close(ours, released)
    assert path.read_bytes() == (tmp_path / "released" / "scores.txt").read_bytes()
    assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1  # a case where matching matters


def test_structure_truth_read_as_the_released_program_reads_it(tmp_path):
    # A 0/255 truth: its regions count (any non-zero value), but the released IoU compares `gt == 1`.
    gt, sub = structure_case(12, 5)
    for rec in list(gt.values())[::2]:
        rec["pred_area"] = rec["pred_area"] * np.uint8(255)
    root = _write_structure_input(tmp_path / "in", gt, sub)
    released = released_track2(root, tmp_path / "released")
    with pytest.warns(UserWarning):
        ours, _ = score_codalab("structure", root, tmp_path / "ours")
    _assert_close(ours, released)


def test_cli_codalab_mode_writes_the_released_scores_txt(tmp_path, capsys):
    truth, sub = alignment_case(40, 3)
    root = _write_alignment_input(tmp_path / "a", truth, sub)
    released_track1(root, tmp_path / "a_released")
    assert cli_main(["eval", "alignment", "--codalab", str(root), str(tmp_path / "a_out" / "deep")]) == 0
    written = (tmp_path / "a_out" / "deep" / "scores.txt").read_bytes()
    assert written == (tmp_path / "a_released" / "scores.txt").read_bytes()
    assert capsys.readouterr().out.encode() == written

    gt, sub = structure_case(10, 4)
    root = _write_structure_input(tmp_path / "s", gt, sub, readme=None)
    assert cli_main(["eval", "structure", "--codalab", str(root), str(tmp_path / "s_out"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    text = (tmp_path / "s_out" / "scores.txt").read_text()
    # Without readme.txt (the released programs would stop) only the score lines are written.
    assert text == format_codalab_scores("structure", result)
    assert [line.split(":")[0] for line in text.splitlines()] == [
        "Final_Score", "SRCC", "PLCC", "Precision", "Recall", "F1_Score", "GIoU"]


def test_cli_codalab_mode_refuses_mixed_options(tmp_path, capsys):
    root = _write_alignment_input(tmp_path / "a", *alignment_case(10, 0))
    assert cli_main(["eval", "alignment", "--codalab", str(root), str(tmp_path / "o"),
                     "--plcc-direction", "standard"]) == 2
    assert "drop --plcc-direction" in capsys.readouterr().err
    assert cli_main(["eval", "structure", "--codalab", str(root), str(tmp_path / "o"), "--truth", "gt.pkl"]) == 2
    assert "drop --truth" in capsys.readouterr().err
    assert cli_main(["eval", "alignment", "--truth", "eval.json"]) == 2
    assert "give --truth and --submission, or --codalab" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_codalab_layout_errors_name_the_folder(tmp_path):
    (tmp_path / "ref").mkdir()
    with pytest.raises(UserInputError, match=r"res: no such folder; a Codalab input folder holds ref/gt.pkl"):
        score_codalab("structure", tmp_path, tmp_path / "out")
    (tmp_path / "res").mkdir()
    with pytest.raises(UserInputError, match=r"eval.json: file not found"):
        score_codalab("alignment", tmp_path, tmp_path / "out")
    with pytest.raises(UserInputError, match="track must be one of"):
        score_codalab("fidelity", tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_element_keys_are_matched_byte_exactly(tmp_path):
    # "Pale (Color) " (trailing space) is not "Pale (Color)": the released scorer would raise KeyError.
    truth, sub = alignment_case(10, 6)
    truth[0]["element_score"] = {"Pale (Color) ": 1.0}
    for rec in sub:
        if rec["img_path"] == truth[0]["img_path"]:
            rec["element_score"] = {"Pale (Color)": 1.0}
    root = _write_alignment_input(tmp_path / "in", truth, sub)
    with pytest.raises(UserInputError, match=r"img_0001.png' has no score for element 'Pale \(Color\) '"):
        score_codalab("alignment", root, tmp_path / "out")


def test_per_generator_breakdown_of_flat_paths_uses_the_generator_map(tmp_path, capsys):
    truth, sub = alignment_case(30, 7)
    root = _write_alignment_input(tmp_path / "in", truth, sub)
    mapping = {r["img_path"]: ["SDXL-Turbo", "DALLE3"][i % 2] for i, r in enumerate(truth[:24])}
    (tmp_path / "gen.json").write_text(json.dumps(mapping))
    args = (root / "ref" / "eval.json", root / "res" / "output.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the element scores outside [0, 1]
        plain = score_alignment_files(*args, breakdown=True)
        mapped = score_alignment_files(*args, generator_map=tmp_path / "gen.json")
    assert set(plain["per_generator"]) == {"(unknown)"}  # flat paths: never the file name
    assert {k: v["n_images"] for k, v in mapped["per_generator"].items()} == {
        "SDXL-Turbo": 12, "DALLE3": 12, "(unknown)": 6}
    # The normalised categories: "Color"/"Material" lower-cased, "object-vehicle" under "object".
    assert set(mapped["per_category_acc"]) <= {"color", "object", "counting", "animal", "human", "other",
                                               "material", "spatial"}
    assert cli_main(["eval", "alignment", "--truth", str(args[0]), "--submission", str(args[1]),
                     "--generator-map", str(tmp_path / "gen.json")]) == 0
    out = capsys.readouterr().out
    assert "per generator" in out and "SDXL-Turbo" in out and "(unknown)" in out
