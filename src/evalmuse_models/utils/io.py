"""Atomic file and folder writes, and the package's user-input error.

Every output of this package appears complete or not at all: files are written to a temporary
sibling and renamed over the target (``os.replace`` is atomic on POSIX within one filesystem);
folders are built under a temporary sibling and renamed into place at the end.

Both come out with the permissions a plain ``open()`` / ``mkdir()`` would give them (files
``0o666``, folders ``0o777``, less the process umask), not the private ``0o600`` / ``0o700`` that
``tempfile`` gives its temporary names (and that some writers, such as safetensors, give their files).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


class UserInputError(ValueError):
    """Bad user input (a file, a record, a field); the message says where and what to do."""


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: the only portable read is to set it and put it back
    os.umask(mask)
    return mask


def apply_usual_permissions(root: str | os.PathLike) -> None:
    """Give the folder ``root`` and everything in it the modes a plain ``mkdir()`` / ``open()`` would: folders
    ``0o777`` and files ``0o666`` (``0o777`` if executable) less the umask. Symbolic links are left alone."""
    umask = current_umask()
    for folder, _, names in os.walk(root):
        os.chmod(folder, 0o777 & ~umask)
        for name in names:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, (0o777 if mode & 0o111 else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (by any library), then move it over ``path``
    with the usual permissions; on any exception ``path`` is left untouched and the sibling removed.

    Example::

        with atomic_file("pseudo.parquet") as tmp:
            dataset.to_parquet(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0o600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def replace_directory(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished folder ``source`` to ``target``, replacing any folder there.

    Each ``os.replace`` is atomic; an existing ``target`` is first moved aside to a new hidden ``.old``
    sibling of its own (never a folder that was already there), so ``target`` is never a half-written mix
    of the two. The folder and its contents first get the usual permissions (:func:`apply_usual_permissions`).
    """
    source, target = Path(source), Path(target)
    apply_usual_permissions(source)
    if target.is_dir() and not target.is_symlink():
        old = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
        try:
            os.replace(target, old)  # over the empty placeholder just made
        except BaseException:
            os.rmdir(old)
            raise
        try:
            os.replace(source, target)
        except BaseException:
            os.replace(old, target)  # put the old folder back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        if target.exists() or target.is_symlink():
            os.unlink(target)  # a file or link where the folder goes (the callers decided it may go)
        os.replace(source, target)
    return target


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary sibling and move it to ``path`` only on success (with the usual
    permissions: see :func:`replace_directory`).

    Raises :class:`FileExistsError` when ``path`` exists and ``overwrite`` is false. On any
    exception the temporary folder is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another output folder or pass overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: The marker file in each output folder this package writes (reports, push stage folders, converted models): a
#: folder is only ever replaced when it has one (see :func:`claim_output_directory`). ``evalmuse push`` does not
#: upload it.
OUTPUT_MARKER = ".evalmuse-output.json"


def _output_kind(folder: Path) -> str | None:
    """The ``kind`` in ``folder``'s marker, or ``None`` when it has no valid one (a symbolic link is none)."""
    marker = folder / OUTPUT_MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "evalmuse-models":
        return None
    return str(data.get("kind"))


def _within(path: str, folder: str) -> bool:
    """Whether the resolved ``path`` is ``folder`` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def claim_output_directory(path: str | os.PathLike, kind: str, *, inputs=(), overwrite: bool = True,
                           option: str = "the output folder") -> Path:
    """Check that the folder ``kind`` (``"report"``, ``"push stage"``...) may be written at ``path``, and
    return ``path`` made absolute. Raises :class:`UserInputError` (one line, nothing touched) when it may not.

    Only what this package wrote is ever replaced: a folder holding the :data:`OUTPUT_MARKER` of the same
    ``kind`` (when ``overwrite``), or an empty folder. Refused, whatever ``overwrite`` says: an existing file,
    symbolic link or folder of anything else; a ``path`` that is or holds the current directory or one of
    ``inputs`` (files or folders the command reads), or lies inside an input folder.
    """
    target = Path(os.path.abspath(path))
    real = os.path.realpath(target)
    cwd = os.path.realpath(os.getcwd())
    if _within(cwd, real):
        raise UserInputError(f"{option} {path} is or holds the current directory; choose a new folder for it")
    for item in inputs:
        item_real = os.path.realpath(item)
        where = ("is" if item_real == real else "holds" if _within(item_real, real)
                 else "lies inside" if os.path.isdir(item_real) and _within(real, item_real) else None)
        if where:
            raise UserInputError(f"{option} {path} {where} the input {item}; nothing was changed: choose a folder "
                                 "apart from the inputs")
    if target.is_symlink():
        raise UserInputError(f"{option} {path} is a symbolic link; nothing was written: choose a new folder")
    if not target.exists():
        return target
    if not target.is_dir():
        raise UserInputError(f"{option} {path} is a file; nothing was changed: choose a new folder for it")
    found = _output_kind(target)
    if found is None:
        if any(target.iterdir()):
            raise UserInputError(f"{option} {path} exists and is not a {kind} folder written by evalmuse-models "
                                 f"(no {OUTPUT_MARKER}); nothing was deleted: choose a new or empty folder")
    elif found != kind:
        raise UserInputError(f"{option} {path} is a {found} folder, not a {kind} folder; nothing was deleted: "
                             "choose another folder")
    elif not overwrite:
        raise UserInputError(f"{option} {path} already exists; choose another folder or allow overwriting it")
    return target


@contextlib.contextmanager
def owned_directory(path: str | os.PathLike, kind: str, *, inputs=(), overwrite: bool = True,
                    option: str = "the output folder") -> Iterator[Path]:
    """:func:`atomic_directory` that replaces only what this package wrote: checks ``path`` with
    :func:`claim_output_directory` (before the work and again just before the swap), builds the folder under
    a temporary sibling, writes the :data:`OUTPUT_MARKER` of ``kind`` in it and moves it into place.

    Example::

        with owned_directory("report/", "report", inputs=["results.jsonl"]) as tmp:
            (tmp / "index.html").write_text(page)
    """
    target = claim_output_directory(path, kind, inputs=inputs, overwrite=overwrite, option=option)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        atomic_write_text(tmp / OUTPUT_MARKER, json.dumps({"written_by": "evalmuse-models", "kind": kind}) + "\n")
        claim_output_directory(target, kind, inputs=inputs, overwrite=overwrite, option=option)
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
