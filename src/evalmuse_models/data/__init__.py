"""EvalMuse data: raw-release parsers, mask rasterising, synthetic releases and Parquet export.

Importing this package is cheap (no ``datasets``, no OpenCV); heavy libraries load on first use.

Typical uses::

    from evalmuse_models.data import (
        load_alignment_records, load_structure_records, binary_mask, baseline_heatmap, prepare_dataset,
    )

    records = load_alignment_records("EvalMuse-40K/train_list.json")
    structure = load_structure_records("EvalMuse-Structure/val_info.json")
    truth_512 = binary_mask(structure[0], size=(512, 512))   # needs the image size: see below
    prepare_dataset("out/evalmuse", alignment_dir="EvalMuse-40K", structure_dir="EvalMuse-Structure")
    # -> also out/evalmuse/official/<config>/<split>/{eval.json|gt.pkl}, the labelled splits' truth;
    #    write_official_truth("structure", rows_or_records, "gt.pkl") writes one from any labelled rows

``load_structure_records`` locates the images but does not read them; call
:func:`resolve_images` (reads image headers) before rasterising records, or rasterise rows of
the prepared ``structure`` dataset, which carry their image.
"""

from __future__ import annotations

from .alignment import (
    ALIGNMENT_SPLIT_FILES,
    ELEMENT_CATEGORIES,
    AlignmentRecord,
    Element,
    add_prompt_variance,
    element_key_parts,
    find_alignment_files,
    generator_from_img_path,
    load_alignment_records,
    normalize_category,
    parse_alignment_record,
    parse_element_score,
    read_generator_map,
    split_element_key,
)
from .errors import RecordError, SkippedRecord
from .export import (
    OFFICIAL_TRUTH_FILES,
    PreparedDataset,
    alignment_features,
    build_official_truth,
    prepare_dataset,
    structure_features,
    write_official_truth,
)
from .masks import (
    HEATMAP_LEVELS,
    TRUTH_SIZE,
    TruthMaps,
    baseline_heatmap,
    binary_mask,
    heatmap_levels,
    rasterize_annotators,
    truth_maps,
    vote_map,
)
from .structure import (
    STRUCTURE_SPLIT_FILES,
    Shape,
    StructureRecord,
    find_structure_files,
    load_structure_records,
    parse_structure_record,
    resolve_images,
)


def __getattr__(name):
    # Lazy access to the synthetic release writers: ``evalmuse_models.data.synthetic``.
    if name == "synthetic":
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALIGNMENT_SPLIT_FILES",
    "ELEMENT_CATEGORIES",
    "HEATMAP_LEVELS",
    "OFFICIAL_TRUTH_FILES",
    "STRUCTURE_SPLIT_FILES",
    "TRUTH_SIZE",
    "AlignmentRecord",
    "Element",
    "PreparedDataset",
    "RecordError",
    "Shape",
    "SkippedRecord",
    "StructureRecord",
    "TruthMaps",
    "add_prompt_variance",
    "alignment_features",
    "baseline_heatmap",
    "binary_mask",
    "build_official_truth",
    "element_key_parts",
    "find_alignment_files",
    "find_structure_files",
    "generator_from_img_path",
    "heatmap_levels",
    "load_alignment_records",
    "load_structure_records",
    "normalize_category",
    "parse_alignment_record",
    "parse_element_score",
    "parse_structure_record",
    "prepare_dataset",
    "rasterize_annotators",
    "read_generator_map",
    "resolve_images",
    "split_element_key",
    "structure_features",
    "truth_maps",
    "vote_map",
    "write_official_truth",
]
