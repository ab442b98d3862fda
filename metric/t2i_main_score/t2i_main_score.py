"""t2i_main_score: the official NTIRE 2025 text-to-image quality-assessment scores.

A thin `evaluate` shell over `evalmuse_models.metrics` (where the arithmetic lives and is tested).
Configs: "alignment" (EvalMuse-40K, Main Score) and "structure" (EvalMuse-Structure, Final Score).
"""

import datasets
import evaluate
import numpy as np

import evalmuse_models.metrics

_CITATION = """\
@article{han2024evalmuse,
  title={EvalMuse-40K: A Reliable and Fine-Grained Benchmark with Comprehensive Human Annotations for Text-to-Image Generation Model Evaluation},
  author={Han, Shuhao and Fan, Haotian and Fu, Jiachen and Li, Liang and Li, Tao and Cui, Junhui and Wang, Yunqiu and Tai, Yang and Sun, Jingwei and Guo, Chunle and Li, Chongyi},
  journal={arXiv preprint arXiv:2412.18150},
  year={2024}
}
"""

_DESCRIPTION = """\
The official scores of the NTIRE 2025 challenge on text-to-image generation quality assessment.
"alignment" (track 1): Main Score = 0.25*SRCC + 0.25*PLCC + 0.5*ACC, where PLCC follows a 4-parameter
logistic fit (by default in the released script's direction, true -> submitted) and ACC is the pooled
element accuracy after binarising truth and prediction with >= 0.5.
"structure" (track 2): Final = 0.7*F1 + 0.15*(PLCC + SRCC), where F1 pools region precision and recall
over the set (predicted masks resized to 512x512 and binarised, external contours, area filters,
a match when the IoU of the filled contours is above 0.1).
"""

_KWARGS_DESCRIPTION = """
Args (alignment):
    predictions (list of float): submitted overall alignment score per image (any scale).
    references (list of float): true overall score per image.
    prediction_element_scores (list of list of float): per image, submitted element probabilities,
        aligned with the truth's elements.
    reference_element_scores (list of list of float): per image, true element scores (0-1).
    plcc_direction ("official" or "standard"), element_threshold (0.5), weights ((0.25, 0.25, 0.5)),
    generators (list of str, optional), n_resamples (0), seed (0): see
    evalmuse_models.metrics.alignment_main_score.
Args (structure):
    predictions (list of float): submitted structure score per image.
    references (list of float): true score per image.
    prediction_masks (list of 2-D arrays): predicted 0/1 uint8 masks, any resolution.
    reference_masks (list of 2-D arrays): true 0/1 masks, 512x512.
    min_pred_area, min_true_area, iou_threshold, size, weights, n_resamples, seed: see
    evalmuse_models.metrics.structure_final_score.
Returns:
    alignment: srcc, plcc, acc, main_score, krcc, rmse (floats).
    structure: precision, recall, f1, giou, plcc, srcc, final_score (floats).
Examples:
    >>> metric = evaluate.load("metric/t2i_main_score", "alignment")
    >>> r = metric.compute(predictions=[1.0, 2.0, 3.5, 3.0], references=[1.3, 2.0, 4.7, 3.3],
    ...                    prediction_element_scores=[[0.9, 0.2], [0.7], [0.1], []],
    ...                    reference_element_scores=[[1.0, 0.0], [0.67], [0.33], []])
    >>> r["acc"]
    1.0
"""

_FEATURES = {
    "alignment": datasets.Features(
        {
            "predictions": datasets.Value("float64"),
            "references": datasets.Value("float64"),
            "prediction_element_scores": datasets.Sequence(datasets.Value("float64")),
            "reference_element_scores": datasets.Sequence(datasets.Value("float64")),
        }
    ),
    "structure": datasets.Features(
        {
            "predictions": datasets.Value("float64"),
            "references": datasets.Value("float64"),
            "prediction_masks": datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))),
            "reference_masks": datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))),
        }
    ),
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class T2IMainScore(evaluate.Metric):
    """NTIRE 2025 T2I quality assessment: alignment Main Score and structure Final Score."""

    def _info(self):
        if self.config_name not in _FEATURES:
            raise KeyError(
                f"t2i_main_score has the configs 'alignment' and 'structure', got {self.config_name!r}: "
                'use evaluate.load("metric/t2i_main_score", "alignment")'
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES[self.config_name],
            homepage="https://github.com/DYEvaLab/EvalMuse",
            codebase_urls=["https://github.com/DYEvaLab/EvalMuse"],
            reference_urls=["https://arxiv.org/abs/2412.18150", "https://codalab.lisn.upsaclay.fr/competitions/21220"],
        )

    def _compute(self, predictions, references, **kwargs):
        if self.config_name == "alignment":
            return evalmuse_models.metrics.alignment_main_score(
                predictions,
                references,
                kwargs.pop("prediction_element_scores"),
                kwargs.pop("reference_element_scores"),
                **kwargs,
            )
        prediction_masks = [np.asarray(m, dtype=np.uint8) for m in kwargs.pop("prediction_masks")]
        reference_masks = [np.asarray(m, dtype=np.uint8) for m in kwargs.pop("reference_masks")]
        return evalmuse_models.metrics.structure_final_score(
            predictions, references, prediction_masks, reference_masks, **kwargs
        )
