"""The error raised for one bad record of a raw release, and the list of skipped records."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..utils import UserInputError


class InvalidValue(ValueError):
    """A raw value that does not fit its field (turned into a :class:`RecordError` by the parsers)."""


class RecordError(UserInputError):
    """One record of a raw release is invalid.

    The message names the file, the record (its key or position) and the field, and says what
    to do. The parts are also available as attributes for reports.
    """

    def __init__(self, file, record: str, field: str, reason: str, hint: str | None = None):
        self.file = str(file)
        self.record = record
        self.field = field
        self.reason = reason
        hint = hint or "fix the record, or pass --skip-invalid (skip_invalid=True) to leave it out"
        super().__init__(f"{self.file}: record {record}: field {field!r}: {reason}; {hint}")


@dataclass(frozen=True)
class SkippedRecord:
    """A record left out by ``skip_invalid``: where it was and why."""

    file: str
    record: str
    field: str
    reason: str

    @classmethod
    def from_error(cls, error: RecordError) -> SkippedRecord:
        return cls(error.file, error.record, error.field, error.reason)


def write_skipped_report(path, skipped: list[SkippedRecord]) -> Path:
    """Write skipped records as JSON Lines (one object per record: file, record, field, reason)."""
    from ..utils import atomic_write_text

    text = "".join(json.dumps(asdict(item), ensure_ascii=False) + "\n" for item in skipped)
    return atomic_write_text(path, text)
