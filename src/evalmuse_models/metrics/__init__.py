"""The official NTIRE 2025 text-to-image quality-assessment scores, as plain NumPy/SciPy/OpenCV.

- :func:`alignment_main_score`: track 1 (EvalMuse-40K), Main = 0.25·SRCC + 0.25·PLCC + 0.5·ACC;
- :func:`structure_final_score`: track 2 (EvalMuse-Structure), Final = 0.7·F1 + 0.15·(PLCC + SRCC);
- the official file formats (``eval.json``/``output.json``, ``gt.pkl``/``output.pkl``): readers
  (pickles through a restricted unpickler), submission writers (``readme.txt`` + ``submission.zip``)
  and truth writers, and :func:`score_codalab`, a drop-in for the Codalab scoring programs;
- :data:`EVALUATE_MODULE_PATH`: the ``evaluate`` module ``t2i_main_score`` shipped in the package,
  for ``evaluate.load(EVALUATE_MODULE_PATH, "alignment")``.
"""

import os

from .alignment import alignment_main_score, element_category
from .io import (
    RestrictedUnpickler,
    format_codalab_scores,
    read_alignment_file,
    read_structure_pickle,
    score_alignment_files,
    score_codalab,
    score_structure_files,
    write_alignment_submission,
    write_alignment_truth,
    write_structure_submission,
    write_structure_truth,
)
from .structure import NoPredictedRegionsError, binarize_prediction, image_region_counts, structure_final_score

#: Folder of the ``evaluate`` module inside the installed package (``evaluate.load(EVALUATE_MODULE_PATH, "structure")``).
EVALUATE_MODULE_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "metric", "t2i_main_score"
)

__all__ = [
    "EVALUATE_MODULE_PATH",
    "NoPredictedRegionsError",
    "RestrictedUnpickler",
    "alignment_main_score",
    "binarize_prediction",
    "element_category",
    "format_codalab_scores",
    "image_region_counts",
    "read_alignment_file",
    "read_structure_pickle",
    "score_alignment_files",
    "score_codalab",
    "score_structure_files",
    "structure_final_score",
    "write_alignment_submission",
    "write_alignment_truth",
    "write_structure_submission",
    "write_structure_truth",
]
