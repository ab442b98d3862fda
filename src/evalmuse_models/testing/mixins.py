"""The tests every model family of the package passes, written once.

A family is described by a :class:`ModelFamilySpec`; a pytest class mixing in
:class:`ModelFamilyTesterMixin` with that spec as ``family`` gets four tests:

* ``test_config_dict_round_trip`` — ``from_dict(to_dict())`` (through JSON) gives the same config,
  sub-configs as config objects of the same class;
* ``test_preset_merges_sub_config_overrides`` — ``from_preset(name, <sub_config>={...})`` changes the
  given keys and keeps the preset's other values of that sub-config;
* ``test_auto_classes_save_and_load`` — ``save_pretrained`` of model and processor, then ``AutoConfig`` /
  ``AutoModel`` / ``AutoProcessor``: same classes, same config, the family's module files shipped, the
  same processor outputs and model outputs;
* ``test_remote_code_loads_without_the_package`` — the saved folder loads with ``trust_remote_code=True``
  in a fresh interpreter where ``evalmuse_models`` (and ``spec.blocked_modules``) cannot be imported, and
  gives the same outputs.

Example (``tests/test_model_families.py``)::

    class TestStructureFamily(ModelFamilyTesterMixin):
        family = ModelFamilySpec(
            config_class=EvalMuseStructureConfig,
            make_processor=EvalMuseStructureProcessor.from_model_config,
            processor_inputs=lambda: {"images": [Image.new("RGB", (40, 30))]},
            sub_config_override=("vit_config", {"mlp_ratio": 4}),
        )
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # the remote-code test starts an interpreter: `make test-fast` (-m "not slow") skips it
    from pytest import mark

    _slow = mark.slow
except ImportError:  # pytest is a test dependency only

    def _slow(test):
        return test


@dataclass(frozen=True)
class ModelFamilySpec:
    """What the shared tests need to know about one model family.

    Args:
        config_class: the family's ``PretrainedConfig`` subclass (with ``from_preset``).
        make_processor: builds the processor for a config, offline.
        processor_inputs: keyword arguments of one processor call (PIL images, prompts ...): the
            raw inputs of the outputs compared after save/load and under remote code. They must
            pickle (they travel to the remote-code interpreter).
        sub_config_override: ``(sub-config name, {key: value})`` given to ``from_preset``; every value
            must differ from the preset's, and no other key of the sub-config may derive from them.
        preset: the preset the tests build (a small one).
        model_input_names: the processor outputs passed to the model (default: all of them).
        blocked_modules: optional dependencies made unimportable in the remote-code interpreter too.
        atol: tolerance of the output comparisons.
    """

    config_class: type
    make_processor: Callable[[Any], Any]
    processor_inputs: Callable[[], dict[str, Any]]
    sub_config_override: tuple[str, dict[str, Any]]
    preset: str = "tiny"
    model_input_names: tuple[str, ...] | None = None
    blocked_modules: tuple[str, ...] = ()
    atol: float = 1e-5


def model_inputs(processor, spec: ModelFamilySpec) -> dict[str, Any]:
    """The processor's outputs for ``spec.processor_inputs()``, restricted to ``spec.model_input_names``."""
    batch = dict(processor(**spec.processor_inputs()))
    if spec.model_input_names is not None:
        batch = {name: batch[name] for name in spec.model_input_names}
    return batch


def output_tensors(output) -> dict[str, Any]:
    """The tensors of a model output (a ``ModelOutput`` or a dict), by name."""
    import torch

    return {name: value for name, value in dict(output).items() if isinstance(value, torch.Tensor)}


def _config_values(config) -> dict[str, Any]:
    """``config.to_dict()`` without the bookkeeping keys that say where and by which version it was saved."""
    return {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}


def assert_same_tensors(actual: dict, expected: dict, atol: float, what: str) -> None:
    import torch

    assert actual.keys() == expected.keys(), f"{what}: {sorted(actual)} != {sorted(expected)}"
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=atol, rtol=0,
                                   msg=lambda message, name=name: f"{what} {name!r}: {message}")


#: Prepended to every script :func:`run_without_package` runs: ``evalmuse_models`` cannot be imported, and
#: the modules named in ``EVALMUSE_TEST_BLOCKED`` (JSON) behave as if not installed.
_BLOCK_PRELUDE = r"""
import importlib.abc as _abc, json as _json, os as _os, sys as _sys


class _Block(_abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "evalmuse_models" or name.startswith("evalmuse_models."):
            raise ImportError("evalmuse_models is blocked here")
        return None


_sys.meta_path.insert(0, _Block())
for _name in _json.loads(_os.environ.get("EVALMUSE_TEST_BLOCKED", "[]")):
    _sys.modules[_name] = None  # as if not installed: imports fail, find_spec answers None
"""


def run_without_package(script: str, *args: str, cwd: str | os.PathLike, blocked: tuple[str, ...] = (),
                        timeout: float = 300) -> tuple[Any, str]:
    """Run ``script`` (with ``args`` as ``sys.argv[1:]``) in a fresh interpreter where ``evalmuse_models`` — and
    the ``blocked`` modules — cannot be imported, as on a machine with only transformers and the model's
    remote code: offline, one CPU thread, remote code cached under ``cwd``. Fails the calling test when the
    script fails; returns the JSON object the script prints last and everything it printed (stdout + stderr).
    """
    cwd = Path(cwd)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "modules"), "OMP_NUM_THREADS": "1",
        "EVALMUSE_TEST_BLOCKED": json.dumps(list(blocked)),
    }
    proc = subprocess.run([sys.executable, "-c", _BLOCK_PRELUDE + script, *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout + proc.stderr


#: Run without the package (:func:`run_without_package`): argv = folder, inputs pickle, outputs file.
_REMOTE_SCRIPT = r"""
import json, pickle, sys

folder, inputs_file, outputs_file = sys.argv[1], sys.argv[2], sys.argv[3]
import torch
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
with open(inputs_file, "rb") as handle:
    raw, names = pickle.load(handle)
batch = dict(processor(**raw))
if names is not None:
    batch = {name: batch[name] for name in names}
with torch.no_grad():
    output = model(**batch)
torch.save({name: value for name, value in dict(output).items() if isinstance(value, torch.Tensor)}, outputs_file)
print(json.dumps({"model": type(model).__module__, "processor": type(processor).__name__,
                  "imported": sorted(n for n in sys.modules if n.split(".")[0] == "evalmuse_models")}))
"""


class ModelFamilyTesterMixin:
    """Shared tests of a model family; set ``family`` to its :class:`ModelFamilySpec` in a ``Test*`` class."""

    family: ModelFamilySpec

    def build_config(self, **overrides):
        return self.family.config_class.from_preset(self.family.preset, **overrides)

    def build_model_and_processor(self):
        import torch
        from transformers import AutoModel

        config = self.build_config()
        torch.manual_seed(0)
        return AutoModel.from_config(config).eval(), self.family.make_processor(config)

    def run_model(self, model, processor) -> dict[str, Any]:
        import torch

        with torch.no_grad():
            return output_tensors(model(**model_inputs(processor, self.family)))

    def test_config_dict_round_trip(self):
        from transformers import PretrainedConfig

        config = self.build_config()
        data = json.loads(json.dumps(config.to_dict()))
        again = self.family.config_class.from_dict(data)
        assert type(again) is self.family.config_class
        assert again.to_dict() == config.to_dict()
        for name in config.sub_configs:
            sub = getattr(config, name)
            if sub is not None:
                assert isinstance(getattr(again, name), PretrainedConfig)
                assert type(getattr(again, name)) is type(sub), name

    def test_preset_merges_sub_config_overrides(self):
        name, override = self.family.sub_config_override
        preset = getattr(self.build_config(), name).to_dict()
        merged = getattr(self.build_config(**{name: dict(override)}), name).to_dict()
        for key, value in override.items():
            assert preset[key] != value, f"the override of {name}.{key} must differ from the preset's value"
            assert merged[key] == value, f"{name}.{key}: {merged[key]!r} != {value!r}"
        kept = {key: value for key, value in preset.items() if key not in override}
        assert {key: merged[key] for key in kept} == kept, f"from_preset replaced {name} instead of merging"

    def test_auto_classes_save_and_load(self, tmp_path):
        from transformers import AutoConfig, AutoModel, AutoProcessor

        model, processor = self.build_model_and_processor()
        model.save_pretrained(tmp_path)
        processor.save_pretrained(tmp_path)
        for cls in (type(model.config), type(model), type(processor)):
            module_file = cls.__module__.rsplit(".", 1)[-1] + ".py"
            assert (Path(tmp_path) / module_file).is_file(), f"{module_file} is not shipped with the weights"
        config = AutoConfig.from_pretrained(tmp_path)
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        loaded_processor = AutoProcessor.from_pretrained(tmp_path)
        assert type(config) is self.family.config_class and type(loaded) is type(model)
        assert type(loaded_processor) is type(processor)
        assert _config_values(config) == _config_values(model.config)
        assert_same_tensors(model_inputs(loaded_processor, self.family), model_inputs(processor, self.family),
                            atol=0.0, what="processor output")
        assert_same_tensors(self.run_model(loaded, loaded_processor), self.run_model(model, processor),
                            atol=self.family.atol, what="model output")
        frozen = sorted(name for name, p in model.named_parameters() if not p.requires_grad)
        assert sorted(name for name, p in loaded.named_parameters() if not p.requires_grad) == frozen, (
            "the loaded model trains parameters the saved one kept frozen")

    @_slow
    def test_remote_code_loads_without_the_package(self, tmp_path):
        import torch

        model, processor = self.build_model_and_processor()
        folder = Path(tmp_path) / "model"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        inputs_file, outputs_file = Path(tmp_path) / "inputs.pkl", Path(tmp_path) / "outputs.pt"
        with open(inputs_file, "wb") as handle:
            pickle.dump((self.family.processor_inputs(), self.family.model_input_names), handle)
        report, _ = run_without_package(_REMOTE_SCRIPT, folder, inputs_file, outputs_file, cwd=tmp_path,
                                        blocked=tuple(self.family.blocked_modules))
        assert report["model"].startswith("transformers_modules"), report
        assert report["processor"] == type(processor).__name__ and report["imported"] == [], report
        remote = torch.load(outputs_file, weights_only=True)
        assert_same_tensors(remote, self.run_model(model, processor), atol=self.family.atol, what="remote-code output")


__all__ = ["ModelFamilySpec", "ModelFamilyTesterMixin", "assert_same_tensors", "model_inputs", "output_tensors"]
