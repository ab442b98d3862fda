"""What the converters share: reading a torch checkpoint safely and naming the tensors that do not fit."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..utils import UserInputError


def format_keys(keys: Iterable[str], limit: int = 20) -> str:
    """The first ``limit`` of ``keys`` (sorted), and how many more there are."""
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_torch_checkpoint(path: str | os.PathLike, *, what: str, layout: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (no pickled code runs), memory-mapped when ``mmap``
    and the file allows it (torch's zip format). A missing file says to pass ``what``; an unreadable one
    says it must be ``layout``; both as :class:`UserInputError`."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path} does not exist; pass {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as error:
        raise UserInputError(
            f"could not read {path} as a torch checkpoint with weights_only=True "
            f"({' '.join(str(error).split())[:300]}); pass {layout}"
        ) from error
