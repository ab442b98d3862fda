"""Batch scoring at scale: inputs, model adapters, the resumable results file, mask RLE.

Entry point: :func:`score` (what ``evalmuse score`` runs). Results rows are read back with
:func:`read_results`; masks are decoded with :func:`rle_to_mask`.
"""

from .adapters import (
    AlignScorer,
    MLLMScorer,
    StructureScorer,
    decode_heatmap,
    encode_heatmap,
    load_align,
)
from .engine import score
from .inputs import ScoringRecord, ScoringSource, open_source
from .results import ResultsWriter, merge_results, read_results
from .rle import mask_to_rle, rle_area, rle_to_mask

__all__ = [
    "AlignScorer",
    "MLLMScorer",
    "ResultsWriter",
    "ScoringRecord",
    "ScoringSource",
    "StructureScorer",
    "decode_heatmap",
    "encode_heatmap",
    "load_align",
    "mask_to_rle",
    "merge_results",
    "open_source",
    "read_results",
    "rle_area",
    "rle_to_mask",
    "score",
]
