"""``evalmuse score`` with the package's real (tiny, random) models loaded from local folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evalmuse_models.cli import main
from evalmuse_models.scoring import read_results, rle_to_mask, score
from evalmuse_models.utils import UserInputError


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from evalmuse_models.testing import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("models"))


def test_dataset_split_with_both_models_matches_direct_calls(prepared_dataset, model_dirs, tmp_path):
    import datasets
    from transformers import AutoModel, AutoProcessor

    align_dir, structure_dir = model_dirs
    out = tmp_path / "r.jsonl"
    assert main(["score", str(prepared_dataset), "--config", "alignment", "--split", "test", "--out", str(out),
                 "--align", str(align_dir), "--structure", str(structure_dir), "--batch-size", "4",
                 "--num-workers", "0", "--limit", "6", "--no-progress"]) == 0
    rows = read_results(out)
    split = datasets.load_dataset(str(prepared_dataset), "alignment", split="test")
    assert [r["id"] for r in rows] == split["img_path"][:6]
    assert all(r["status"] == "ok" for r in rows)
    assert rows[0]["source"]["config"] == "alignment" and rows[0]["source"]["index"] == 0

    images = [split[i]["image"].convert("RGB") for i in range(2)]
    model = AutoModel.from_pretrained(align_dir).eval()
    processor = AutoProcessor.from_pretrained(align_dir)
    direct = model.score(images, split["prompt"][:2], elements=[rows[i]["elements"] for i in range(2)],
                         processor=processor)
    for row, expected in zip(rows, direct):
        assert row["alignment"].keys() == expected.to_dict().keys()  # the row holds AlignmentResult.to_dict()
        assert row["alignment"]["overall"] == pytest.approx(expected.overall, abs=1e-5)
        assert row["alignment"]["elements"] == pytest.approx(expected.elements, abs=1e-5)
        assert row["alignment"]["token_scores"] == pytest.approx(expected.token_scores, abs=1e-5)
        assert row["alignment"]["unmatched_elements"] == expected.unmatched_elements
    from evalmuse_models.models.evalmuse_structure import EvalMuseStructureProcessor

    structure = AutoModel.from_pretrained(structure_dir).eval()
    structure_processor = EvalMuseStructureProcessor.from_model_config(structure.config)  # what the scorer builds
    predicted = structure.predict(images, prompts=split["prompt"][:2], processor=structure_processor)
    for row, expected in zip(rows, predicted):
        assert row["structure"]["score"] == pytest.approx(expected.score, abs=1e-5)
        np.testing.assert_array_equal(rle_to_mask(row["structure"]["mask"]), expected.mask)
        assert row["structure"]["threshold"] == pytest.approx(expected.threshold)
        assert 1 <= row["structure"]["score"] <= 5 and 1 <= row["alignment"]["overall"] <= 5


def test_structure_split_keeps_labels(prepared_dataset, model_dirs, tmp_path):
    import datasets

    out = tmp_path / "s.jsonl"
    summary = score(prepared_dataset, config="structure", split="test", out=out, structure=str(model_dirs[1]),
                    limit=3, progress=False)
    assert summary["rows"] == 3
    split = datasets.load_dataset(str(prepared_dataset), "structure", split="test")
    rows = read_results(out)
    for i, row in enumerate(rows):
        assert row["id"] == split[i]["image_name"]
        assert row["reference"]["mos"] == pytest.approx(split[i]["mos"])
        truth = (np.asarray(split[i]["mask"]) > 127).astype(np.uint8)
        np.testing.assert_array_equal(rle_to_mask(row["reference"]["mask"]), truth)
        assert rle_to_mask(row["structure"]["mask"]).shape == truth.shape
        assert row["structure"]["threshold"] == pytest.approx(40 / 255)  # the model's default, for the report
    score(prepared_dataset, config="structure", split="test", out=tmp_path / "t.jsonl", structure=str(model_dirs[1]),
          limit=1, threshold=0.5, progress=False)
    assert read_results(tmp_path / "t.jsonl")[0]["structure"]["threshold"] == 0.5


def test_wrong_model_kind_and_missing_folder(model_dirs, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "a.png")
    (folder / "prompts.jsonl").write_text('{"image": "a.png", "prompt": "a cat"}\n')
    with pytest.raises(UserInputError, match="needs an evalmuse_align model"):
        score(folder, out=tmp_path / "o.jsonl", align=str(model_dirs[1]), progress=False)
    with pytest.raises(UserInputError, match="no config.json"):
        score(folder, out=tmp_path / "o.jsonl", align=str(tmp_path), progress=False)
    with pytest.raises(UserInputError, match="does not exist locally"):
        score(folder, out=tmp_path / "o.jsonl", align="no/such/model", progress=False)
    weights_only = tmp_path / "weights-only"  # an alignment model saved without its processor
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).write_bytes((model_dirs[0] / name).read_bytes())
    with pytest.raises(UserInputError, match="no processor"):
        score(folder, out=tmp_path / "o.jsonl", align=str(weights_only), progress=False)


def test_mllm_judge_spec(tmp_path):
    from test_score_engine import write_image_folder

    from evalmuse_models.scoring.submission import write_submission

    folder = tmp_path / "imgs"
    write_image_folder(folder, count=2, bad=False)
    out = tmp_path / "m.jsonl"
    score(folder, out=out, align="mllm:tiny", progress=False)
    rows = read_results(out)
    assert rows[0]["meta"]["align_model"] == "mllm:tiny"
    assert set(rows[0]["alignment"]["elements"]) == set(rows[0]["elements"])
    assert all(1 <= r["alignment"]["overall"] <= 5 for r in rows)
    written = write_submission(out, tmp_path / "sub")
    assert "LLM[1] / Non-LLM[0] : 1" in written["alignment"]["readme"].read_text()
