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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0o600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def replace_directory(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished folder ``source`` to ``target``, replacing any folder there.

    Each ``os.replace`` is atomic; an existing ``target`` is first moved aside to a hidden ``.old``
    sibling, so ``target`` is never a half-written mix of the two. The folder and its contents first get
    the usual permissions (:func:`apply_usual_permissions`).
    """
    source, target = Path(source), Path(target)
    apply_usual_permissions(source)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
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
