"""``evalmuse push``: card filled with measured metrics, remote-code loading check, offline stop, upload calls."""

from __future__ import annotations

import json

import pytest
import yaml

from evalmuse_models import hub
from evalmuse_models.cli import main
from evalmuse_models.utils import UserInputError

METRICS = {"task": "alignment", "dataset": "evalmuse-synthetic", "split": "test",
           "metrics": {"srcc": 0.61234, "plcc": 0.6, "acc": 0.7, "main_score": 0.65}}


@pytest.fixture(scope="module")
def align_dir(tmp_path_factory):
    import torch

    from evalmuse_models.models.evalmuse_align import (
        EvalMuseAlignConfig,
        EvalMuseAlignModel,
        build_tiny_processor,
    )

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("push") / "align"
    config = EvalMuseAlignConfig.from_preset("tiny")
    EvalMuseAlignModel(config).save_pretrained(folder)
    build_tiny_processor(config).save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps(METRICS))
    return folder


class FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


def _front_matter(path):
    return yaml.safe_load(path.read_text().split("---")[1])


def test_model_push_offline_stops_after_every_check(align_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    stage = tmp_path / "stage"
    with pytest.raises(hub.HubOfflineError, match="nothing was uploaded") as err:
        hub.push_model(align_dir, "my-org/evalmuse-align-tiny", stage_dir=stage, datasets=["my-org/evalmuse"])
    assert str(stage) in str(err.value)
    meta = _front_matter(stage / "README.md")
    assert meta["library_name"] == "transformers" and meta["datasets"] == ["my-org/evalmuse"]
    results = meta["model-index"][0]["results"]
    values = {m["type"]: m["value"] for r in results for m in r["metrics"]}
    assert values == {"srcc": 0.6123, "plcc": 0.6, "acc": 0.7, "main_score": 0.65}
    assert results[0]["dataset"]["split"] == "test"
    card = (stage / "README.md").read_text()
    assert "my-org/evalmuse-align-tiny" in card and "| main_score | 0.65 |" in card
    assert not (stage / "eval_results.json").exists()
    assert any(p.name.startswith("modeling_") for p in stage.glob("*.py")), "remote code must ship with the model"


def test_remote_code_check_runs_without_the_package(align_dir, tmp_path):
    report = hub.check_remote_code_loading(align_dir)
    assert report["model_class"] == "EvalMuseAlignModel"
    assert report["module"].startswith("transformers_modules"), "loaded from the folder's code, not the package"
    assert report["num_parameters"] > 0 and report["processor_class"] == "EvalMuseAlignProcessor"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "evalmuse_align"}))
    with pytest.raises(UserInputError, match="does not load with trust_remote_code"):
        hub.check_remote_code_loading(broken)


def test_model_push_uploads_the_staged_folder(align_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "is_offline", lambda: False)
    api = FakeApi()
    result = hub.push_model(align_dir, "my-org/m", stage_dir=tmp_path / "s", api=api, check_loading=False,
                            private=True)
    assert result.uploaded and result.url == "https://huggingface.co/my-org/m"
    assert api.calls[0] == ("create_repo", "my-org/m", {"repo_type": "model", "private": True, "exist_ok": True})
    upload = api.calls[1][1]
    assert upload["folder_path"] == str(tmp_path / "s") and upload["repo_type"] == "model"


def test_dataset_and_metric_pushes(prepared_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubOfflineError):
        hub.push_dataset(prepared_dataset, "my-org/evalmuse", stage_dir=tmp_path / "d")
    assert (tmp_path / "d" / "README.md").is_file()
    monkeypatch.setattr(hub, "is_offline", lambda: False)
    api = FakeApi()
    result = hub.push_dataset(prepared_dataset, "my-org/evalmuse", stage_dir=tmp_path / "d2", api=api)
    assert set(result.checks) == {"alignment", "structure"} and result.checks["alignment"]["test"] > 0
    assert api.calls[1][1]["repo_type"] == "dataset"

    api = FakeApi()
    result = hub.push_metric_space("my-org/t2i-main-score", stage_dir=tmp_path / "m", api=api)
    assert api.calls[0][2]["repo_type"] == "space" and api.calls[0][2]["space_sdk"] == "gradio"
    assert _front_matter(tmp_path / "m" / "README.md")["sdk"] == "gradio"
    assert (tmp_path / "m" / "app.py").is_file() and 0 < result.checks["alignment_example"]["srcc"] <= 1


def test_push_cli_errors(align_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(align_dir), "not-a-repo-id"]) == 2
    assert "org/name" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "org/x"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["push", str(align_dir), "org/x", "--skip-load-check", "--stage-dir", str(tmp_path / "st")]) == 3
    assert "offline" in capsys.readouterr().err
