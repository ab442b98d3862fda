"""Strict JSON reading, shared by the official-file readers and the raw-release parsers.

``json`` keeps the LAST value of a key written twice in one object, silently. Here a repeated key
is either an error (``duplicates="error"``, the default: official files) or marked
(``duplicates="mark"``: raw releases, whose parsers refuse or skip only the record concerned): the
object then is a :class:`JsonObject` that keeps the FIRST value of each key and lists the repeats
in ``duplicate_keys``; :func:`find_duplicate_key` finds the first one anywhere in a parsed value.
Every failure is a :class:`~evalmuse_models.utils.UserInputError` naming the source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .io import UserInputError

__all__ = ["JsonObject", "find_duplicate_key", "load_json", "read_json_file"]


class JsonObject(dict):
    """A JSON object in which a key was written more than once: the first value of each key is
    kept, and ``duplicate_keys`` lists the repeated keys (once per repeat, in file order)."""

    duplicate_keys: tuple[str, ...] = ()


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _mark_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    marked = JsonObject()
    repeats = []
    for key, value in pairs:
        if key in marked:
            repeats.append(key)
        else:
            marked[key] = value
    marked.duplicate_keys = tuple(repeats)
    return marked


def load_json(data: bytes | str, source: str, *, duplicates: str = "error", hint: str = "") -> Any:
    """Parse JSON text strictly: UTF-8, bounded nesting, and a key written twice in one object
    refused (``duplicates="error"``) or marked (``duplicates="mark"``, see :class:`JsonObject`).

    Raises:
        UserInputError: naming ``source`` (a file name) and the position or key; ``hint`` (what
            to do) is appended.
    """
    if duplicates not in ("error", "mark"):
        raise ValueError(f"duplicates must be 'error' or 'mark', got {duplicates!r}")
    hook = _refuse_duplicates if duplicates == "error" else _mark_duplicates
    tail = f"; {hint}" if hint else ""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        return json.loads(text, object_pairs_hook=hook)
    except _DuplicateKey as exc:
        raise UserInputError(f"{source}: the key {exc.args[0]!r} appears twice in one JSON object "
                             f"(JSON readers keep only one of them){tail}") from None
    except RecursionError:
        raise UserInputError(f"{source}: the JSON is nested too deeply to be read{tail}") from None
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{source}: not valid JSON: not UTF-8 text ({exc}){tail}") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(
            f"{source}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{tail}"
        ) from None


def read_json_file(path: str | os.PathLike, *, duplicates: str = "error", hint: str = "") -> Any:
    """Read and parse a JSON file with :func:`load_json`; an unreadable file is a
    :class:`~evalmuse_models.utils.UserInputError` too."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserInputError(f"{path}: cannot read ({error.strerror or error})") from None
    return load_json(data, str(path), duplicates=duplicates, hint=hint)


def find_duplicate_key(value: Any) -> tuple[list[str | int], str] | None:
    """The first key written twice in any object of ``value`` (parsed with ``duplicates="mark"``):
    ``(path, key)``, ``path`` the keys and list positions leading to that object (``[]``: ``value``
    itself); ``None`` when there is none."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            if isinstance(item, JsonObject) and item.duplicate_keys:
                return path, item.duplicate_keys[0]
            stack.extend((child, [*path, key]) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((child, [*path, i]) for i, child in reversed(list(enumerate(item))))
    return None
