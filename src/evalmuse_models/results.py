"""The typed results of the package's scorers, one class per kind of assessment, with ``to_dict()``.

Each is defined next to the model family that produces it (the family's files ship as remote code,
so a model loaded with ``trust_remote_code=True`` returns the same class without this package) and
re-exported here. Their ``to_dict()`` objects are what the results rows of ``evalmuse score`` hold; the
row schema is documented in ``docs/results.md``.

* :class:`AlignmentResult` — overall alignment (1-5), element probabilities (keyed by the element key) and the
  keys that could not be located, from ``EvalMuseAlignProcessor.post_process_alignment`` (``EvalMuseAlignModel.score``,
  the ``t2i-alignment`` pipeline) and from the MLLM judge (``MLLMAlignmentScorer.score``, ensembles).
* :class:`StructureResult` — structure score (1-5), distortion heatmap, masks and regions of one image,
  from ``EvalMuseStructureProcessor.post_process_distortion`` and the ``t2i-structure`` pipeline.
"""

from __future__ import annotations

from .models.evalmuse_align.processing_evalmuse_align import AlignmentResult
from .models.evalmuse_structure.processing_evalmuse_structure import StructureResult

__all__ = ["AlignmentResult", "StructureResult"]
