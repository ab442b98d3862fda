"""Model cards: the Jinja templates in ``model_cards/`` rendered with ``huggingface_hub.ModelCard``.

Templates are Markdown files with a YAML header and Jinja placeholders, the format
``huggingface_hub.ModelCard.from_template`` fills (``{{ card_data }}`` renders the YAML metadata).

Example::

    from huggingface_hub import ModelCardData
    from evalmuse_models.cards import render_model_card

    card = render_model_card("evalmuse-align", ModelCardData(license="apache-2.0"), preset="tiny")
    card.save("my-model/README.md")
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent / "model_cards"


def available_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.md"))


def template_path(name: str) -> Path:
    path = TEMPLATES_DIR / f"{name}.md"
    if not path.is_file():
        raise FileNotFoundError(
            f"no model card template named {name!r} in {TEMPLATES_DIR}; available: {available_templates()}"
        )
    return path


def render_model_card(name: str, card_data=None, **fields):
    """Fill the template ``model_cards/<name>.md``; returns a ``huggingface_hub.ModelCard``."""
    from huggingface_hub import ModelCard, ModelCardData

    return ModelCard.from_template(card_data or ModelCardData(), template_path=str(template_path(name)), **fields)
