"""Publishing to the Hugging Face Hub (``evalmuse push``): models, the dataset, the metric Space.

Each ``push_*`` function copies the folder to a stage folder, checks that copy, and only then
uploads it with ``huggingface_hub``:

* **model** — fills the card from the ``model_cards/`` template of the model's family with its
  config, training data and measured metrics (``eval_results.json`` in the folder, or
  ``metrics=``) as ``model-index`` results, then checks that the staged copy loads with
  ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` in a fresh Python process where
  ``evalmuse_models`` cannot be imported (what a user without this package gets). That check
  imports and RUNS the copy's ``.py`` files, as ``trust_remote_code=True`` does: push only a folder
  whose code you trust;
* **dataset** — checks that every config of the prepared folder's README loads with ``datasets``;
* **metric Space** — checks that the staged copy of the ``evaluate`` module loads and computes
  (which runs its script), and adds a Gradio ``app.py`` when the folder has none.

The code is only ever run from the copy the function has just staged, never from the source folder.
The stage folder is ``stage_dir`` (made absolute; only a stage folder this package wrote, or an empty
one, is replaced, and never the source folder, a folder inside it or holding it) or a temporary folder,
removed when a check or the upload fails and after the upload. Offline (``HF_HUB_OFFLINE=1``) every check
still runs and :class:`HubOfflineError` is raised just before the upload, naming the staged folder,
which is kept.

Example::

    from evalmuse_models.hub import push_model
    push_model("runs/align/model", "my-org/evalmuse-align-tiny", private=True)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .utils import UserInputError, atomic_write_text
from .utils.io import OUTPUT_MARKER, owned_directory

#: model_type in config.json → card template in model_cards/
CARD_TEMPLATES = {
    "evalmuse_align": "evalmuse-align",
    "evalmuse_structure": "evalmuse-structure",
    "em_rahf": "em-rahf",
    "hnu_vpai_loda": "hnu-vpai-loda",
    "qwen2_5_vl": "evalmuse-mllm",
}

#: Metric names as they appear in model-index results.
METRIC_NAMES = {
    "main_score": "NTIRE 2025 Main Score", "final_score": "NTIRE 2025 Final Score", "srcc": "SRCC", "plcc": "PLCC",
    "acc": "Element accuracy", "f1": "F1", "precision": "Precision", "recall": "Recall", "krcc": "KRCC",
    "rmse": "RMSE", "giou": "Mean foreground IoU",
}


class HubOfflineError(UserInputError):
    """Raised instead of uploading when the Hub cannot be reached (``HF_HUB_OFFLINE=1``)."""


class HubUploadError(UserInputError):
    """The checks passed but the upload failed (no network, refused token or permission)."""


def _is_network_or_hub_error(error: BaseException) -> bool:
    """An error of the Hub client or of the HTTP stack under it (whichever library that is)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, (HfHubHTTPError, OSError, TimeoutError)):
        return True
    return any(cls.__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3", "huggingface_hub")
               for cls in type(error).__mro__)


#: The ``kind`` written in a stage folder's marker (:data:`~evalmuse_models.utils.io.OUTPUT_MARKER`).
STAGE_KIND = "push stage"


@dataclass
class PushResult:
    """What a push did. ``staged_dir`` is ``None`` when the stage was a temporary folder, removed after the upload."""

    repo_id: str
    repo_type: str
    staged_dir: Path | None
    uploaded: bool = False
    url: str | None = None
    checks: dict[str, Any] = field(default_factory=dict)


def _check_repo_id(repo_id: str) -> None:
    """huggingface_hub's own repo-id rules, and a namespace (``org/name``: the card and the load check name it)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserInputError(f"repository id {repo_id!r}: {error}") from None
    if repo_id.count("/") != 1:
        raise UserInputError(f"repository id {repo_id!r} must look like 'org/name'")


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _stage(source: Path, stage_dir: str | os.PathLike | None, prepare, *, ignore=(), inputs=()) -> tuple[Path, bool]:
    """Copy ``source`` to a fresh stage folder and call ``prepare(copy)`` (the checks, the card) on that copy:
    nothing is checked or run in ``source`` itself. Returns ``(staged folder, temporary)``.

    With ``stage_dir`` the copy is built under a temporary sibling and moved to ``stage_dir`` (absolute) only
    once prepared (:func:`~evalmuse_models.utils.io.owned_directory`: only a stage folder this package wrote,
    or an empty one, is replaced; ``stage_dir`` may not be, hold or lie inside ``source``, nor hold one of
    ``inputs``). Without it the copy is a new temporary folder, removed when ``prepare`` fails.
    """
    copy = shutil.ignore_patterns(".*", "__pycache__", *ignore)
    if stage_dir is None:
        staged = Path(tempfile.mkdtemp(prefix="evalmuse-push-"))
        try:
            shutil.copytree(source, staged, ignore=copy, dirs_exist_ok=True)
            prepare(staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return staged, True
    with owned_directory(stage_dir, STAGE_KIND, inputs=[source, *inputs], option="the stage folder (--stage-dir)") \
            as build:
        shutil.copytree(source, build, ignore=copy, dirs_exist_ok=True)
        prepare(build)
    return Path(os.path.abspath(stage_dir)), False


def _upload(result: PushResult, *, temporary: bool, ran_code: str | None, private: bool, token: str | None,
            commit_message: str, api=None, space_sdk: str | None = None) -> PushResult:
    """Upload ``result.staged_dir``; a temporary stage folder is removed afterwards, and when the upload fails
    (offline it is kept: :class:`HubOfflineError` names it)."""
    staged, repo_id, repo_type = result.staged_dir, result.repo_id, result.repo_type
    if is_offline():
        where = (f"kept in the temporary folder {staged} (delete it when done; --stage-dir chooses the folder)"
                 if temporary else f"staged at {staged}")
        ran = f" ({ran_code})" if ran_code else ""
        raise HubOfflineError(
            f"offline (HF_HUB_OFFLINE=1): nothing was uploaded. The {repo_type} folder passed every check{ran} and "
            f"is {where}; rerun online (unset HF_HUB_OFFLINE, `hf auth login`) to upload it to {repo_id}"
        )
    try:
        from huggingface_hub import HfApi

        api = api or HfApi(token=token)
        kwargs = {"space_sdk": space_sdk} if repo_type == "space" else {}
        repo_url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **kwargs)
        api.upload_folder(folder_path=str(staged), repo_id=repo_id, repo_type=repo_type,
                          commit_message=commit_message, ignore_patterns=[OUTPUT_MARKER])
    except Exception as error:
        # No network, a refused token, a missing permission: the checks passed, the upload did not.
        if not _is_network_or_hub_error(error):
            raise
        raise HubUploadError(
            f"the upload to {repo_id} failed ({type(error).__name__}: {' '.join(str(error).split())[:300]}); "
            "nothing was uploaded. Check the network and `hf auth login`, or set HF_HUB_OFFLINE=1 to stop "
            "after the checks"
        ) from None
    finally:
        if temporary:
            shutil.rmtree(staged, ignore_errors=True)
    if temporary:
        result.staged_dir = None
    result.url, result.uploaded = str(repo_url), True
    return result


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

_LOAD_CHECK = r"""
import importlib.abc, json, sys

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "evalmuse_models" or name.startswith("evalmuse_models."):
            raise ImportError("evalmuse_models is hidden: the folder must load with remote code alone")
        return None

sys.meta_path.insert(0, _Block())
from transformers import AutoConfig, AutoModel
folder = sys.argv[1]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
report = {"config_class": type(config).__name__, "model_class": type(model).__name__,
          "module": type(model).__module__, "num_parameters": sum(p.numel() for p in model.parameters())}
if len(sys.argv) > 2:
    from transformers import AutoProcessor
    report["processor_class"] = type(AutoProcessor.from_pretrained(folder, trust_remote_code=True)).__name__
print(json.dumps(report))
"""


def check_remote_code_loading(folder: str | os.PathLike, *, processor: bool | None = None, timeout: float = 600) -> dict:
    """Load ``folder`` with ``trust_remote_code=True`` in a fresh process without ``evalmuse_models``.

    This imports and RUNS the folder's ``.py`` files (that is what loading remote code means): call it
    only on a folder whose code you trust. :func:`push_model` calls it on the copy it has just staged.

    Returns ``{"config_class", "model_class", "module", "num_parameters"[, "processor_class"]}``;
    raises :class:`UserInputError` with the loader's error when it fails.
    """
    folder = Path(os.path.abspath(folder))  # the check runs in another working directory
    if processor is None:
        processor = any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-c", _LOAD_CHECK, str(folder)] + (["processor"] if processor else [])
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False,
                          cwd=tempfile.gettempdir())
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise UserInputError(
            f"{folder} does not load with trust_remote_code=True without evalmuse_models installed; users of the "
            f"Hub repo would hit this:\n{tail}\nSave the model with save_pretrained after importing evalmuse_models "
            "(it registers the code files to ship)."
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _read_metrics(model_dir: Path, metrics: str | os.PathLike | dict | None) -> dict | None:
    if isinstance(metrics, dict):
        return metrics
    path = Path(metrics) if metrics else model_dir / "eval_results.json"
    if not path.is_file():
        if metrics:
            raise UserInputError(f"metrics file {path} does not exist")
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise UserInputError(f"{path}: expected {{'task', 'dataset', 'split', 'metrics': {{name: value}}}}")
    return data


def _eval_results(measured: dict, task_type: str) -> list:
    from huggingface_hub import EvalResult

    results = []
    for name, value in measured["metrics"].items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        results.append(EvalResult(
            task_type=task_type, task_name=measured.get("task_name") or task_type.replace("-", " "),
            dataset_type=measured.get("dataset_type") or measured.get("dataset", "unknown"),
            dataset_name=measured.get("dataset_name") or measured.get("dataset", "unknown"),
            dataset_config=measured.get("config"), dataset_split=measured.get("split"),
            metric_type=name, metric_name=METRIC_NAMES.get(name, name), metric_value=round(float(value), 4),
        ))
    return results


def prepare_model_card(model_dir: str | os.PathLike, repo_id: str, *, metrics: str | os.PathLike | dict | None = None,
                       datasets: list[str] | None = None, license: str = "apache-2.0", template: str | None = None,
                       num_parameters: int | None = None):
    """The filled ``huggingface_hub.ModelCard`` for ``model_dir`` (see :func:`push_model`)."""
    from huggingface_hub import ModelCardData

    from .cards import render_model_card

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise UserInputError(f"{model_dir} is not a model folder (no config.json); pass a save_pretrained folder")
    config = json.loads(config_path.read_text())
    model_type = config.get("model_type", "")
    name = template or CARD_TEMPLATES.get(model_type)
    if name is None:
        raise UserInputError(f"no model card template for model_type {model_type!r}; pass --template "
                             f"(one of {sorted(set(CARD_TEMPLATES.values()))})")
    measured = _read_metrics(model_dir, metrics)
    task_type = "text-to-image-alignment" if "align" in name or "mllm" in name else "text-to-image-structure"
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        tags=["evalmuse", "text-to-image-evaluation", "image-quality-assessment", "ntire-2025"],
        datasets=datasets or None,
        model_name=repo_id.split("/")[-1],
        eval_results=_eval_results(measured, task_type) if measured else None,
    )
    training = None
    if measured:
        training = (f"Trained on `{measured.get('dataset', 'unknown')}`; the evaluation below is measured on its "
                    f"`{measured.get('split', 'test')}` split.")
    try:
        return render_model_card(
            name, card_data, repo_id=repo_id, preset=config.get("preset"), num_parameters=num_parameters,
            metrics={k: round(v, 4) if isinstance(v, float) else v for k, v in (measured or {}).get("metrics", {}).items()},
            training=training, source=f"`{repo_id}`", model_type=model_type, threshold=config.get("threshold"),
        )
    except FileNotFoundError as err:
        raise UserInputError(str(err)) from None


def push_model(model_dir: str | os.PathLike, repo_id: str, *, metrics: str | os.PathLike | dict | None = None,
               datasets: list[str] | None = None, license: str = "apache-2.0", template: str | None = None,
               private: bool = False, token: str | None = None, stage_dir: str | os.PathLike | None = None,
               check_loading: bool = True, commit_message: str = "Upload EvalMuse model", api=None) -> PushResult:
    """Stage ``model_dir`` with a filled card, check the staged copy loads as remote code (which runs its
    ``.py`` files), upload it to ``repo_id``. ``stage_dir``: see the module's docstring.

    Raises :class:`HubOfflineError` (after every check) when offline.
    """
    _check_repo_id(repo_id)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserInputError(f"model folder {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise UserInputError(f"{model_dir} is not a model folder (no config.json); pass a save_pretrained folder")
    checks: dict[str, Any] = {}

    def prepare(staged: Path) -> None:
        if check_loading:  # on the fresh copy only: loading it runs its code
            checks["remote_code"] = check_remote_code_loading(staged)
        card = prepare_model_card(model_dir, repo_id, metrics=metrics, datasets=datasets, license=license,
                                  template=template,
                                  num_parameters=checks.get("remote_code", {}).get("num_parameters"))
        card.save(str(staged / "README.md"))

    inputs = [metrics] if isinstance(metrics, (str, os.PathLike)) else []
    staged, temporary = _stage(model_dir, stage_dir, prepare, ignore=("eval_results.json",), inputs=inputs)
    ran = "the load check ran the folder's Python code, as trust_remote_code=True does" if check_loading else None
    return _upload(PushResult(repo_id, "model", staged, checks=checks), temporary=temporary, ran_code=ran,
                   private=private, token=token, commit_message=commit_message, api=api)


# ---------------------------------------------------------------------------------------------
# Dataset and metric Space
# ---------------------------------------------------------------------------------------------

def _dataset_configs(readme: Path) -> list[str]:
    import yaml

    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return []
    header = text.split("---", 2)[1]
    meta = yaml.safe_load(header) or {}
    return [c["config_name"] for c in meta.get("configs", []) if isinstance(c, dict) and "config_name" in c]


def push_dataset(dataset_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                 stage_dir: str | os.PathLike | None = None, commit_message: str = "Upload EvalMuse dataset",
                 api=None) -> PushResult:
    """Check that every config of a prepared dataset folder loads, then upload it as a dataset repo."""
    import datasets

    _check_repo_id(repo_id)
    dataset_dir = Path(dataset_dir)
    readme = dataset_dir / "README.md"
    if not readme.is_file():
        raise UserInputError(f"{dataset_dir} has no README.md; build the folder with `evalmuse prepare-data`")
    configs = _dataset_configs(readme)
    if not configs:
        raise UserInputError(f"{readme} declares no `configs:`; build the folder with `evalmuse prepare-data`")
    checks = {}
    for name in configs:
        try:
            loaded = datasets.load_dataset(str(dataset_dir), name)
        except Exception as err:  # noqa: BLE001 - any loading failure blocks the upload
            raise UserInputError(f"config {name!r} of {dataset_dir} does not load: {err}") from None
        checks[name] = {split: ds.num_rows for split, ds in loaded.items()}
    staged, temporary = _stage(dataset_dir, stage_dir, lambda staged: None)
    return _upload(PushResult(repo_id, "dataset", staged, checks=checks), temporary=temporary, ran_code=None,
                   private=private, token=token, commit_message=commit_message, api=api)


SPACE_APP = """import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("{module_name}.py", "alignment")
launch_gradio_widget(module)
"""


def push_metric_space(repo_id: str, metric_dir: str | os.PathLike | None = None, *, private: bool = False,
                      token: str | None = None, stage_dir: str | os.PathLike | None = None,
                      commit_message: str = "Upload t2i_main_score metric", api=None) -> PushResult:
    """Check the ``evaluate`` module (default: the one shipped in the package) and upload it as a Gradio Space.

    The check loads and computes the staged copy of the module, which runs its script.
    """
    import evaluate

    from .metrics import EVALUATE_MODULE_PATH

    _check_repo_id(repo_id)
    metric_dir = Path(metric_dir or EVALUATE_MODULE_PATH)
    scripts = sorted(metric_dir.glob("*.py"))
    scripts = [p for p in scripts if p.stem == metric_dir.name] or [p for p in scripts if p.name != "app.py"]
    if not scripts:
        raise UserInputError(f"{metric_dir} holds no evaluate module script (<name>.py)")
    checks = {}

    def prepare(staged: Path) -> None:
        script = str(staged / scripts[0].name)  # the copy's script: loading it runs it
        for config_name in ("alignment", "structure"):
            try:
                module = evaluate.load(script, config_name)
            except Exception as err:  # noqa: BLE001
                raise UserInputError(f"the evaluate module in {metric_dir} does not load ({config_name}): {err}") \
                    from None
            checks[config_name] = type(module).__name__
        computed = evaluate.load(script, "alignment").compute(
            predictions=[1.0, 2.0, 3.5, 4.0], references=[1.2, 2.5, 3.0, 4.8],
            prediction_element_scores=[[0.9], [0.2], [0.7], [0.6]],
            reference_element_scores=[[1.0], [0.0], [0.67], [0.33]],
        )
        checks["alignment_example"] = {k: v for k, v in computed.items() if isinstance(v, (int, float))}
        if not (staged / "app.py").exists():
            atomic_write_text(staged / "app.py", SPACE_APP.format(module_name=scripts[0].stem))
        if not (staged / "requirements.txt").exists():
            atomic_write_text(staged / "requirements.txt", "evaluate\nevalmuse-models\n")
        readme = staged / "README.md"
        text = readme.read_text(encoding="utf-8") if readme.exists() else f"---\ntitle: {scripts[0].stem}\n---\n"
        header = text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else None
        if header is None:
            atomic_write_text(readme, "---\nsdk: gradio\napp_file: app.py\n---\n" + text)
        elif "sdk:" not in header:
            atomic_write_text(readme, "---\nsdk: gradio\napp_file: app.py\n" + text[3:].lstrip("\n"))

    staged, temporary = _stage(metric_dir, stage_dir, prepare)
    return _upload(PushResult(repo_id, "space", staged, checks=checks), temporary=temporary,
                   ran_code="the check ran the module's script", private=private, token=token,
                   commit_message=commit_message, api=api, space_sdk="gradio")
