"""The package as users meet it: the import, the Auto-class registration, the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_TYPES = ["em_rahf", "evalmuse_align", "evalmuse_structure", "hnu_vpai_loda"]


def _run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    return out.stdout


def test_import_is_light_and_registers_every_family():
    # Registration needs transformers' model base classes (and so torch, and whatever transformers
    # itself imports); the package's own heavy dependencies must wait until they are used.
    code = """
import json, sys
import evalmuse_models
from transformers import AutoConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
heavy = ["datasets", "evaluate", "trl", "peft", "cv2", "timm", "pyarrow"]
print(json.dumps({
    "loaded": sorted(m for m in heavy if m in sys.modules),
    "registered": sorted(k for k in MODEL_TYPES if k in CONFIG_MAPPING),
}))
""".replace("MODEL_TYPES", repr(MODEL_TYPES))
    result = json.loads(_run_python(code).strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["registered"] == MODEL_TYPES


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_auto_classes_resolve_each_family(model_type):
    from transformers import AutoConfig, AutoModel

    import evalmuse_models  # noqa: F401

    config = AutoConfig.for_model(model_type)
    assert config.model_type == model_type
    model_class = AutoModel._model_mapping[type(config)]
    assert model_class.config_class is type(config)


def test_console_script_lists_commands():
    exe = shutil.which("evalmuse", path=str(Path(sys.executable).parent))
    assert exe is not None, "the `evalmuse` console script is not installed in this environment"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ["prepare-data", "synthetic", "eval", "convert", "score", "submit", "report", "demo", "push",
                    "train", "analyze", "benchmark", "refine-masks"]:
        assert command in out, f"`evalmuse --help` does not list {command!r}:\n{out}"


def test_console_script_help_does_not_import_torch_and_commands_still_register(tmp_path):
    exe = shutil.which("evalmuse", path=str(Path(sys.executable).parent))
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    help_run = subprocess.run([exe, "eval", "--help"], capture_output=True, text=True, check=True, env=env)
    imported = {line.split("|")[-1].strip() for line in help_run.stderr.splitlines() if "|" in line}
    assert "evalmuse_models.cli" in imported  # the import log is real
    assert "torch" not in imported and "transformers" not in imported
    # A command that runs gets the families registered first, as with `import evalmuse_models`.
    code = """
import sys
sys.modules["__main__"].__file__ = "/usr/bin/evalmuse"   # as the console script runs
import evalmuse_models.cli
assert "transformers" not in sys.modules
evalmuse_models.cli.main(["synthetic", "alignment", sys.argv[1], "--num-prompts", "2"])
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
print(sorted(k for k in MODEL_TYPES if k in CONFIG_MAPPING))
""".replace("MODEL_TYPES", repr(MODEL_TYPES))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "release")], capture_output=True, text=True,
                         check=True, env=os.environ).stdout
    assert out.strip().splitlines()[-1] == str(MODEL_TYPES)


def test_bare_command_prints_help_and_fails():
    from evalmuse_models.cli import main

    assert main([]) == 2


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_input_errors_are_one_line_messages(tmp_path, capsys):
    from evalmuse_models.cli import main

    taken = tmp_path / "taken.txt"
    taken.write_text("not a release folder")
    assert main(["synthetic", "alignment", str(taken), "--num-prompts", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and str(taken) in err


def test_every_cli_option_has_help():
    import argparse

    from evalmuse_models.cli import build_parser

    missing = []

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])
            elif not action.help and not isinstance(action, argparse._HelpAction):
                missing.append(" ".join([*prefix, *(action.option_strings or [action.dest])]))

    walk(build_parser(), ["evalmuse"])
    assert missing == []
