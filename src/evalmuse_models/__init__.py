"""evalmuse-models: fine-grained quality assessment of text-to-image generations.

Importing the package registers its model families with transformers' Auto classes
(``AutoConfig``, ``AutoModel``, ``AutoProcessor``), so that
``AutoModel.from_pretrained("org/evalmuse-align")`` works once ``evalmuse_models`` is imported.
Nothing else heavy happens at import: data, metric, training and MLLM code load on first use.
"""

__version__ = "0.1.0"


def _register() -> None:
    from .models import register_with_transformers

    register_with_transformers()


_register()
