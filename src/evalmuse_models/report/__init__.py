"""The static HTML report of a results file (``evalmuse report``): :func:`build_report`."""

from .builder import (
    apply_generator_map,
    build_report,
    category_table,
    generator_table,
    is_structure_split,
    structure_split_table,
)

__all__ = [
    "apply_generator_map",
    "build_report",
    "category_table",
    "generator_table",
    "is_structure_split",
    "structure_split_table",
]
