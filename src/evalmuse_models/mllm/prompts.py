"""Level scales, element questions and the text of every chat turn the MLLM scorer reads or trains on.

The scorer and the SFT data share these strings, so that what the model is trained to answer is
exactly what it is asked at scoring time.

Example::

    >>> from evalmuse_models.mllm.prompts import FIVE_LEVELS, element_question
    >>> FIVE_LEVELS.word_for_score(3.7)
    'good'
    >>> element_question("two cats", "counting")
    "Is the quantity 'two cats' correct in the image?"
    >>> element_question("car", "object-vehicle")
    "Is the object 'car' present in the image?"

Element keys are split by the dataset's rule,
:func:`evalmuse_models.data.alignment.split_element_key` (also exported as
``evalmuse_models.mllm.split_element_key``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.alignment import normalize_category

YES_WORD = "Yes"
NO_WORD = "No"

#: The 5 level words of the winning recipes (Q-Align style), mapped to scores 1..5.
LEVEL_WORDS = ("bad", "poor", "fair", "good", "excellent")
#: A 15-level scale (scores 1 + 4k/14). Check single-token-ness for your tokenizer (the scorer does).
FIFTEEN_LEVEL_WORDS = (
    "worst", "terrible", "awful", "bad", "poor", "weak", "mediocre", "fair",
    "decent", "fine", "good", "great", "excellent", "superb", "perfect",
)


@dataclass(frozen=True)
class LevelScale:
    """A closed set of level words and the score each stands for.

    ``thresholds`` are the MOS bin edges used to turn a mean rating into a hard target word
    (defaults: midpoints between consecutive values, i.e. 1.5/2.5/3.5/4.5 for 5 levels).
    """

    words: tuple[str, ...]
    values: tuple[float, ...]
    thresholds: tuple[float, ...] = field(default=())

    def __post_init__(self):
        if len(self.words) != len(self.values) or len(self.words) < 2:
            raise ValueError("a level scale needs at least two words and one value per word")
        if len(set(self.words)) != len(self.words):
            raise ValueError(f"level words must be distinct, got {self.words}")
        if list(self.values) != sorted(self.values):
            raise ValueError("level values must be increasing")
        if not self.thresholds:
            mids = tuple((a + b) / 2 for a, b in zip(self.values[:-1], self.values[1:]))
            object.__setattr__(self, "thresholds", mids)
        if len(self.thresholds) != len(self.words) - 1:
            raise ValueError("a level scale needs len(words) - 1 thresholds")

    @property
    def num_levels(self) -> int:
        return len(self.words)

    def index_for_score(self, score: float) -> int:
        """The level index of a mean rating: the number of thresholds at or below it."""
        return sum(1 for t in self.thresholds if score >= t)

    def word_for_score(self, score: float) -> str:
        return self.words[self.index_for_score(score)]

    def listing(self) -> str:
        """``"bad, poor, fair, good or excellent"``."""
        return ", ".join(self.words[:-1]) + " or " + self.words[-1]


FIVE_LEVELS = LevelScale(LEVEL_WORDS, (1.0, 2.0, 3.0, 4.0, 5.0))
FIFTEEN_LEVELS = LevelScale(FIFTEEN_LEVEL_WORDS, tuple(1.0 + 4.0 * k / 14 for k in range(15)))


def level_scale(name_or_scale: str | int | LevelScale) -> LevelScale:
    """``5`` / ``"5"`` / ``"five"`` → :data:`FIVE_LEVELS`, ``15`` → :data:`FIFTEEN_LEVELS`, or a scale as is."""
    if isinstance(name_or_scale, LevelScale):
        return name_or_scale
    key = str(name_or_scale).strip().lower()
    if key in {"5", "five"}:
        return FIVE_LEVELS
    if key in {"15", "fifteen"}:
        return FIFTEEN_LEVELS
    raise ValueError(f"unknown level scale {name_or_scale!r}; use 5, 15 or a LevelScale")


#: Category-specific element questions (SPEC §6). ``{x}`` is the phrase, ``{category}`` the category.
DEFAULT_QUESTION = "Is '{x}' present in the image?"
CATEGORY_QUESTIONS: dict[str, str] = {
    "counting": "Is the quantity '{x}' correct in the image?",
    "spatial": "Is the spatial relationship '{x}' correct in the image?",
    "activity": "Is the activity '{x}' shown in the image?",
}
GENERIC_CATEGORY_QUESTION = "Is the {category} '{x}' present in the image?"
_GENERIC_CATEGORIES = {
    "object", "attribute", "location", "color", "material", "shape", "food", "animal", "human",
}


def element_question(phrase: str, category: str | None, templates: dict[str, str] | None = None) -> str:
    """The Yes/No question asked for one element; ``templates`` overrides per category (key ``"default"``).

    ``category`` is normalised by the dataset's rule
    (:func:`evalmuse_models.data.alignment.normalize_category`): ``"Color"`` asks the color
    question, ``"object-vehicle"`` the object one; none is ``"other"`` (the plain question).
    """
    phrase = " ".join(str(phrase).split()).replace("'", "\u2019")
    cat = normalize_category(category)[0]
    if templates and cat in templates:
        template = templates[cat]
    elif templates and "default" in templates and cat not in CATEGORY_QUESTIONS and cat not in _GENERIC_CATEGORIES:
        template = templates["default"]
    elif cat in CATEGORY_QUESTIONS:
        template = CATEGORY_QUESTIONS[cat]
    elif cat in _GENERIC_CATEGORIES:
        template = GENERIC_CATEGORY_QUESTION
    else:
        template = DEFAULT_QUESTION
    return template.format(x=phrase, category=cat)


PROMPT_TYPE_HINTS = {
    "real": "The prompt was written by a real user. ",
    "synthetic": "The prompt is synthetic. ",
}


def image_context(prompt: str, prompt_type: str | None = None, hint: bool = False) -> str:
    """The text that follows the image in the first user turn (shared by every question about it).

    It always ends with a single newline so that tokenising it separately from the question that
    follows gives the same tokens as tokenising both together.
    """
    text = " ".join(str(prompt).split()).replace('"', "'")
    lead = PROMPT_TYPE_HINTS.get(str(prompt_type).lower(), "") if hint and prompt_type else ""
    return f'{lead}This image was generated from the prompt: "{text}"\n'


def overall_question(scale: LevelScale) -> str:
    return f"How well does the image match the prompt? Answer with one word: {scale.listing()}."


def cot_question(scale: LevelScale) -> str:
    return (
        "Check whether each element of the prompt is in the image, then rate how well the image matches "
        f"the prompt with one word: {scale.listing()}."
    )


COT_RATING_LEAD = "Overall alignment:\n"


def cot_answer(checks: list[tuple[str, bool]], level_word: str | None) -> str:
    """The chain-of-thought answer: one line per element check, then the level word on its own line.

    With ``level_word=None`` the text stops right before the level word (what the scorer feeds
    before reading the level distribution).
    """
    lines = [f"- {key}: {YES_WORD if present else NO_WORD}" for key, present in checks]
    body = "\n".join(lines) + ("\n" if lines else "") + COT_RATING_LEAD
    return body if level_word is None else body + level_word


def default_training_corpus() -> list[str]:
    """Text that makes a freshly trained tiny BPE tokenizer cover the scorer's vocabulary."""
    corpus = []
    for scale in (FIVE_LEVELS, FIFTEEN_LEVELS):
        corpus += [overall_question(scale), cot_question(scale)] * 20
        corpus += [w for w in scale.words for _ in range(50)]
        corpus += [f"\n{w}" for w in scale.words for _ in range(20)]
    corpus += [YES_WORD, NO_WORD] * 100
    corpus += [f"- x (object): {w}" for w in (YES_WORD, NO_WORD) for _ in range(20)]
    for cat in sorted(_GENERIC_CATEGORIES | set(CATEGORY_QUESTIONS) | {"other"}):
        corpus += [element_question("a red cat", cat)] * 5
    corpus += [image_context("a photo of a cat on a table", t, True) for t in ("real", "synthetic")] * 10
    corpus += [COT_RATING_LEAD] * 20
    corpus += ["You are a helpful assistant.", "system", "user", "assistant"] * 20
    return corpus
