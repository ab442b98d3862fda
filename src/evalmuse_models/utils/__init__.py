"""Small shared helpers (atomic writes, ...)."""

from .io import UserInputError, atomic_directory, atomic_write_bytes, atomic_write_text, replace_directory

__all__ = ["UserInputError", "atomic_directory", "atomic_write_bytes", "atomic_write_text", "replace_directory"]
