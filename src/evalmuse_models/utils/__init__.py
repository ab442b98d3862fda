"""Small shared helpers (atomic writes, ...)."""

from .io import atomic_write_bytes, atomic_write_text, atomic_directory, UserInputError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_directory", "UserInputError"]
