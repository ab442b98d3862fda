"""The static HTML report of a results file (``evalmuse report``): :func:`build_report`."""

from .builder import build_report, generator_table

__all__ = ["build_report", "generator_table"]
