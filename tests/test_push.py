"""``evalmuse push``: card filled with measured metrics, remote-code loading check, offline stop, upload calls."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import yaml
from test_output_safety import _contents, _one_line_error, _user_folder

from evalmuse_models import hub
from evalmuse_models.cli import main
from evalmuse_models.utils import UserInputError
from evalmuse_models.utils.io import OUTPUT_MARKER

METRICS = {"task": "alignment", "dataset": "evalmuse-synthetic", "split": "test",
           "metrics": {"srcc": 0.61234, "plcc": 0.6, "acc": 0.7, "main_score": 0.65}}


@pytest.fixture(scope="module")
def align_dir(tmp_path_factory):
    import torch

    from evalmuse_models.models.evalmuse_align import EvalMuseAlignConfig, EvalMuseAlignModel
    from evalmuse_models.testing.align import build_tiny_processor

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
    assert OUTPUT_MARKER in upload["ignore_patterns"], "the stage folder's marker is not part of the repo"


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
    assert main(["push", str(align_dir), "org/--bad name"]) == 2  # huggingface_hub's own repo-id rules
    assert "'org/--bad name'" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "org/x"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["push", str(align_dir), "org/x", "--skip-load-check", "--stage-dir", str(tmp_path / "st")]) == 3
    assert "offline" in capsys.readouterr().err


def test_relative_stage_dir_passes_the_load_check(align_dir, tmp_path, monkeypatch):
    # the load check runs in a process with another working directory: a relative --stage-dir once failed it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hub.HubOfflineError) as err:
        hub.push_model(align_dir, "my-org/m", stage_dir="stage")
    assert str(tmp_path / "stage") in str(err.value)
    assert (tmp_path / "stage" / "README.md").is_file()


def _temporary_copies(folder):
    return [p.name for p in folder.iterdir() if "evalmuse-push" in p.name]


def test_push_leaves_no_temporary_copy_unless_offline(align_dir, tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "evalmuse_align"}))
    (broken / "big.bin").write_bytes(b"0" * 1000)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match="does not load"):
        hub.push_model(broken, "my-org/m")
    assert _temporary_copies(temp) == []

    class FailingApi(FakeApi):
        def upload_folder(self, **kwargs):
            raise ConnectionError("network down")

    monkeypatch.setattr(hub, "is_offline", lambda: False)
    # no network and no offline flag: one clear error (it was a raw traceback), not a crash
    with pytest.raises(hub.HubUploadError, match=r"upload to my-org/m failed \(ConnectionError: network down\)"):
        hub.push_model(align_dir, "my-org/m", api=FailingApi(), check_loading=False)
    assert _temporary_copies(temp) == []
    api = FakeApi()
    result = hub.push_model(align_dir, "my-org/m", api=api, check_loading=False)
    assert result.uploaded and result.staged_dir is None and _temporary_copies(temp) == []
    assert api.calls[1][1]["folder_path"].startswith(str(temp))

    # offline, the checked copy is kept on purpose and the message says where
    monkeypatch.setattr(hub, "is_offline", lambda: True)
    with pytest.raises(hub.HubOfflineError, match="temporary folder") as err:
        hub.push_model(align_dir, "my-org/m", check_loading=False)
    [kept] = _temporary_copies(temp)
    assert str(temp / kept) in str(err.value) and (temp / kept / "README.md").is_file()


def test_load_check_runs_only_the_staged_copy_and_says_so(align_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checked = []
    real_check = hub.check_remote_code_loading
    monkeypatch.setattr(hub, "check_remote_code_loading", lambda folder, **kw: checked.append(folder) or real_check(
        folder, **kw))
    stage = tmp_path / "stage"
    assert main(["push", str(align_dir), "my-org/m", "--stage-dir", str(stage)]) == 3
    err = capsys.readouterr().err
    assert "ran the folder's Python code" in err, err
    [folder] = checked
    assert os.path.realpath(align_dir) not in os.path.realpath(folder)
    assert os.path.dirname(os.path.realpath(folder)) == os.path.realpath(tmp_path), "built next to --stage-dir"

    # the metric Space: the evaluate module's script is run from the staged copy, never from its source
    import evaluate

    loaded = []
    real_load = evaluate.load
    monkeypatch.setattr(evaluate, "load", lambda path, *a, **kw: loaded.append(path) or real_load(path, *a, **kw))
    from evalmuse_models.metrics import EVALUATE_MODULE_PATH

    metric_stage = tmp_path / "metric-stage"
    with pytest.raises(hub.HubOfflineError):
        hub.push_metric_space("my-org/t2i", stage_dir=metric_stage)
    assert loaded and all(os.path.realpath(EVALUATE_MODULE_PATH) not in os.path.realpath(p) for p in loaded), loaded
    assert all(os.path.dirname(os.path.dirname(os.path.realpath(p))) == os.path.realpath(tmp_path)
               for p in loaded), loaded


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "models" / "align"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "evalmuse_align", "preset": "tiny"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def _push(model_dir, stage) -> list[str]:
    return ["push", str(model_dir), "my-org/m", "--skip-load-check", "--stage-dir", str(stage)]


def test_push_stage_dir_refuses_user_folders_and_the_source(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source_before = _contents(model_dir)
    mine = tmp_path / "my-files"
    mine_before = _user_folder(mine)
    assert main(_push(model_dir, mine)) == 2
    assert "not a push stage" in _one_line_error(capsys)
    assert _contents(mine) == mine_before

    for stage in (model_dir, model_dir / "stage", model_dir.parent, tmp_path):
        assert main(_push(model_dir, stage)) == 2, stage
        assert "the input" in _one_line_error(capsys)
    assert _contents(model_dir) == source_before and _contents(mine) == mine_before


def test_push_stage_dir_is_replaced_on_a_rerun(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    stage = tmp_path / "stage"
    assert main(_push(model_dir, stage)) == 3  # offline: staged and kept, path printed
    assert str(stage) in capsys.readouterr().err and (stage / "README.md").is_file()
    (stage / "leftover.bin").write_bytes(b"x")
    assert main(_push(model_dir, stage)) == 3
    assert not (stage / "leftover.bin").exists() and (stage / "model.safetensors").read_bytes() == b"weights"


@pytest.mark.parametrize("family", ["em_rahf", "hnu_vpai_loda"])
def test_every_family_has_a_model_card_template(family, tmp_path):
    """`evalmuse push` of an EM-RAHF or LoDa folder fills its own card (no --template needed)."""
    from evalmuse_models.hub import prepare_model_card

    (tmp_path / "config.json").write_text(json.dumps({"model_type": family, "preset": "tiny"}))
    card = prepare_model_card(tmp_path, "org/model", num_parameters=1234)
    text = str(card)
    assert "org/model" in text and "{{" not in text and "{%" not in text
    assert ("EM-RAHF" if family == "em_rahf" else "LoDa") in text
