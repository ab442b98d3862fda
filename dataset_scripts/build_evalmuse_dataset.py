"""Build the Hub-ready EvalMuse dataset folder from the raw releases.

A thin shell over :func:`evalmuse_models.data.prepare_dataset` (the parsing, validation and
export live in the library; ``evalmuse prepare-data`` is the same command). The dataset card is
rendered from ``dataset_card_template.md`` beside this script unless ``--card-template`` says
otherwise.

Usage::

    python dataset_scripts/build_evalmuse_dataset.py --alignment EvalMuse-40K/ \\
        --structure EvalMuse-Structure/ evalmuse/
    huggingface-cli upload --repo-type dataset ORG/evalmuse evalmuse/ .    # publish (needs a token)

Then ``datasets.load_dataset("ORG/evalmuse", "alignment")``, or ``load_dataset("evalmuse", ...)``
from the folder's parent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    from evalmuse_models.data import prepare_dataset
    from evalmuse_models.utils import UserInputError

    parser = argparse.ArgumentParser(description="Build the EvalMuse Parquet dataset (alignment + structure).")
    parser.add_argument("out_dir", help="dataset folder to create")
    parser.add_argument("--alignment", help="EvalMuse-40K raw release folder")
    parser.add_argument("--structure", help="EvalMuse-Structure raw release folder")
    parser.add_argument("--skip-invalid", action="store_true", help="leave invalid records out (with a report)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--max-shard-size", default="500MB")
    parser.add_argument("--card-template", default=str(HERE / "dataset_card_template.md"))
    args = parser.parse_args(argv)
    if not (args.alignment or args.structure):
        parser.error("give --alignment, --structure or both")
    try:
        result = prepare_dataset(
            args.out_dir, alignment_dir=args.alignment, structure_dir=args.structure,
            skip_invalid=args.skip_invalid, overwrite=args.overwrite, max_shard_size=args.max_shard_size,
            card_template=args.card_template,
        )
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {result.path}: {result.num_rows}; skipped {len(result.skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
