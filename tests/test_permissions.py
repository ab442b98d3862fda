"""Atomic outputs get the permissions of a plain open()/mkdir() under the process umask, not tempfile's
private 0o600 / 0o700."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest

from evalmuse_models.utils import atomic_directory, atomic_write_bytes, atomic_write_text, replace_directory
from evalmuse_models.utils.io import current_umask


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_files_and_folders_honour_the_umask(tmp_path, umask):
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    assert _mode(atomic_write_text(tmp_path / "a.txt", "x")) == file_mode
    assert _mode(atomic_write_bytes(tmp_path / "nested" / "b.bin", b"y")) == file_mode
    # Replacing an existing file gives the new file the same usual mode.
    assert _mode(atomic_write_text(tmp_path / "a.txt", "z")) == file_mode

    with atomic_directory(tmp_path / "folder") as tmp:
        atomic_write_text(tmp / "inside.json", "{}")
        (tmp / "plain.txt").write_text("plain")
        (tmp / "sub").mkdir()
    assert _mode(tmp_path / "folder") == dir_mode
    assert _mode(tmp_path / "folder" / "inside.json") == file_mode
    assert _mode(tmp_path / "folder" / "plain.txt") == file_mode
    assert _mode(tmp_path / "folder" / "sub") == dir_mode

    # Overwriting a folder keeps the usual mode as well.
    with atomic_directory(tmp_path / "folder", overwrite=True) as tmp:
        (tmp / "again.txt").write_text("again")
    assert _mode(tmp_path / "folder") == dir_mode
    assert not (tmp_path / "folder" / "plain.txt").exists()


def test_private_files_of_other_writers_are_opened_up_in_finished_folders(tmp_path, umask):
    """Writers such as safetensors (and tempfile) leave 0o600 files: a finished folder still gets the usual modes."""
    with atomic_directory(tmp_path / "model") as tmp:
        fd, private = tempfile.mkstemp(dir=tmp)
        os.close(fd)
        sub = tempfile.mkdtemp(dir=tmp)
        script = tmp / "run.sh"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o700)
        os.symlink(private, tmp / "link")
    out = tmp_path / "model"
    assert _mode(out / os.path.basename(private)) == 0o666 & ~umask
    assert _mode(out / os.path.basename(sub)) == 0o777 & ~umask
    assert _mode(out / "run.sh") == 0o777 & ~umask  # executables stay executable
    assert (out / "link").is_symlink()

    staged = tempfile.mkdtemp(dir=tmp_path)  # a folder finished elsewhere, moved with replace_directory
    (tmp_path / "target").mkdir()
    replace_directory(staged, tmp_path / "target")
    assert _mode(tmp_path / "target") == 0o777 & ~umask


def test_files_written_by_a_library_through_atomic_file_honour_the_umask(tmp_path, umask):
    from evalmuse_models.mllm.data import records_from_rows, save_pseudo_labels
    from evalmuse_models.utils.io import atomic_file

    with atomic_file(tmp_path / "lib.bin") as tmp, open(tmp, "wb") as handle:
        handle.write(b"by any writer")
    assert _mode(tmp_path / "lib.bin") == 0o666 & ~umask
    # the pseudo-label Parquet file came out 0o600 before
    path = save_pseudo_labels(records_from_rows([{"prompt": "a", "total_score": 3.0}]), tmp_path / "p.parquet")
    assert _mode(path) == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "lib.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "lib.bin").read_bytes() == b"by any writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.bin", "p.parquet"]


def test_replacing_a_folder_never_touches_a_user_folder_named_like_the_backup(tmp_path):
    # The backup used to be the fixed name ".<name>.old", deleted without a look.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    keep = tmp_path / ".out.old"
    keep.mkdir()
    (keep / "mine.txt").write_text("user data")
    new = tmp_path / "new"
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_directory(new, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]
    assert (keep / "mine.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out"]


def test_replacing_a_file_where_the_folder_goes(tmp_path):
    # The fresh backup placeholder is a folder: a file in the way is replaced directly, nothing is left behind.
    (tmp_path / "out").write_text("a file")
    new = tmp_path / "new"
    new.mkdir()
    (new / "x.txt").write_text("x")
    with atomic_directory(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "x.txt").write_text("x")
    assert (tmp_path / "out" / "x.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]
