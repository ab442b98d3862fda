"""Build the Hub-ready EvalMuse dataset folder from the raw releases.

A thin shell over ``evalmuse prepare-data`` (the parsing, validation and export live in
:func:`evalmuse_models.data.prepare_dataset`); it takes the same options. The dataset card is
rendered from ``dataset_card_template.md`` beside this script unless ``--card-template`` says
otherwise.

Usage::

    python dataset_scripts/build_evalmuse_dataset.py --alignment EvalMuse-40K/ \\
        --structure EvalMuse-Structure/ evalmuse/
    huggingface-cli upload --repo-type dataset ORG/evalmuse evalmuse/ .    # publish (needs a token)

Then ``datasets.load_dataset("ORG/evalmuse", "alignment")``, or ``load_dataset("evalmuse", ...)``
from the folder's parent. The official truth files of the labelled splits are written beside the
data, in ``evalmuse/official/<config>/<split>/`` (``--no-official-truth`` leaves them out).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """``evalmuse prepare-data`` with the card template beside this script (every option of the command works)."""
    from evalmuse_models.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--card-template" or arg.startswith("--card-template=") for arg in argv):
        argv += ["--card-template", str(HERE / "dataset_card_template.md")]
    return cli_main(["prepare-data", *argv])


if __name__ == "__main__":
    sys.exit(main())
