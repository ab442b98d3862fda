"""``evalmuse push``: publish a model folder, the prepared dataset or the metric Space to the Hub."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="publish a model (card filled from model_cards/), the dataset or the metric Space to the Hub",
        description=(
            "Copy FOLDER to a stage folder, check the copy (models: card with model-index results, loads with "
            "trust_remote_code=True without evalmuse_models, which RUNS the folder's .py files; datasets: every "
            "config loads; metric: the evaluate module's script runs and computes), then upload it to REPO_ID "
            "with huggingface_hub. Code is only ever run from the fresh copy, never from FOLDER itself: push only "
            "code you trust. Offline it stops before the upload and keeps the stage folder."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("folder", help="model folder (save_pretrained), prepared dataset folder, or metric folder "
                        "(for --type metric; default: the module shipped in the package)", nargs="?")
    parser.add_argument("repo_id", help="target repository, org/name")
    parser.add_argument("--type", choices=["model", "dataset", "metric"], default="model", dest="kind",
                        help="what FOLDER holds: a model, a prepared dataset, or the evaluate metric (as a Space)")
    parser.add_argument("--metrics", help="model: JSON file {'task','dataset','split','metrics'} (default: "
                        "FOLDER/eval_results.json, written by `evalmuse demo`)")
    parser.add_argument("--dataset", action="append", dest="datasets", help="model: training dataset id (repeatable)")
    parser.add_argument("--license", default="apache-2.0", help="model: the licence written in the model card")
    parser.add_argument("--template", help="model: card template name in model_cards/ (default: from model_type)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the one saved by `hf auth login`; "
                        "prefer those: a token on the command line is visible to other users in the process list)")
    parser.add_argument("--stage-dir", help="where to build the folder that gets uploaded: a new or empty folder, or "
                        "one an earlier push staged (replaced); never FOLDER, inside it or holding it (default: a "
                        "temporary folder, removed after the upload or a failure, kept when offline)")
    parser.add_argument("--skip-load-check", action="store_true",
                        help="model: skip the trust_remote_code load check (which imports and runs the staged "
                        "copy's .py files in a separate Python process)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from .. import hub
    from ..utils import UserInputError

    try:
        if args.kind == "model":
            if not args.folder:
                raise UserInputError("pass the model folder: evalmuse push MODEL_DIR org/name")
            result = hub.push_model(args.folder, args.repo_id, metrics=args.metrics, datasets=args.datasets,
                                    license=args.license, template=args.template, private=args.private,
                                    token=args.token, stage_dir=args.stage_dir,
                                    check_loading=not args.skip_load_check)
        elif args.kind == "dataset":
            if not args.folder:
                raise UserInputError("pass the dataset folder: evalmuse push DATASET_DIR org/name --type dataset")
            result = hub.push_dataset(args.folder, args.repo_id, private=args.private, token=args.token,
                                      stage_dir=args.stage_dir)
        else:
            result = hub.push_metric_space(args.repo_id, args.folder, private=args.private, token=args.token,
                                           stage_dir=args.stage_dir)
    except hub.HubOfflineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"uploaded {args.folder or 'the metric module'} to {result.url}")
    return 0
