"""evalmuse-models: fine-grained quality assessment of text-to-image generations.

Importing the package registers its model families with transformers' Auto classes
(``AutoConfig``, ``AutoModel``, ``AutoProcessor``), so that
``AutoModel.from_pretrained("org/evalmuse-align")`` works once ``evalmuse_models`` is imported.
Nothing else heavy happens at import: data, metric, training and MLLM code load on first use.

The one exception is the ``evalmuse`` command itself: registering imports torch and transformers
(several seconds), so the console script defers it until a command actually runs, and
``evalmuse --help`` answers at once.
"""

import os
import sys

__version__ = "0.1.0"


def register() -> None:
    """Register the model families with transformers' Auto classes (idempotent)."""
    from .models import register_with_transformers

    register_with_transformers()


def _run_by_console_script() -> bool:
    """True when the ``evalmuse`` console script is importing the package (it registers later)."""
    main = sys.modules.get("__main__")
    return os.path.basename(getattr(main, "__file__", None) or "") in ("evalmuse", "evalmuse.exe")


if not _run_by_console_script():
    register()
