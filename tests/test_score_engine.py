"""The scoring engine: folder input, bad images, resume after kill -9, data-loader workers.

The models here are small deterministic stand-ins with the real models' ``score`` / ``predict``
signatures (spec ``test_score_engine:make_fake_align``), so these tests pin the engine's own
behaviour; ``test_score_models.py`` runs the real tiny models end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalmuse_models.cli import main as main_cli
from evalmuse_models.models.evalmuse_align import AlignmentResult
from evalmuse_models.scoring import read_results, rle_to_mask, score
from evalmuse_models.utils import UserInputError

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


class FakeAlign:
    """Overall score and element probabilities computed from the pixels and the text."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def score(self, images, prompts, elements=None, batch_size=16, processor=None):
        if self.delay:
            time.sleep(self.delay)
        out = []
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            level = float(np.asarray(image, dtype=np.float32).mean()) / 255.0
            keys = (elements[i] if elements else None) or []
            out.append(
                AlignmentResult(
                    overall=1.0 + 4.0 * level,
                    elements={k: ((len(k) + len(prompt)) % 7) / 6.0 * level for k in keys},
                    unmatched_elements=[k for k in keys if k.split(" (")[0] not in prompt],
                )
            )
        return out


class FakeStructure:
    """Heatmap = the grey levels; mask = pixels brighter than mid-grey."""

    def predict(self, images, prompts=None, batch_size=8, processor=None, threshold=None):
        out = []
        for image in images:
            grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
            heat = np.asarray(image.convert("L").resize((512, 512)), dtype=np.float32) / 255.0
            mask = (grey > (0.5 if threshold is None else threshold)).astype(np.uint8)
            ys, xs = np.nonzero(mask)
            regions = [{"bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                        "area": float(mask.sum())}] if len(xs) else []
            out.append({"score": float(1 - grey.mean()), "heatmap": heat, "mask": mask,
                        "mask_512": (heat > 0.5).astype(np.uint8), "regions": regions})
        return out


def make_fake_align(device=None, dtype=None):
    return FakeAlign(delay=float(os.environ.get("FAKE_SCORER_DELAY", "0")))


def make_fake_structure(device=None, dtype=None):
    return FakeStructure()


def write_image_folder(folder: Path, count: int = 10, *, bad: bool = True, fmt: str = "jsonl") -> list[str]:
    """``count`` small images in two generator folders, a prompts file, and (if ``bad``) a corrupt and a missing image."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        generator = "gen-a" if i % 2 == 0 else "gen-b"
        (folder / generator).mkdir(parents=True, exist_ok=True)
        name = f"{generator}/{i:03d}.png"
        size = (40 + 4 * i, 32 + 2 * i)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
        rows.append({"image": name, "prompt": f"a red cube number {i}", "generator": generator,
                     "elements": ["red cube (object)", "red (color)", f"number {i} (counting)"]})
    if bad:
        (folder / "gen-a" / "corrupt.png").write_bytes(b"not a png at all")
        rows.append({"image": "gen-a/corrupt.png", "prompt": "a corrupt file", "generator": "gen-a"})
        rows.append({"image": "gen-b/missing.png", "prompt": "a missing file", "generator": "gen-b"})
    if fmt == "jsonl":
        (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import csv

        with open(folder / "prompts.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "prompt", "elements", "generator"])
            writer.writeheader()
            for r in rows:
                writer.writerow({**r, "elements": "|".join(r.get("elements", []))})
    return [r["image"] for r in rows]


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "images"
    ids = write_image_folder(folder)
    return folder, ids


def _strip(rows):
    return [{k: v for k, v in row.items() if k != "meta"} for row in rows]


def test_folder_scoring_rows_and_errors(image_folder, tmp_path):
    folder, ids = image_folder
    out = tmp_path / "results.jsonl"
    summary = score(folder, out=out, align=FakeAlign(), structure=FakeStructure(), batch_size=3, progress=False)
    rows = read_results(out)
    assert [r["id"] for r in rows] == ids
    assert summary["rows"] == len(ids) and summary["scored"] == len(ids) and summary["errors"] == 2
    by_id = {r["id"]: r for r in rows}
    assert by_id["gen-a/corrupt.png"]["status"] == "error"
    assert "cannot read image" in by_id["gen-a/corrupt.png"]["error"]
    assert by_id["gen-b/missing.png"]["status"] == "error"
    assert "alignment" not in by_id["gen-b/missing.png"]
    good = by_id["gen-a/000.png"]
    assert good["status"] == "ok" and good["generator"] == "gen-a"
    image = Image.open(folder / "gen-a/000.png").convert("RGB")
    expected = FakeAlign().score([image], [good["prompt"]], [good["elements"]])[0]
    assert good["alignment"] == expected.to_dict()  # the row's alignment object is AlignmentResult.to_dict()
    expected_mask = FakeStructure().predict([image])[0]["mask"]
    mask = rle_to_mask(good["structure"]["mask"])
    assert mask.shape == (image.height, image.width)
    np.testing.assert_array_equal(mask, expected_mask)
    assert good["structure"]["regions"][0]["area"] == expected_mask.sum()
    assert good["width"] == image.width and good["meta"]["device"] == "cpu"
    assert good["source"]["path"] == str((folder / "gen-a/000.png").resolve())


def test_csv_prompts_and_workers_give_the_same_rows(tmp_path):
    folder = tmp_path / "csv_images"
    write_image_folder(folder, count=6, fmt="csv")
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    score(folder, out=a, align=FakeAlign(), structure=FakeStructure(), batch_size=4, progress=False)
    score(folder, out=b, align=FakeAlign(), structure=FakeStructure(), batch_size=2, num_workers=2, progress=False)
    rows = read_results(a)
    assert rows[0]["elements"] == ["red cube (object)", "red (color)", "number 0 (counting)"]
    assert _strip(rows) == _strip(read_results(b))


def test_resume_skips_done_rows_and_repairs_a_torn_line(image_folder, tmp_path):
    folder, ids = image_folder
    full = tmp_path / "full.jsonl"
    score(folder, out=full, align=FakeAlign(), structure=FakeStructure(), progress=False)
    lines = full.read_bytes().splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_bytes(b"".join(lines[:4]) + lines[4][: len(lines[4]) // 2])  # a kill mid-write
    summary = score(folder, out=partial, align=FakeAlign(), structure=FakeStructure(), progress=False)
    assert summary["skipped"] == 4 and summary["scored"] == len(ids) - 4
    assert _strip(read_results(partial)) == _strip(read_results(full))


def test_resume_with_other_models_is_refused(image_folder, tmp_path):
    folder, _ = image_folder
    out = tmp_path / "r.jsonl"
    score(folder, out=out, align="test_score_engine:make_fake_align", progress=False, limit=2)
    with pytest.raises(UserInputError, match="--overwrite"):
        score(folder, out=out, align=FakeAlign(), progress=False)
    summary = score(folder, out=out, align=FakeAlign(), progress=False, overwrite=True)
    assert summary["skipped"] == 0 and summary["rows"] == 12


def test_bad_inputs_raise_clear_errors(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(UserInputError, match="no prompts file"):
        score(folder, out=tmp_path / "o.jsonl", align=FakeAlign(), progress=False)
    (folder / "prompts.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(UserInputError, match=r"line 1: missing field 'prompt'"):
        score(folder, out=tmp_path / "o.jsonl", align=FakeAlign(), progress=False)
    (folder / "prompts.jsonl").write_text('{"image": "a.png", "prompt": "x"}\n{"image": "a.png", "prompt": "y"}\n')
    with pytest.raises(UserInputError, match="listed twice"):
        score(folder, out=tmp_path / "o.jsonl", align=FakeAlign(), progress=False)
    with pytest.raises(UserInputError, match="nothing to score"):
        score(folder, out=tmp_path / "o.jsonl", progress=False)
    (folder / "prompts.jsonl").write_text('{"image": "a.png", "prompt": "x"}\n')
    with pytest.raises(UserInputError, match="cannot load dataset org/nonexistent"):
        score("org/nonexistent", config="alignment", out=tmp_path / "o.jsonl", align=FakeAlign(), progress=False)
    with pytest.raises(UserInputError, match="no predict"):
        score(folder, out=tmp_path / "o.jsonl", structure=FakeAlign(), progress=False)


def test_structure_only_needs_no_prompts_file(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.new("RGB", (20, 10), (255, 255, 255)).save(folder / "white.png")
    Image.new("RGB", (20, 10), (0, 0, 0)).save(folder / "black.png")
    score(folder, out=tmp_path / "s.jsonl", structure=FakeStructure(), progress=False)
    rows = {r["id"]: r for r in read_results(tmp_path / "s.jsonl")}
    assert rows["white.png"]["structure"]["mask"] == {"size": [10, 20], "counts": [0, 200]}
    assert rows["black.png"]["structure"]["regions"] == []


def _cli(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
           **(env_extra or {})}
    return [sys.executable, "-m", "evalmuse_models", *args], env


def test_kill_9_then_resume_loses_and_duplicates_nothing(image_folder, tmp_path):
    folder, ids = image_folder
    out = tmp_path / "killed.jsonl"
    cmd, env = _cli("score", str(folder), "--out", str(out), "--align", "test_score_engine:make_fake_align",
                    "--structure", "test_score_engine:make_fake_structure", "--batch-size", "1",
                    "--num-workers", "0", "--no-progress", env_extra={"FAKE_SCORER_DELAY": "0.3"})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(read_results(out))
    assert 3 <= written < len(ids), "the run should have been killed part-way"
    cmd, env = _cli("score", str(folder), "--out", str(out), "--align", "test_score_engine:make_fake_align",
                    "--structure", "test_score_engine:make_fake_structure", "--num-workers", "0", "--no-progress")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == written and summary["rows"] == len(ids)
    rows = read_results(out)
    assert [r["id"] for r in rows] == ids
    reference = tmp_path / "reference.jsonl"
    score(folder, out=reference, align=FakeAlign(), structure=FakeStructure(), progress=False)
    strip = [{k: v for k, v in r.items() if k != "meta"} for r in rows]
    assert strip == _strip(read_results(reference))


class PickyAlign(FakeAlign):
    """Fails on images narrower than 50 px (a data-dependent model error)."""

    def score(self, images, prompts, elements=None, batch_size=16, processor=None):
        if any(image.width < 50 for image in images):
            raise ValueError("image too small for this model")
        return super().score(images, prompts, elements, batch_size, processor)


class BrokenAlign(FakeAlign):
    def score(self, images, prompts, elements=None, batch_size=16, processor=None):
        raise RuntimeError("weights are garbage")


def test_model_errors_on_some_images_are_rows_a_broken_model_stops_the_run(image_folder, tmp_path, monkeypatch):
    folder, ids = image_folder
    out = tmp_path / "picky.jsonl"
    summary = score(folder, out=out, align=PickyAlign(), batch_size=4, progress=False)
    rows = {r["id"]: r for r in read_results(out)}
    small = [key for key in ids if key.endswith("png") and rows[key].get("width", 99) < 50]
    assert small and all("image too small" in rows[key]["error"] for key in small)
    assert summary["errors"] == len(small) + 2 and summary["rows"] == len(ids)
    assert rows["gen-a/008.png"]["status"] == "ok"

    with pytest.raises(RuntimeError, match="weights are garbage"):  # every image of a batch fails
        score(folder, out=tmp_path / "broken.jsonl", align=BrokenAlign(), batch_size=4, progress=False)
    monkeypatch.setattr("evalmuse_models.scoring.engine.MAX_MODEL_FAILURES_IN_A_ROW", 3)
    with pytest.raises(RuntimeError, match="failed on 3 images in a row"):  # one image per batch
        score(folder, out=tmp_path / "broken1.jsonl", align=BrokenAlign(), batch_size=1, progress=False)
    assert len(read_results(tmp_path / "broken1.jsonl")) == 2, "rows before the stop are kept, the stop batch is not"


def test_retry_errors_rescores_fixed_images(image_folder, tmp_path):
    folder, ids = image_folder
    out = tmp_path / "retry.jsonl"
    score(folder, out=out, align=FakeAlign(), progress=False)
    Image.new("RGB", (60, 40), (200, 10, 10)).save(folder / "gen-a" / "corrupt.png")  # the user fixes the file
    summary = score(folder, out=out, align=FakeAlign(), progress=False)
    assert summary["scored"] == 0, "a plain resume keeps error rows"
    assert main_cli(["score", str(folder), "--out", str(out), "--align", "test_score_engine:make_fake_align",
                     "--retry-errors", "--no-progress"]) == 2  # other model spec: refused before touching the file
    summary = score(folder, out=out, align=FakeAlign(), progress=False, retry_errors=True)
    assert summary["scored"] == 2 and summary["errors"] == 1
    rows = read_results(out)
    assert [r["id"] for r in rows] == ids
    by_id = {r["id"]: r for r in rows}
    assert by_id["gen-a/corrupt.png"]["status"] == "ok" and by_id["gen-b/missing.png"]["status"] == "error"
