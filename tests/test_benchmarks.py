"""Cross-benchmark evaluation: the GenAI-Bench / TIFA / EvalMuse-prompts / evalscope loaders on hand-written files
in their public formats, the correlations against scipy, and ``evalmuse benchmark`` end to end (resumable)."""

from __future__ import annotations

import json
import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit

from evalmuse_models.analysis.benchmark import (
    benchmark_correlations,
    benchmark_section,
    evaluate_benchmark,
    format_benchmark,
    without_var_path,
)
from evalmuse_models.cli import main as main_cli
from evalmuse_models.data import RecordError
from evalmuse_models.data.benchmarks import BENCHMARKS, load_benchmark
from evalmuse_models.scoring import read_results
from evalmuse_models.utils import UserInputError

SAMPLES = Path(__file__).resolve().parent / "data" / "benchmarks"

#: The images each sample folder's files name (drawn by the test: the repository keeps no binary files).
SAMPLE_IMAGES = {
    "genai-bench": [f"{model}/{i:05d}.jpeg" for model in ("DALLE_3", "SDXL_Turbo") for i in (1, 2, 3)],
    "tifa": [f"images/{name}.jpg" for name in (
        "coco_100001_mini_dalle", "coco_100001_stable_diffusion_v1_5", "coco_100001_vq_diffusion",
        "drawbench_7_mini_dalle", "drawbench_7_stable_diffusion_v1_5", "drawbench_7_vq_diffusion")],
    "evalmuse-prompts": ["flux-dev/00012.png", "flux-dev/00012_1.png", "flux-dev/00345.png", "flux-dev/01008.png",
                         "sd-1.5/00012.png", "sd-1.5/01008.png"],
    "evalscope": ["images/flux-dev/0.png", "images/flux-dev/1.png", "images/sd-1.5/0.png", "images/sd-1.5/1.png",
                  "images/sd-1.5/2.png"],
}


def draw(path: Path) -> None:
    """A small image whose colour depends on its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = zlib.crc32(path.as_posix().encode())
    colour = tuple(int(c) for c in np.random.default_rng(seed).integers(0, 256, size=3))
    Image.new("RGB", (40, 32), colour).save(path)


def sample(tmp_path: Path, name: str) -> Path:
    """A copy of the sample folder of benchmark ``name`` with its images drawn."""
    folder = tmp_path / name
    shutil.copytree(SAMPLES / name, folder)
    for image in SAMPLE_IMAGES[name]:
        draw(folder / image)
    return folder


@pytest.fixture(scope="module")
def tiny_align(tmp_path_factory) -> Path:
    from evalmuse_models.testing import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("models"))[0]


@pytest.fixture(scope="module")
def genai_synthetic(tmp_path_factory) -> Path:
    from evalmuse_models.data.synthetic_benchmarks import write_genai_bench

    folder = tmp_path_factory.mktemp("genai") / "GenAI-Image-synthetic"
    written = write_genai_bench(folder, num_prompts=6, seed=0)
    assert written == {"prompts": 6, "images": 24, "generators": ["PixelForge-Base", "PixelForge-Lite",
                                                                  "PixelForge-Turbo", "PixelForge-XL"]}
    return folder


# ---------------------------------------------------------------------------------------------
# Loaders


def test_command_lists_the_benchmarks_the_loader_reads():
    from evalmuse_models.commands.benchmark import BENCHMARK_NAMES

    assert BENCHMARK_NAMES == BENCHMARKS


def test_genai_bench_rows_ratings_and_skills(tmp_path):
    folder = sample(tmp_path, "genai-bench")
    ds = load_benchmark("genai-bench", folder)
    assert len(ds) == 6  # prompt 00004 has no ratings, hence no images
    assert ds["img_path"] == ["DALLE_3/00001.jpeg", "SDXL_Turbo/00001.jpeg", "DALLE_3/00002.jpeg",
                              "SDXL_Turbo/00002.jpeg", "DALLE_3/00003.jpeg", "SDXL_Turbo/00003.jpeg"]
    row = ds[3]
    assert row["generator"] == "SDXL_Turbo" and row["prompt_id"] == "00002"
    assert row["prompt"] == "three cats sitting on a blue sofa"
    assert row["total_score_votes"] == [1, 2, 1] and row["total_score"] == pytest.approx(4 / 3, abs=1e-6)
    assert row["skills"] == ["attribute", "spatial relation", "counting", "advanced"]
    assert row["elements"] == [] and row["benchmark"] == "genai-bench"
    assert row["image"].size == (40, 32)
    assert ds[5]["prompt_id"] == "00003"  # the release's "id": "3" (no leading zeros) names the same prompt


def test_genai_bench_version_folder_and_prompt_count(tmp_path):
    sample(tmp_path / "root", "genai-bench").rename(tmp_path / "root" / "GenAI-Image-527")
    with pytest.warns(UserWarning, match="lists 4 prompts; GenAI-Bench-527 has 527"):
        ds = load_benchmark("genai-bench", tmp_path / "root", version=527)
    assert len(ds) == 6
    with pytest.raises(UserInputError, match="version '800'"):
        load_benchmark("genai-bench", tmp_path / "root", version=800)
    with pytest.raises(UserInputError, match="--version is for genai-bench"):
        load_benchmark("tifa", tmp_path / "root", version=527)


def test_genai_bench_elements_file_and_generator_filter(tmp_path):
    folder = sample(tmp_path, "genai-bench")
    (tmp_path / "elements.json").write_text(json.dumps({"00001": ["red apple (object)", "wooden table (object)",
                                                                  "red (Color) "]}))
    ds = load_benchmark("genai-bench", folder, elements=tmp_path / "elements.json", generators=["DALLE_3"])
    assert ds["generator"] == ["DALLE_3"] * 3
    elements = ds[0]["elements"]
    assert [e["key"] for e in elements] == ["red apple (object)", "wooden table (object)", "red (Color) "]
    assert [(e["phrase"], e["category"]) for e in elements][2] == ("red", "color")
    assert ds[1]["elements"] == []
    (tmp_path / "elements.json").write_text(json.dumps({"99999": ["cat (animal)"]}))
    with pytest.raises(UserInputError, match="'99999' match no prompt"):
        load_benchmark("genai-bench", folder, elements=tmp_path / "elements.json")
    with pytest.raises(UserInputError, match="no image of generator.*Midjourney_6"):
        load_benchmark("genai-bench", folder, generators=["Midjourney_6"])


def test_genai_bench_errors_name_file_record_and_field(tmp_path):
    folder = sample(tmp_path, "genai-bench")
    data = json.loads((folder / "genai_image.json").read_text())
    data["00002"]["models"]["DALLE_3"] = [4, 6, 3]
    (folder / "genai_image.json").write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"genai_image.json: record '00002': field 'models.DALLE_3'.*\[1, 5\]"):
        load_benchmark("genai-bench", folder)
    data["00002"]["models"]["DALLE_3"] = [4, 4, 3]
    data["00003"]["id"] = "00004"
    (folder / "genai_image.json").write_text(json.dumps(data))
    with pytest.raises(RecordError, match="record '00003': field 'id': '00004' differs from the record's key"):
        load_benchmark("genai-bench", folder)
    data["00003"]["id"] = "3"
    del data["00003"]["prompt"]
    (folder / "genai_image.json").write_text(json.dumps(data))
    with pytest.raises(RecordError, match="record '00003': field 'prompt': missing"):
        load_benchmark("genai-bench", folder)
    del data["00003"]
    (folder / "genai_image.json").write_text(json.dumps(data))
    (folder / "SDXL_Turbo" / "00002.jpeg").unlink()
    with pytest.raises(UserInputError, match=r"1 of 4 images are missing \(.*SDXL_Turbo/00002.jpeg\)"):
        load_benchmark("genai-bench", folder)
    with pytest.raises(UserInputError, match="has no genai_image.json"):
        load_benchmark("genai-bench", tmp_path)
    with pytest.raises(UserInputError, match="unknown benchmark 'drawbench'"):
        load_benchmark("drawbench", folder)


def test_tifa_rows_generators_and_question_elements(tmp_path):
    ds = load_benchmark("tifa", sample(tmp_path, "tifa"))
    assert ds["generator"] == ["mini_dalle", "stable_diffusion_v1_5", "vq_diffusion"] * 2
    assert ds["img_path"][0] == "coco_100001_mini_dalle.jpg"
    assert ds["total_score"] == [4.5, 5.0, 2.5, 3.0, 3.5, 1.5]
    assert ds[4]["total_score_votes"] == [4, 3] and ds[4]["prompt_id"] == "drawbench_7"
    # one element per (prompt, element): the second question about the boat adds none
    assert [e["key"] for e in ds[0]["elements"]] == ["boat (object)", "white (color)", "lake (location)"]
    assert [(e["phrase"], e["category"]) for e in ds[3]["elements"]] == [
        ("dogs", "animal/human"), ("two", "counting"), ("cat", "animal/human")]


def test_tifa_errors(tmp_path):
    folder = sample(tmp_path, "tifa")
    data = json.loads((folder / "human_annotations_with_scores.json").read_text())
    data["drawbench_7_vq_diffusion"]["human_scores"] = [1, "2"]
    (folder / "human_annotations_with_scores.json").write_text(json.dumps(data))
    with pytest.raises(RecordError, match="record 'drawbench_7_vq_diffusion': field 'human_scores'.*integer votes"):
        load_benchmark("tifa", folder)
    data["drawbench_7_vq_diffusion"]["human_scores"] = [1, 2]
    data["drawbench_7_vq_diffusion"]["image_path"] = "../outside.jpg"
    (folder / "human_annotations_with_scores.json").write_text(json.dumps(data))
    with pytest.raises(RecordError, match="field 'image_path'.*stay inside"):
        load_benchmark("tifa", folder)


def test_evalmuse_prompts_images_by_generator_folder(tmp_path):
    folder = sample(tmp_path, "evalmuse-prompts")
    draw(folder / "sd-1.5" / "notes.png")
    with pytest.warns(UserWarning, match="1 image.*named after no prompt"):
        ds = load_benchmark("evalmuse-prompts", folder)
    assert ds["img_path"] == SAMPLE_IMAGES["evalmuse-prompts"]
    assert ds["prompt_id"] == ["00012", "00012", "00345", "01008", "00012", "01008"]
    assert ds["total_score"] == [None] * 6
    keys = {row["prompt_id"]: [e["key"] for e in row["elements"]] for row in ds}
    assert keys["00012"][-1] == "hat (object-cloth&accessories)"
    assert [e["category"] for e in ds[0]["elements"]] == ["color", "animal", "activity", "attribute", "object"]
    assert keys["00345"][0] == "two (counting)" and keys["01008"] == [
        "girl (human)", "reading (activity)", "book (object)", "under a tree (spatial)"]


def test_evalscope_jsonl(tmp_path):
    folder = sample(tmp_path, "evalscope")
    ds = load_benchmark("evalscope", folder)
    assert ds["img_path"] == SAMPLE_IMAGES["evalscope"]
    assert ds["generator"] == ["flux-dev", "flux-dev", "sd-1.5", "sd-1.5", "sd-1.5-tuned"]
    assert [e["key"] for e in ds[1]["elements"]] == ["two (counting)", "glass (material)", "bottles (object)",
                                                     "wooden shelf (object)"]
    lines = (folder / "EvalMuse.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"prompt"', '"caption"')
    (folder / "EvalMuse.jsonl").write_text("\n".join(lines))
    with pytest.raises(RecordError, match="EvalMuse.jsonl: record line 3: field 'prompt': missing"):
        load_benchmark("evalscope", folder)
    lines[2] = lines[2].replace('"caption"', '"prompt"').replace('"elephant (animal)"', '"(animal)"')
    (folder / "EvalMuse.jsonl").write_text("\n".join(lines))
    with pytest.raises(RecordError, match="line 3: field 'tags'.*has no phrase"):
        load_benchmark("evalscope", folder)


# ---------------------------------------------------------------------------------------------
# Correlations


def logistic_fit(x, target):
    """The VQEG 4-parameter logistic fitted from ``x`` to ``target`` and evaluated at ``x``, from scipy alone."""
    def f(v, b1, b2, b3, b4):
        return b2 + (b1 - b2) / (1 + np.exp(-(v - b3) / np.abs(b4)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        params, _ = curve_fit(f, x, target, p0=[target.max(), target.min(), x.mean(), x.std()], maxfev=100_000)
    return f(x, *params)


def fake_rows(n: int = 45, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        human = float(rng.uniform(1, 5))
        elements = {f"thing{j} ({'color' if j % 2 else 'object'})": float(rng.uniform(0, 1)) for j in range(1 + i % 3)}
        rows.append({"id": f"g{i % 3}/{i}.png", "generator": f"g{i % 3}", "status": "ok", "reference": {"overall": human},
                     "meta": {"align_model": "m"},
                     "alignment": {"overall": float(np.clip(human + rng.normal(0, 0.8), 1, 5)), "elements": elements,
                                   "unmatched_elements": []}})
    rows.append({"id": "g0/bad.png", "generator": "g0", "status": "error", "error": "cannot read image"})
    return rows


def test_correlations_match_scipy():
    rows = fake_rows()
    result = benchmark_correlations(rows, benchmark="genai-bench")
    ok = [r for r in rows if r["status"] == "ok"]
    human = np.array([r["reference"]["overall"] for r in ok])
    os_ = np.array([r["alignment"]["overall"] for r in ok])
    es = np.array([np.mean(list(r["alignment"]["elements"].values())) for r in ok])
    assert result["variants"] == ["os", "es_avg", "os+es_avg"] and result["errors"] == 1
    for variant, pred in (("os", os_), ("es_avg", es), ("os+es_avg", os_ + es)):
        entry = result["correlations"][variant]
        assert entry["n_images"] == 45
        assert entry["srcc"] == pytest.approx(stats.spearmanr(pred, human)[0], abs=1e-12)
        assert entry["krcc"] == pytest.approx(stats.kendalltau(pred, human)[0], abs=1e-12)
        assert entry["plcc"] == pytest.approx(stats.pearsonr(logistic_fit(pred, human), human)[0], abs=1e-6)
    in_g1 = np.array([r["generator"] == "g1" for r in ok])
    g1 = result["generators"]["g1"]
    assert g1["n_images"] == 15 and g1["errors"] == 0 and result["generators"]["g0"]["errors"] == 1
    assert g1["correlations"]["os"]["srcc"] == pytest.approx(stats.spearmanr(os_[in_g1], human[in_g1])[0])
    assert g1["means"]["es_avg"] == pytest.approx(es[in_g1].mean()) and g1["human"] == pytest.approx(human[in_g1].mean())
    colour = [v for r in ok for k, v in r["alignment"]["elements"].items() if k.endswith("(color)")]
    assert result["categories"]["color"] == {"elements": len(colour), "mean": pytest.approx(np.mean(colour))}
    means = [result["generators"][g]["means"]["os"] for g in result["generators"]]
    assert means == sorted(means, reverse=True)


def test_official_plcc_direction_and_undefined_correlations():
    rows = fake_rows()
    official = benchmark_correlations(rows, benchmark="tifa", plcc_direction="official")
    ok = [r for r in rows if r["status"] == "ok"]
    human = np.array([r["reference"]["overall"] for r in ok])
    os_ = np.array([r["alignment"]["overall"] for r in ok])
    # the EvalMuse alignment script's direction: the human scores fitted to the predictions
    assert official["correlations"]["os"]["plcc"] == pytest.approx(stats.pearsonr(os_, logistic_fit(human, os_))[0],
                                                                   abs=1e-6)
    for row in ok:
        if row["generator"] == "g2":
            row["alignment"]["overall"] = 3.0
    result = benchmark_correlations(rows, benchmark="tifa")
    entry = result["generators"]["g2"]["correlations"]["os"]
    assert entry["srcc"] is None and "constant" in entry["undefined"]
    assert result["correlations"]["os"]["srcc"] is not None


def test_unlabelled_results_rank_generators_and_draw_a_section():
    rows = fake_rows()
    for row in rows:
        row.pop("reference", None)
    result = benchmark_correlations(rows, benchmark="evalscope")
    assert result["labelled"] is False and "correlations" not in result
    assert "correlations" not in result["generators"]["g0"]
    html = benchmark_section(result, "analysis-benchmark")
    assert html.count("<svg") == 1 and "mean overall alignment score per generator" in html
    assert "Cross-benchmark evaluation: evalscope" in html and "<th>color</th>" in html
    assert "per generator (mean scores)" in format_benchmark(result)


def test_the_html_report_draws_the_benchmark_section(tmp_path):
    from evalmuse_models.report import build_report

    analysis = tmp_path / "benchmark.json"
    analysis.write_text(json.dumps(benchmark_correlations(fake_rows(), benchmark="genai-bench")))
    page = build_report(None, tmp_path / "report", analyses=[analysis], progress=False).read_text()
    assert 'id="analysis-benchmark"' in page and "Cross-benchmark evaluation: genai-bench" in page


# ---------------------------------------------------------------------------------------------
# End to end


def _run(capsys, args: list[str]) -> dict:
    assert main_cli(args) == 0
    return json.loads(capsys.readouterr().out)


def test_benchmark_command_end_to_end_resumes_to_the_same_json(genai_synthetic, tiny_align, tmp_path, capsys):
    base = ["benchmark", "genai-bench", str(genai_synthetic), "--align", str(tiny_align), "--elements",
            str(genai_synthetic / "elements.json"), "--device", "cpu", "--batch-size", "4", "--no-progress", "--json"]
    full = _run(capsys, [*base, "--out", str(tmp_path / "full.jsonl")])
    partial = _run(capsys, [*base, "--out", str(tmp_path / "part.jsonl"), "--limit", "8"])
    assert partial["num_images"] == 8
    resumed = _run(capsys, [*base, "--out", str(tmp_path / "part.jsonl")])
    assert resumed == full
    rows = read_results(tmp_path / "part.jsonl")
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24

    assert full["analysis"] == "benchmark" and full["labelled"] and full["num_images"] == 24
    assert full["variants"] == ["os", "es_avg", "os+es_avg"]
    assert full["variance_weighting"] == {"align_model": "none"}
    assert sorted(full["generators"]) == ["PixelForge-Base", "PixelForge-Lite", "PixelForge-Turbo", "PixelForge-XL"]
    # the human score of each row is GenAI-Bench's mean rating, and the reported SRCC is that of the rows
    truth = json.loads((genai_synthetic / "genai_image.json").read_text())
    for row in rows:
        model, name = row["id"].split("/")
        assert row["reference"]["overall"] == pytest.approx(np.mean(truth[name[:-5]]["models"][model]), abs=1e-6)
        assert row["benchmark"] == "genai-bench" and row["prompt_id"] == name[:-5]
    os_ = [r["alignment"]["overall"] for r in rows]
    assert full["correlations"]["os"]["srcc"] == pytest.approx(
        stats.spearmanr(os_, [r["reference"]["overall"] for r in rows])[0])

    html = benchmark_section(full, "analysis-benchmark")
    assert html.count("<svg") == 2 and "PixelForge-XL" in html and "os + es_avg" in html
    assert main_cli([*base[:-1], "--out", str(tmp_path / "full.jsonl")]) == 0
    assert "es_avg (mean element score)" in capsys.readouterr().out


def test_without_var_checkpoint_and_refusals(genai_synthetic, tiny_align, tmp_path, capsys):
    base = ["benchmark", "genai-bench", str(genai_synthetic), "--align", str(tiny_align), "--device", "cpu",
            "--no-progress", "--json", "--generators", "PixelForge-XL", "PixelForge-Lite", "--out"]
    result = _run(capsys, [*base, str(tmp_path / "r.jsonl"), "--align-without-var", str(tiny_align)])
    assert result["variants"] == ["os", "os_without_var"]  # no --elements: GenAI-Bench has none
    assert result["correlations"]["os_without_var"] == result["correlations"]["os"]
    assert len(read_results(without_var_path(tmp_path / "r.jsonl"))) == 12
    assert result["variance_weighting"] == {"align_model": "none", "align_model_without_var": "none"}

    weighted = tmp_path / "weighted"
    weighted.mkdir()
    config = json.loads((tiny_align / "config.json").read_text())
    (weighted / "config.json").write_text(json.dumps({**config, "loss_weighting": "exp_var"}))
    assert main_cli([*base, str(tmp_path / "w.jsonl"), "--align-without-var", str(weighted)]) == 2
    assert "trained with loss_weighting='exp_var'" in capsys.readouterr().err
    tifa = sample(tmp_path, "tifa")
    assert main_cli(["benchmark", "tifa", str(tifa), "--align", str(tiny_align), "--out", str(tmp_path / "r.jsonl"),
                     "--device", "cpu", "--no-progress"]) == 2
    assert "holds the scores of 'genai-bench', not of the tifa benchmark" in capsys.readouterr().err


def test_unlabelled_benchmark_end_to_end(tiny_align, tmp_path):
    result = evaluate_benchmark("evalscope", sample(tmp_path, "evalscope"), align=str(tiny_align),
                                out=tmp_path / "r.jsonl", device="cpu", progress=False)
    assert result["labelled"] is False and result["num_images"] == 5 and result["errors"] == 0
    assert list(result["generators"]) == sorted(result["generators"], key=lambda g: -result["generators"][g]["means"]["os"])
    assert set(result["categories"]) == {"color", "animal", "activity", "attribute", "object", "counting", "material",
                                         "shape"}
