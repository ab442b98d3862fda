"""The structure recipe (``evalmuse_models.training.structure``) trains the two other structure families with
their own recipes: EM-RAHF with the official schedule (MSE on both heads, AdamW with weight decay on every
parameter, cosine to 0 without warm-up, encoders frozen for the first half and kept in training mode) and
HNU-VPAI's LoDa with its PLCC loss (frozen backbones, only the adapters train; a score only). Tiny runs of a
few steps on the synthetic structure release, through the tiny YAML configs; then ``evalmuse score``,
``submit`` and ``report`` with folders of both families."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_em_rahf import tiny_tokenizer
from transformers import TrainerCallback

from evalmuse_models.training import structure as training
from evalmuse_models.training.structure import parse_args, train_structure
from evalmuse_models.utils import UserInputError

torch.set_num_threads(1)  # small ops: one thread is faster on a shared 2-core machine
CONFIGS = Path(__file__).resolve().parents[1] / "train_scripts" / "configs"


def recipe_args(config: str, dataset_dir, output_dir, *extra: str):
    """The arguments of a tiny YAML config as the command line gives them, for a short CPU run."""
    return parse_args(["--config", str(CONFIGS / config), "--dataset_dir", str(dataset_dir), "--output_dir",
                       str(output_dir), "--use_cpu", "true", "--disable_tqdm", "true", *extra])


def record_training_batches(monkeypatch) -> list[dict]:
    """The collator's training batches (rows drawn by the training dataset carry ``_hflip``), as the model got them."""
    real_call = training.StructureCollator.__call__
    batches = []

    def call(self, rows):
        batch = real_call(self, rows)
        if "_hflip" in rows[0]:
            batches.append(batch)
        return batch

    monkeypatch.setattr(training.StructureCollator, "__call__", call)
    return batches


class Watch(TrainerCallback):
    """Records the optimizer's parameter groups at the start, and after every optimizer step which of the
    watched modules moved since then and whether they were in training mode."""

    def __init__(self, *modules: str):
        self.modules = modules
        self.start: dict[str, list[torch.Tensor]] = {}
        self.groups: list[dict] = []
        self.steps: list[dict] = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        names = {id(p): n for n, p in model.named_parameters()}
        self.groups = [{"weight_decay": g["weight_decay"], "lr": g["lr"], "names": {names[id(p)] for p in g["params"]}}
                       for g in optimizer.param_groups]
        self.start = {m: [p.detach().clone() for p in model.get_submodule(m).parameters()] for m in self.modules}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        moved = {m: any(not torch.equal(a, b) for a, b in zip(self.start[m], model.get_submodule(m).parameters(),
                                                               strict=True)) for m in self.modules}
        training_mode = {m: model.get_submodule(m).training for m in self.modules}
        self.steps.append({"step": state.global_step, "moved": moved, "training": training_mode})


def logged(output_dir: Path, key: str) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [e[key] for e in state["log_history"] if key in e and "train_runtime" not in e]


def test_em_rahf_trains_with_the_official_schedule(prepared_dataset, tmp_path, monkeypatch):
    from accelerate.utils import set_seed
    from transformers import AutoModel, AutoProcessor

    from evalmuse_models.models.em_rahf import EmRahfConfig, EmRahfModel

    tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")
    # no dropout in the text embeddings, so that the first step's loss can be recomputed exactly
    overrides = {"tokenizer_name_or_path": str(tmp_path / "tokenizer"), "text_config": {"hidden_dropout_prob": 0.0}}
    out = tmp_path / "run"
    recipe, args = recipe_args("structure_em_rahf_tiny.yaml", prepared_dataset, out, "--max_steps", "4",
                               "--max_train_samples", "8", "--evaluate_test", "false",
                               "--config_overrides", json.dumps(overrides))
    batches = record_training_batches(monkeypatch)
    watch = Watch("vision_model", "text_embeddings", "vision_model.post_layernorm", "fusion")
    result = train_structure(recipe, args, callbacks=[watch])

    # the loss: MSE on the heatmap plus MSE on the score, (mos - 1) / 4 (recomputed here with the initial weights)
    set_seed(0)
    reference = EmRahfModel(EmRahfConfig.from_preset("tiny", **overrides)).train()
    first = batches[0]
    with torch.no_grad():
        out0 = reference(pixel_values=first["pixel_values"], input_ids=first["input_ids"])
    expected = (((out0.heatmap - first["heatmap_labels"]) ** 2).mean()
                + ((out0.score - (first["score_labels"] - 1) / 4) ** 2).mean())
    assert logged(out, "loss")[0] == pytest.approx(expected.item(), rel=1e-5)

    # AdamW with the official weight decay on every parameter (biases and LayerNorms too), one learning rate
    names = {n for n, _ in reference.named_parameters() if not n.startswith("vision_model.post_layernorm.")}
    assert set().union(*(g["names"] for g in watch.groups)) == names
    assert {g["weight_decay"] for g in watch.groups} == {0.01} and {g["lr"] for g in watch.groups} == {1e-3}
    assert any(n.endswith(".bias") for n in names) and any("layer_norm" in n or "norm" in n for n in names)
    # cosine from 1e-3 to 0 without warm-up (the rate of each of the 4 steps; 0 after the last)
    cosine = [1e-3 * (1 + math.cos(math.pi * step / 4)) / 2 for step in range(4)]
    assert logged(out, "learning_rate") == pytest.approx(cosine)
    # encoders frozen for the first half, in training mode as the official code keeps them, then trained
    assert [s["moved"]["vision_model"] for s in watch.steps] == [False, False, True, True]
    assert [s["moved"]["text_embeddings"] for s in watch.steps] == [False, False, True, True]
    assert all(s["moved"]["fusion"] for s in watch.steps)
    assert not any(s["moved"]["vision_model.post_layernorm"] for s in watch.steps)  # never trained
    assert all(s["training"]["vision_model"] and s["training"]["text_embeddings"] for s in watch.steps)
    assert result["train"]["unfrozen_at_step"] == 2

    # the saved folder, the metrics: the official Final score at the searched threshold
    model = AutoModel.from_pretrained(result["model_dir"])
    assert isinstance(model, EmRahfModel) and model.config.freeze_vit and model.config.freeze_text
    assert AutoProcessor.from_pretrained(result["model_dir"]).tokenizer is not None
    assert model.config.threshold == pytest.approx(result["threshold"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["family"] == "em_rahf" and "note" not in metrics
    assert {"precision", "recall", "f1", "plcc", "srcc", "final_score", "threshold"} <= set(metrics["final"])
    assert len(metrics["threshold_table"]) > 1
    card = (out / "model" / "README.md").read_text()
    assert "EM-RAHF" in card and "trained with the structure recipe" in card and "final_score (validation)" in card


def test_loda_trains_with_the_plcc_loss_and_frozen_backbones(prepared_dataset, tmp_path, monkeypatch):
    from transformers import AutoModel

    from evalmuse_models.models.hnu_vpai_loda import LodaConfig, LodaModel, LodaProcessor

    torch.manual_seed(0)
    start = LodaModel(LodaConfig.from_preset("tiny"))
    start.save_pretrained(tmp_path / "start")
    LodaProcessor.from_model_config(start.config).save_pretrained(tmp_path / "start")
    out = tmp_path / "run"
    recipe, args = recipe_args("structure_loda_tiny.yaml", prepared_dataset, out, "--model_name_or_path",
                               str(tmp_path / "start"), "--max_steps", "3", "--max_train_samples", "16")
    batches = record_training_batches(monkeypatch)
    watch = Watch("vit", "feature_model", "learner")
    result = train_structure(recipe, args, callbacks=[watch])

    # the loss: HNU-VPAI's PLCC loss of the score against the MOS (recomputed here with the initial weights)
    first = batches[0]
    assert set(first) == {"pixel_values", "labels"}  # a score target only: no heatmap
    with torch.no_grad():  # on a copy: in training mode the forward updates the batch-norm statistics
        score = copy.deepcopy(start).train()(pixel_values=first["pixel_values"]).score

    def standardised(x):
        return (x - x.mean()) / (x.std(unbiased=False) + 1e-8)

    p, t = standardised(score), standardised(first["labels"])
    rho = (p * t).mean()
    expected = (((p - t) ** 2).mean() / 4 + ((rho * p - t) ** 2).mean() / 4) / 2
    assert logged(out, "loss")[0] == pytest.approx(expected.item(), rel=1e-5)

    # only the adapters train, with weight decay on all of them; the backbones never move, but the frozen
    # ResNet's batch-norm statistics follow the training batches (as in HNU-VPAI's run)
    learner = {f"learner.{n}" for n, _ in start.learner.named_parameters()}
    assert set().union(*(g["names"] for g in watch.groups)) == learner
    assert {g["weight_decay"] for g in watch.groups} == {0.01}
    assert [s["moved"] for s in watch.steps] == [{"vit": False, "feature_model": False, "learner": True}] * 3
    trained = AutoModel.from_pretrained(result["model_dir"])
    assert isinstance(trained, LodaModel) and trained.config.freeze_backbones
    before, after = start.feature_model.state_dict(), trained.feature_model.state_dict()
    stats = [k for k in before if k.endswith("running_mean")]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    assert all(torch.equal(p, q) for p, q in zip(start.vit.parameters(), trained.vit.parameters(), strict=True))

    # the metrics of a score-only model: PLCC and SRCC, and why there is no F1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["family"] == "hnu_vpai_loda" and metrics["threshold"] is None
    assert {"plcc", "srcc"} <= set(metrics["final"]) and "f1" not in metrics["final"]
    assert all(-1 <= metrics["final"][k] <= 1 for k in ("plcc", "srcc"))
    assert "F1" in metrics["note"] and "--masks-from" in metrics["note"]
    assert "learning_rate" in metrics["train"] and metrics["train"]["steps"] == 3
    assert "HNU-VPAI LoDa" in (out / "model" / "README.md").read_text()


def test_family_defaults_and_refusals(prepared_dataset, tmp_path):
    recipe, args = parse_args(["--config", str(CONFIGS / "structure_loda_hnu_vpai.yaml"), "--dataset_dir", "d"])
    assert (recipe.family, recipe.preset, recipe.random_crop, args.learning_rate) == ("hnu_vpai_loda", "hnu-vpai",
                                                                                        True, 3e-4)
    assert args.lr_scheduler_kwargs == {"num_cycles": 0.2} and args.num_train_epochs == 8 and args.seed == 3407
    recipe, args = parse_args(["--config", str(CONFIGS / "structure_em_rahf_official.yaml"), "--dataset_dir", "d"])
    assert (recipe.family, recipe.freeze_schedule_fraction, args.max_steps, args.lr_scheduler_type) == (
        "em_rahf", 0.5, 2000, "cosine")
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 8 == 256

    # unset Trainer fields take the family's defaults: the official schedule for EM-RAHF and LoDa
    _, args = parse_args(["--dataset_dir", "d", "--output_dir", "o", "--warmup_steps", "0.1"])
    for name, family, expected in (("em_rahf", "em-rahf", 2e-5), ("hnu_vpai_loda", "tiny", 1e-3),
                                   ("evalmuse_structure", "tiny", 3e-3)):
        resolved = args.for_family(training.STRUCTURE_FAMILIES[name], family)
        assert resolved.warmup_steps == 0.1 and resolved.learning_rate == expected  # given / the family's
        official = name != "evalmuse_structure"
        assert resolved.lr_scheduler_type == ("cosine" if official else "cosine_with_min_lr")
        assert resolved.lr_scheduler_kwargs == ({} if official else {"min_lr_rate": 0.1})
    assert args.learning_rate is None and args.warmup_steps == 0.1  # the caller's arguments are left as they were

    with pytest.raises(UserInputError, match="not a structure model family"):
        parse_args(["--dataset_dir", "d", "--output_dir", "o", "--family", "em-rahf"])
    for extra, message in ((["--heatmap_size", "64"], "heatmap_size: not an option of the em_rahf family"),
                           (["--config_overrides", '{"freeze_cnn": true}'], "EmRahfConfig has no field"),
                           ([], "cannot build the em_rahf processor")):
        recipe, args = recipe_args("structure_em_rahf_tiny.yaml", prepared_dataset, tmp_path / "x", *extra)
        with pytest.raises(UserInputError, match=message):
            train_structure(recipe, args)
    folder = tmp_path / "loda"
    from evalmuse_models.models.hnu_vpai_loda import LodaConfig, LodaModel

    LodaModel(LodaConfig.from_preset("tiny")).save_pretrained(folder)
    recipe, args = recipe_args("structure_em_rahf_tiny.yaml", prepared_dataset, tmp_path / "y",
                               "--model_name_or_path", str(folder))
    with pytest.raises(UserInputError, match="is a hnu_vpai_loda model, not the family em_rahf"):
        train_structure(recipe, args)


# ---------------------------------------------------------------------------------------------- scoring


def test_score_and_submit_with_em_rahf_and_loda_folders(prepared_dataset, tmp_path, capsys):
    """``evalmuse score --structure FOLDER`` with a saved EM-RAHF folder (the t2i-structure pipeline's results)
    and a LoDa folder (a score only: a structure submission then needs ``--masks-from``)."""
    import datasets
    from transformers import pipeline

    from evalmuse_models.cli import main
    from evalmuse_models.metrics import read_structure_pickle
    from evalmuse_models.models.em_rahf import EmRahfConfig, EmRahfModel, EmRahfProcessor
    from evalmuse_models.models.hnu_vpai_loda import LodaConfig, LodaModel, LodaProcessor
    from evalmuse_models.scoring import read_results, rle_to_mask

    torch.manual_seed(0)
    em_config, loda_config = EmRahfConfig.from_preset("tiny"), LodaConfig.from_preset("tiny")
    EmRahfModel(em_config).save_pretrained(tmp_path / "em")
    EmRahfProcessor.from_model_config(em_config, tokenizer=tiny_tokenizer()).save_pretrained(tmp_path / "em")
    loda = LodaModel(loda_config).eval()
    loda.save_pretrained(tmp_path / "loda")
    LodaProcessor.from_model_config(loda_config).save_pretrained(tmp_path / "loda")
    split = datasets.load_dataset(str(prepared_dataset), "structure", split="test").select(range(4))
    images = [image.convert("RGB") for image in split["image"]]
    base = ["score", str(prepared_dataset), "--config", "structure", "--split", "test", "--limit", "4",
            "--batch-size", "2", "--num-workers", "0", "--no-progress"]

    # EM-RAHF: the rows hold what the t2i-structure pipeline gives (score 1-5, masks at the official 40/255)
    assert main([*base, "--structure", str(tmp_path / "em"), "--out", str(tmp_path / "em.jsonl")]) == 0
    rows = read_results(tmp_path / "em.jsonl")
    expected = pipeline("t2i-structure", model=str(tmp_path / "em"))(images, prompts=split["prompt"])
    assert [r["status"] for r in rows] == ["ok"] * 4
    for row, result in zip(rows, expected, strict=True):
        assert row["structure"]["score"] == pytest.approx(result["score"], abs=1e-5) and 1 <= result["score"] <= 5
        np.testing.assert_array_equal(rle_to_mask(row["structure"]["mask"]), result["mask"])
        assert row["structure"]["threshold"] == pytest.approx(40 / 255) and "heatmap_png" in row["structure"]

    # LoDa: the score alone, its cosine c written as 3 + 2c on the 1-5 scale
    out = tmp_path / "loda.jsonl"
    assert main([*base, "--structure", str(tmp_path / "loda"), "--out", str(out)]) == 0
    rows = read_results(out)
    cosines = loda.predict(images, processor=LodaProcessor.from_pretrained(tmp_path / "loda"))
    assert [set(r["structure"]) for r in rows] == [{"score"}] * 4
    assert [r["structure"]["score"] for r in rows] == pytest.approx([3 + 2 * c for c in cosines], abs=1e-5)
    assert main([*base, "--structure", str(tmp_path / "loda"), "--out", str(tmp_path / "t.jsonl"),
                 "--threshold", "0.5"]) == 2
    assert "predicts a structure score only" in capsys.readouterr().err

    # a structure submission needs masks: refused without --masks-from, written with an instance-segmentation
    # model's (here one box per image), the scores the rows' own
    assert main(["submit", str(out), "--out", str(tmp_path / "refused")]) == 2
    assert "--masks-from" in capsys.readouterr().err
    detections = [{"file_name": row["id"], "image_id": i, "category_id": 2, "score": 0.9,
                   "segmentation": [[2, 2, 30, 2, 30, 20, 2, 20]]} for i, row in enumerate(rows)]
    (tmp_path / "dets.json").write_text(json.dumps(detections))
    assert main(["submit", str(out), "--out", str(tmp_path / "sub"), "--masks-from", str(tmp_path / "dets.json")]) == 0
    submitted = read_structure_pickle(tmp_path / "sub" / "structure" / "output.pkl")
    assert len(submitted) == 4
    for row in rows:
        record = submitted[row["id"].rsplit(".", 1)[0]]
        assert record["score"] == pytest.approx(row["structure"]["score"])
        assert record["pred_area"].shape == (512, 512) and record["pred_area"].any()

    # the report shows the scores of score-only rows
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    html = (tmp_path / "report" / "index.html").read_text()
    assert all(f'title="structure, 1–5">structure {row["structure"]["score"]:.2f}' in html for row in rows)
