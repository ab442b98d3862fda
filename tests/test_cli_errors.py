"""Input and machine errors reach the user as one line, never as a traceback, and never as a file
that grows without end."""

from __future__ import annotations

import errno
import os

import pytest
from test_score_engine import write_image_folder

from evalmuse_models.cli import main
from evalmuse_models.scoring import results as results_io

FAKE = "test_score_engine:make_fake_align"


def _one_line_error(capsys, status, code):
    assert status == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    return err[-1]


def test_non_utf8_prompts_file_names_the_file(tmp_path, capsys):
    write_image_folder(tmp_path / "images", count=2, bad=False)
    (tmp_path / "images" / "prompts.jsonl").write_bytes(b'{"image": "gen-a/000.png", "prompt": "caf\xe9"}\n')
    line = _one_line_error(capsys, main(["score", str(tmp_path / "images"), "--out", str(tmp_path / "r.jsonl"),
                                         "--align", FAKE]), 2)
    assert "prompts.jsonl: not UTF-8 text" in line


@pytest.mark.parametrize("target", ["/dev/full", "folder"])
def test_non_regular_output_is_refused_before_scoring(tmp_path, capsys, target):
    # `--out /dev/full` used to grow without end (24 GB) instead of failing.
    write_image_folder(tmp_path / "images", count=2, bad=False)
    out = "/dev/full" if target == "/dev/full" else str(tmp_path)
    line = _one_line_error(capsys, main(["score", str(tmp_path / "images"), "--out", out, "--align", FAKE]), 2)
    assert "not a regular file" in line


def test_a_full_disk_is_one_line_and_the_results_so_far_are_kept(tmp_path, capsys, monkeypatch):
    write_image_folder(tmp_path / "images", count=6, bad=False)
    out = tmp_path / "r.jsonl"
    real_write = results_io.ResultsWriter.write
    calls = []

    def write_until_full(self, rows):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_write(self, rows)

    monkeypatch.setattr(results_io.ResultsWriter, "write", write_until_full)
    line = _one_line_error(capsys, main(["score", str(tmp_path / "images"), "--out", str(out), "--align", FAKE,
                                         "--batch-size", "2"]), 1)
    assert line == f"error: No space left on device: {out}"
    assert len(results_io.read_results(out)) == 2  # the batch written before the disk filled up


def test_other_os_errors_still_raise(monkeypatch):
    # Only machine conditions become one-line messages; a programming error keeps its traceback.
    import evalmuse_models.commands.eval as eval_command

    def broken(args):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(eval_command, "_run_alignment", broken)
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["eval", "alignment", "--truth", "a", "--submission", "b"])


@pytest.fixture(scope="module")
def tiny_align(tmp_path_factory):
    from evalmuse_models.testing import save_tiny_models

    align_dir, _ = save_tiny_models(tmp_path_factory.mktemp("tiny"))
    return align_dir


def _copy_with(tiny_align, tmp_path, edit):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_align, folder)
    edit(folder / "model.safetensors")
    return folder


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def _hostile_bin(path):
    # A pickled .bin instead of safetensors, asking to run code: torch's weights_only loading refuses it.
    import pickle

    path.unlink()
    (path.parent / "pytorch_model.bin").write_bytes(pickle.dumps({"mask_proj.layers.0.weight": _Payload()}))


def _drop_one_add_one(path):
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    tensors.pop("mask_proj.layers.0.weight")
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop_one_add_one, r"weights of .* do not match its config: 1 missing \(mask_proj.layers.0.weight\); 1 unex"),
        (lambda path: os.truncate(path, 1000), "cannot read the weights file of .*truncated"),
        (lambda path: path.unlink(), "cannot load the model weights of"),
        (_hostile_bin, "cannot load the model weights of .*[Ww]eights only load failed"),
    ],
)
def test_a_model_whose_weights_do_not_match_is_refused_not_scored_at_random(tiny_align, tmp_path, capsys, edit,
                                                                            message):
    # Such a folder used to be scored with random weights, every row saying "ok".
    import re

    folder = _copy_with(tiny_align, tmp_path, edit)
    write_image_folder(tmp_path / "images", count=2, bad=False)
    out = tmp_path / "r.jsonl"
    line = _one_line_error(capsys, main(["score", str(tmp_path / "images"), "--out", str(out), "--align",
                                         str(folder)]), 2)
    assert re.search(message, line), line
    assert not out.exists() or results_io.read_results(out) == []


def test_an_older_folder_without_the_itc_temperature_still_loads(tiny_align, tmp_path):
    from safetensors.torch import load_file, save_file

    from evalmuse_models.scoring.adapters import load_align

    def drop_temp(path):
        tensors = load_file(path)
        tensors.pop("temp")
        save_file(tensors, path, metadata={"format": "pt"})

    scorer = load_align(str(_copy_with(tiny_align, tmp_path, drop_temp)))
    assert float(scorer.model.temp) == pytest.approx(0.07)


def test_prompts_file_is_read_strictly(tmp_path, capsys):
    write_image_folder(tmp_path / "images", count=2, bad=False)
    prompts = tmp_path / "images" / "prompts.jsonl"
    prompts.write_text('{"image": "gen-a/000.png", "prompt": "a", "prompt": "b"}\n')  # which prompt?
    line = _one_line_error(capsys, main(["score", str(tmp_path / "images"), "--out", str(tmp_path / "r.jsonl"),
                                         "--align", FAKE]), 2)
    assert "prompts.jsonl, line 1" in line and "'prompt'" in line and "twice" in line


def test_score_leaves_the_alpha_rule_to_the_processor(tiny_align, tmp_path):
    # score() used to convert to RGB first, so a processor's image_alpha="white" never saw the alpha channel.
    from PIL import Image

    from evalmuse_models.models.evalmuse_align import EvalMuseAlignModel, EvalMuseAlignProcessor
    from evalmuse_models.scoring import read_results, score

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGBA", (48, 40), (200, 30, 30, 0)).save(folder / "clear.png")
    (folder / "prompts.jsonl").write_text('{"image": "clear.png", "prompt": "a red square"}\n')
    model = EvalMuseAlignModel.from_pretrained(tiny_align).eval()
    for alpha in ("drop", "white"):
        processor = EvalMuseAlignProcessor.from_pretrained(tiny_align, image_alpha=alpha)
        out = tmp_path / f"{alpha}.jsonl"
        score(folder, out=out, align=_Scorer(model, processor), progress=False)
        direct = model.score([Image.open(folder / "clear.png")], ["a red square"], processor=processor)[0]
        assert read_results(out)[0]["alignment"]["overall"] == pytest.approx(direct.overall, abs=1e-5)


class _Scorer:
    """The model with a chosen processor (the scoring engine passes ``.processor`` on to ``score``)."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    def score(self, images, prompts, elements=None, **kwargs):
        return self.model.score(images, prompts, elements=elements, **kwargs)
