"""Analyses of the official scores: how they rank systems and how far a result carries.

- :mod:`~evalmuse_models.analysis.weights`: Main Score / Final Score weight sensitivity and rank
  stability over the simplex of weights, with bootstrap rank probabilities (``evalmuse analyze
  weights``);
- :mod:`~evalmuse_models.analysis.generalisation`: the gap between generators seen in training and
  held-out ones (``evalmuse eval alignment --by seen/unseen``);
- :mod:`~evalmuse_models.analysis.parts`: the per-image statistics both recompute the score parts
  from, on any subset of the images.

Each analysis returns a JSON-ready dict with an ``"analysis"`` key, which ``evalmuse report
--analysis FILE`` turns into a section of the HTML report.
"""

from .generalisation import format_generalisation, generalisation_gap, generalisation_gap_files
from .parts import TRACKS, AlignmentParts, StructureParts, Track, load_parts
from .weights import (
    NAMED_WEIGHTINGS,
    analyze_weights,
    bootstrap_ranks,
    nearest_tie,
    rank_systems,
    simplex_grid,
    weight_sensitivity,
)

__all__ = [
    "NAMED_WEIGHTINGS",
    "TRACKS",
    "AlignmentParts",
    "StructureParts",
    "Track",
    "analyze_weights",
    "bootstrap_ranks",
    "format_generalisation",
    "generalisation_gap",
    "generalisation_gap_files",
    "load_parts",
    "nearest_tie",
    "rank_systems",
    "simplex_grid",
    "weight_sensitivity",
]
