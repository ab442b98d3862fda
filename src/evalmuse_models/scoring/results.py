"""The results file: append-only JSON Lines, one row per image keyed by a stable ``id``.

Durability rules (what makes ``evalmuse score`` resumable after ``kill -9``):

* rows are only ever appended; each batch of rows is written, flushed and ``fsync``'d before the
  next batch is scored, so a finished row is never lost;
* a kill can leave a *torn* last line (no trailing newline, or half a JSON object): readers drop
  it, and :class:`ResultsWriter` truncates it away before appending, so it is re-scored;
* on resume the ids already present are skipped, so nothing is scored twice;
* with several processes (``accelerate launch``) every rank appends to its own shard file and
  rank 0 merges them with :func:`merge_results` (de-duplicated by id, in input order) into the
  final file, written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..utils import UserInputError, atomic_write_text


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(line_number, raw_line, complete)`` for every line of ``path``."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, raw, raw.endswith(b"\n")


def read_results(path: str | os.PathLike, *, missing_ok: bool = False) -> list[dict]:
    """Read a results file, dropping a torn last line (left by an interrupted run).

    A corrupt line anywhere else is an error: the file was edited or damaged by something else.

    Example::

        rows = read_results("results.jsonl")
        overall = {row["id"]: row["alignment"]["overall"] for row in rows if row["status"] == "ok"}
    """
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise UserInputError(f"results file {path} does not exist; run `evalmuse score` first")
    rows: list[dict] = []
    pending_error: tuple[int, str] | None = None
    for number, raw, complete in _iter_lines(path):
        if pending_error is not None:
            # A bad line followed by more lines is not a torn tail: real corruption.
            raise UserInputError(f"{path}, line {pending_error[0]}: {pending_error[1]}; fix or delete that line")
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as err:
            pending_error = (number, f"not valid JSON ({err.msg})")
            continue
        if not complete:
            # Parsable but without its newline: the writer died before finishing the line.
            pending_error = (number, "line without a trailing newline")
            continue
        if not isinstance(row, dict) or "id" not in row:
            raise UserInputError(f"{path}, line {number}: a results row must be a JSON object with an 'id' field")
        rows.append(row)
    return rows


def _truncate_torn_tail(path: Path) -> int:
    """Cut a torn last line off ``path``; returns the number of bytes removed."""
    if not path.exists():
        return 0
    good_end = 0
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.endswith(b"\n"):
                try:
                    if raw.strip():
                        json.loads(raw)
                except json.JSONDecodeError:
                    break
                good_end += len(raw)
            else:
                break
    size = path.stat().st_size
    if good_end < size:
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())
    return size - good_end


class ResultsWriter:
    """Append rows to a JSON Lines file, durably (``flush`` + ``fsync`` after each :meth:`write`).

    Opening the writer repairs a torn last line left by a killed run. Use it as a context manager::

        with ResultsWriter("results.jsonl") as writer:
            writer.write([{"id": "a.png", "status": "ok", ...}])
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = _truncate_torn_tail(self.path)
        self._handle = open(self.path, "ab")  # noqa: SIM115 - closed by close() / __exit__

    def write(self, rows: Iterable[dict]) -> int:
        data = b"".join(
            json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"
            for row in rows
        )
        if data:
            self._handle.write(data)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        return data.count(b"\n")

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard_dir(out_path: str | os.PathLike) -> Path:
    """Folder holding the per-rank shard files of a distributed run writing ``out_path``."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.name}.shards")


def shard_path(out_path: str | os.PathLike, rank: int) -> Path:
    return shard_dir(out_path) / f"rank-{rank:05d}.jsonl"


def existing_shards(out_path: str | os.PathLike) -> list[Path]:
    folder = shard_dir(out_path)
    return sorted(folder.glob("rank-*.jsonl")) if folder.is_dir() else []


def done_ids(out_path: str | os.PathLike) -> set[str]:
    """Ids already in the results file or in any shard of an interrupted distributed run."""
    ids = {row["id"] for row in read_results(out_path, missing_ok=True)}
    for shard in existing_shards(out_path):
        ids.update(row["id"] for row in read_results(shard, missing_ok=True))
    return ids


def merge_results(out_path: str | os.PathLike, order: Sequence[str] | None = None, *, remove_shards: bool = True) -> int:
    """Merge the results file and its shards into ``out_path`` atomically; returns the row count.

    Rows are de-duplicated by ``id`` (the first occurrence wins: the final file, then shards in
    rank order) and sorted by their position in ``order`` (ids not in ``order`` go last, in the
    order met).
    """
    out_path = Path(out_path)
    shards = existing_shards(out_path)
    merged: dict[str, dict] = {}
    for source in [out_path, *shards]:
        for row in read_results(source, missing_ok=True):
            merged.setdefault(row["id"], row)
    rows = list(merged.values())
    if order is not None:
        position = {key: index for index, key in enumerate(order)}
        rows.sort(key=lambda row: position.get(row["id"], len(position)))
    text = "".join(
        json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n" for row in rows
    )
    atomic_write_text(out_path, text)
    if remove_shards:
        for shard in shards:
            shard.unlink(missing_ok=True)
        folder = shard_dir(out_path)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return len(rows)


def drop_error_rows(out_path: str | os.PathLike) -> int:
    """Remove rows whose ``status`` is not ``"ok"`` from a results file and its shards (atomically),
    so that a resumed run scores those images again; returns how many rows were removed."""
    removed = 0
    for path in [Path(out_path), *existing_shards(out_path)]:
        rows = read_results(path, missing_ok=True)
        kept = [row for row in rows if row.get("status") == "ok"]
        if len(kept) != len(rows):
            removed += len(rows) - len(kept)
            atomic_write_text(path, "".join(
                json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n" for row in kept
            ))
    return removed
