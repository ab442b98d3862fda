"""``evalmuse refine-masks``: SAM-refined structure masks, on a small synthetic dataset with a tiny random SAM."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from evalmuse_models.cli import main
from evalmuse_models.data.masks import rasterize_annotators, truth_maps
from evalmuse_models.data.refine import REFINED_CONFIG, SamBoxRefiner, refine_annotators, refine_dataset
from evalmuse_models.utils import UserInputError


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    from evalmuse_models.testing.sam import save_random_sam

    return save_random_sam(tmp_path_factory.mktemp("sam") / "tiny-sam")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from evalmuse_models.data import prepare_dataset
    from evalmuse_models.data.synthetic import write_structure_release

    root = tmp_path_factory.mktemp("refine_data")
    write_structure_release(root / "raw", num_images=10, seed=3)
    prepare_dataset(root / "evalmuse", structure_dir=root / "raw", progress=False)
    return root / "evalmuse"


@pytest.fixture(scope="module")
def refined(tmp_path_factory, dataset_dir, sam_dir):
    """The command's output folder and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("refined") / "evalmuse-refined"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["refine-masks", str(dataset_dir), str(out), "--model", str(sam_dir), "--batch-size", "3",
                       "--shard-rows", "3", "--no-progress"])
    assert status == 0
    return out, printed.getvalue()


def _rows(folder, config):
    """Every row of a written config, split by split in file order (raw Parquet, image bytes undecoded)."""
    import pyarrow.parquet as pq

    rows = {}
    for path in sorted((folder / config).glob("*.parquet")):
        rows.setdefault(path.name.split("-")[0], []).extend(pq.read_table(path).to_pylist())
    return rows


def _png(value) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(value["bytes"])))


def test_command_writes_the_refined_config_and_report(refined, dataset_dir):
    from datasets import load_dataset

    out, printed = refined
    source = load_dataset(str(dataset_dir), "structure")
    target = load_dataset(str(out), REFINED_CONFIG)
    assert list(target) == list(source)
    for split in source:
        assert target[split].features == source[split].features  # the same columns: either config trains
        assert len(target[split]) == len(source[split])
    original, rows = _rows(dataset_dir, "structure"), _rows(out, REFINED_CONFIG)
    for split in original:
        for before, after in zip(original[split], rows[split], strict=True):
            for column in ("image", "image_name", "prompt", "mos", "shapes"):
                assert after[column] == before[column]  # image bytes as they were

    report = json.loads((out / "refine_report.json").read_text())
    assert report["analysis"] == "refine" and report["config"] == REFINED_CONFIG
    assert [e["split"] for e in report["images"]] == [split for split in target for _ in range(len(target[split]))]
    for split in rows:
        assert [e["image_name"] for e in report["images"] if e["split"] == split] == [
            row["image_name"] for row in rows[split]]
    summary = report["summary"]
    assert summary["num_images"] == sum(map(len, rows.values()))
    assert summary["area_after"] == sum(e["area_after"] for e in report["images"])
    assert summary["pooled_shrink"] == pytest.approx(1 - summary["area_after"] / summary["area_before"])
    assert set(summary["splits"]) == set(rows)
    assert "pooled" in printed and "structure_refined" in printed

    # the refined truth of the labelled evaluation splits, as the official scorer reads it
    for split in ("validation", "test"):
        with open(out / "official" / REFINED_CONFIG / split / "gt.pkl", "rb") as handle:
            truth = pickle.load(handle)
        for row in rows[split]:
            mask = (_png(row["mask"]) > 0).astype(np.uint8)
            assert np.array_equal(truth[row["image_name"]]["pred_area"], truth_maps(mask[None]).truth)
            assert truth[row["image_name"]]["score"] == row["mos"]
    assert (out / "README.md").read_text().count(f"config_name: {REFINED_CONFIG}") == 2  # dataset_info + configs


def test_refined_masks_match_an_independent_computation(refined, dataset_dir, sam_dir):
    """Each shape's pixel box (first and last pixel) prompts SAM; SAM's mask inside the shape, united per annotator; votes -> mask
    (>= 1 annotator, 0/255) and heatmap (0/64/127/180/255, bilinear to 512x512), redone here image by image."""
    import cv2
    import torch
    from transformers import SamModel, SamProcessor

    model, processor = SamModel.from_pretrained(sam_dir).eval(), SamProcessor.from_pretrained(sam_dir)
    out, _ = refined
    report = {(e["split"], e["image_name"]): e for e in json.loads((out / "refine_report.json").read_text())["images"]}
    original, rows = _rows(dataset_dir, "structure"), _rows(out, REFINED_CONFIG)
    removed = kept = 0
    for split in rows:
        for before, after in zip(original[split], rows[split]):
            height, width = _png(before["image"]).shape[:2]
            votes = np.zeros((height, width), np.int64)
            for annotator in before["shapes"]:
                regions = [r for r in (rasterize_annotators([[s]], width, height)[0].astype(bool) for s in annotator)
                           if r.any()]
                mine = np.zeros((height, width), bool)
                if regions:
                    boxes = []
                    for r in regions:
                        ys, xs = np.nonzero(r)
                        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
                    from PIL import Image

                    image = Image.fromarray(_png(before["image"])).convert("RGB")
                    inputs = processor(images=[image], input_boxes=[[list(map(float, b)) for b in boxes]],
                                       return_tensors="pt")
                    with torch.no_grad():
                        pred = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"],
                                     multimask_output=False).pred_masks
                    sam = processor.post_process_masks(pred, inputs["original_sizes"],
                                                       inputs["reshaped_input_sizes"])[0][:, 0].numpy()
                    for r, s in zip(regions, sam):
                        inside = r & s
                        mine |= inside if inside.any() else r
                votes += mine
            mask = _png(after["mask"])
            assert mask.shape == (height, width)
            assert np.array_equal(mask, np.where(votes >= 1, 255, 0))
            levels = np.array([0, 64, 127, 180, 255], np.uint8)[np.minimum(votes, 4)]
            assert np.array_equal(_png(after["heatmap"]), cv2.resize(levels, (512, 512)))
            # refinement only removes: inside the original mask, nowhere above the original heatmap
            old_mask, old_heat = _png(before["mask"]), _png(before["heatmap"])
            assert not np.any((mask > 0) & (old_mask == 0))
            assert np.all(_png(after["heatmap"]) <= old_heat)
            entry = report[(split, before["image_name"])]
            assert (entry["area_before"], entry["area_after"]) == (int((old_mask > 0).sum()), int((mask > 0).sum()))
            removed += entry["area_before"] - entry["area_after"]
            kept += entry["area_after"]
    assert removed > 0 and kept > 0  # the random SAM both removes and keeps pixels: the check is not vacuous


def test_refine_annotators_keeps_shapes_sam_misses_whole():
    region = np.zeros((10, 10), bool)
    region[2:8, 2:8] = True  # 36 pixels
    other = np.zeros((10, 10), bool)
    other[0:2, 0:5] = True
    nothing = np.zeros((10, 10), bool)
    corner = np.zeros((10, 10), bool)
    corner[2:5, 2:5] = True  # 9 of the 36 pixels: 25%
    masks, whole = refine_annotators([[region], [other]], [nothing, np.ones((10, 10), bool)])
    assert whole == 1 and np.array_equal(masks[0], region) and np.array_equal(masks[1], other)
    masks, whole = refine_annotators([[region, other]], [corner, nothing])
    assert whole == 1 and np.array_equal(masks[0], corner | other)
    masks, whole = refine_annotators([[region]], [corner], min_keep=0.25)  # keeps at most 25%: whole
    assert whole == 1 and np.array_equal(masks[0], region)
    masks, whole = refine_annotators([[region]], [corner], min_keep=0.2)
    assert whole == 0 and np.array_equal(masks[0], corner)
    with pytest.raises(ValueError, match="2 shapes but 1 SAM masks"):
        refine_annotators([[region], [other]], [corner])


def test_truth_maps_takes_drawn_annotator_masks():
    shapes = [[{"type": "rectangle", "points": [[2, 3], [30, 20]]}],
              [{"type": "polygon", "points": [[5, 5], [25, 8], [12, 28]]}], []]
    drawn = rasterize_annotators(shapes, 40, 32)
    for size in (None, (512, 512), (64, 48)):
        a, b = truth_maps(shapes, 40, 32, size=size), truth_maps(drawn, size=size)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(truth_maps(drawn.astype(bool), min_votes=2).mask, truth_maps(shapes, 40, 32, min_votes=2).mask)
    with pytest.raises(ValueError, match="annotators, height, width"):
        truth_maps(drawn[0])
    with pytest.raises(ValueError, match="only 0 and 1"):
        truth_maps(drawn * 2)
    with pytest.raises(ValueError, match="not the 41x32 given"):
        truth_maps(drawn, 41, 32)


class _CountingRefiner(SamBoxRefiner):
    """The tiny SAM, counting the images it is given; raises KeyboardInterrupt at call ``stop_at``."""

    def __init__(self, sam_dir, stop_at=None):
        loaded = SamBoxRefiner.from_pretrained(sam_dir, device="cpu")
        super().__init__(loaded.model, loaded.processor)
        self.name, self.stop_at, self.calls, self.images = loaded.name, stop_at, 0, 0

    def predict(self, images, boxes):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.images += len(images)
        return super().predict(images, boxes)


def test_an_interrupted_run_resumes_to_the_same_output(tmp_path, refined, dataset_dir, sam_dir):
    out = tmp_path / "evalmuse-refined"
    first = _CountingRefiner(sam_dir, stop_at=4)
    with pytest.raises(KeyboardInterrupt):
        refine_dataset(dataset_dir, out, model=first, batch_size=2, shard_rows=2, progress=False)
    partial = tmp_path / ".evalmuse-refined.partial"
    assert not out.exists() and (partial / ".progress.json").is_file()

    again = _CountingRefiner(sam_dir)
    result = refine_dataset(dataset_dir, out, model=again, batch_size=2, shard_rows=2, progress=False)
    total = sum(result.num_rows.values())
    assert 0 < again.images == result.images_refined < total  # the completed shards were not redone
    assert not partial.exists()
    reference, _ = refined  # the same refinement in one go (other batch and shard sizes)
    assert _rows(out, REFINED_CONFIG) == _rows(reference, REFINED_CONFIG)
    mine, theirs = (json.loads((folder / "refine_report.json").read_text()) for folder in (out, reference))
    assert mine["images"] == theirs["images"] and mine["summary"] == theirs["summary"]

    # a finished folder is replaced only on request, and only because refine-masks wrote it
    with pytest.raises(UserInputError, match="already exists"):
        refine_dataset(dataset_dir, out, model=again, progress=False)
    refine_dataset(dataset_dir, out, model=again, overwrite=True, splits=["test"], progress=False)
    assert list(_rows(out, REFINED_CONFIG)) == ["test"]


def _run(argv, capsys):
    status = main(argv)
    err = capsys.readouterr().err.strip()
    return status, err


def test_errors_name_the_problem(tmp_path, dataset_dir, sam_dir, capsys):
    sam = ["--model", str(sam_dir), "--no-progress"]
    status, err = _run(["refine-masks", str(tmp_path / "missing"), str(tmp_path / "out"), *sam], capsys)
    assert status == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    status, err = _run(["refine-masks", str(tmp_path / "empty"), str(tmp_path / "out"), *sam], capsys)
    assert status == 2 and "cannot load the 'structure' config" in err
    status, err = _run(["refine-masks", str(dataset_dir), str(dataset_dir / "refined"), *sam], capsys)
    assert status == 2 and "lies inside the input" in err
    status, err = _run(["refine-masks", str(dataset_dir), str(tmp_path / "out"), *sam, "--splits", "dev"], capsys)
    assert status == 2 and "no split 'dev'" in err
    status, err = _run(["refine-masks", str(dataset_dir), str(tmp_path / "out"), *sam, "--min-keep", "1"], capsys)
    assert status == 2 and "min_keep must be in [0, 1)" in err
    status, err = _run(["refine-masks", str(dataset_dir), str(tmp_path / "out"), *sam, "--batch-size", "0"], capsys)
    assert status == 2 and "batch_size must be an integer >= 1" in err
    status, err = _run(["refine-masks", str(dataset_dir), str(tmp_path / "out"), "--model", str(tmp_path / "empty")],
                       capsys)
    assert status == 2 and "cannot load the SAM model" in err
    status, err = _run(["refine-masks", str(dataset_dir), str(tmp_path / "out"), *sam, "--mask-min-votes", "2"], capsys)
    assert status == 2 and "the mask column is not the pixels marked by at least 2 annotator(s)" in err
    assert "row " in err and "image_name=" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()  # bad input: nothing kept


def test_a_bad_shape_is_reported_with_its_row(tmp_path, dataset_dir, sam_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    broken = tmp_path / "broken"
    shutil.copytree(dataset_dir, broken)
    path = min((broken / "structure").glob("train-*.parquet"))
    table = pq.read_table(path)
    shapes = table.column("shapes").to_pylist()
    shapes[1] = [[{"type": "polygon", "points": [[1.0, 1.0], [5.0, 5.0]]}]]
    index = table.schema.get_field_index("shapes")
    pq.write_table(table.set_column(index, table.schema.field("shapes"),
                                    pa.array(shapes, type=table.schema.field("shapes").type)), path)
    name = table.column("image_name")[1].as_py()
    with pytest.raises(UserInputError, match=rf"split 'train', row 1 \(image_name='{name}'\), column 'shapes': a polygon "
                                             "needs at least 3 points"):
        refine_dataset(broken, tmp_path / "out", model=sam_dir, progress=False)


def test_report_section_and_summary(refined, tmp_path):
    from evalmuse_models.analysis.refine import format_refine_report, read_refine_report, refine_section

    out, _ = refined
    report = read_refine_report(out / "refine_report.json")
    html = refine_section(report, "analysis-refine")
    assert html.startswith('<section class="analysis" id="analysis-refine">') and html.endswith("</section>")
    assert html.count("<polyline") == len([s for s, v in report["summary"]["splits"].items()
                                           if v["images_with_regions"]])
    assert all(f'<td data-value="{split}">' in html for split in report["summary"]["splits"])
    text = format_refine_report(report)
    assert all(line.startswith(split) for split, line in zip([*report["summary"]["splits"], "all"],
                                                             text.splitlines()[2:]))
    (tmp_path / "other.json").write_text(json.dumps({"analysis": "weights"}))
    with pytest.raises(UserInputError, match="not a refine-masks report"):
        read_refine_report(tmp_path / "other.json")


def test_the_html_report_draws_the_refine_section(refined, tmp_path):
    from evalmuse_models.report import build_report

    out, _ = refined
    index = build_report(None, tmp_path / "report", analyses=[out / "refine_report.json"], progress=False)
    page = index.read_text()
    assert 'id="analysis-refine"' in page and "Box annotations vs refined masks" in page


def test_the_structure_recipe_reads_the_refined_config(refined):
    """"Train on boxes vs refined masks" is two runs of one recipe: --dataset_config structure_refined."""
    from evalmuse_models.training.structure import StructureRecipeArguments, load_structure_splits

    out, _ = refined
    train, _, _ = load_structure_splits(StructureRecipeArguments(dataset_dir=str(out),
                                                                 dataset_config="structure_refined"), seed=0)
    from datasets import load_dataset

    expected = load_dataset(str(out), "structure_refined", split="train")
    assert train["image_name"] == expected["image_name"] and train["mask"] == expected["mask"]
    with pytest.raises(UserInputError, match="'structure_refined' config"):
        load_structure_splits(StructureRecipeArguments(dataset_dir=str(out / "nowhere"),
                                                       dataset_config="structure_refined"), seed=0)
