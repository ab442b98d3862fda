"""Small shared helpers (atomic writes, output folders this package owns, ...)."""

from .io import (
    OUTPUT_MARKER,
    UserInputError,
    atomic_directory,
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
    claim_output_directory,
    owned_directory,
    replace_directory,
)

__all__ = [
    "OUTPUT_MARKER",
    "UserInputError",
    "atomic_directory",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "claim_output_directory",
    "owned_directory",
    "replace_directory",
]
