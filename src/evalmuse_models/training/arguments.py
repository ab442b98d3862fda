"""The one argument path of the three training recipes: TRL's ``TrlParser`` over the recipe's dataclasses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..utils import UserInputError


def parse_recipe_arguments(dataclass_types: Sequence[type], argv: list[str] | None = None, *,
                           description: str | None = None, defaults: dict[str, Any] | None = None) -> tuple:
    """``--config file.yaml`` (fields of every dataclass) then ``--field value`` overrides, parsed by
    ``trl.TrlParser(dataclass_types).parse_args_and_config(argv)``; one instance per dataclass, in order.

    ``defaults`` overrides field defaults for this recipe (``parser.set_defaults``). A missing or malformed
    file, an unknown key or a bad value raises a one-line :class:`UserInputError`.
    """
    import yaml
    from trl import TrlParser

    parser = TrlParser(tuple(dataclass_types), description=description)
    if defaults:
        parser.set_defaults(**defaults)
    try:
        return tuple(parser.parse_args_and_config(argv))
    except (OSError, yaml.YAMLError, ValueError) as error:
        raise UserInputError(" ".join(str(error).split())) from error


__all__ = ["parse_recipe_arguments"]
