"""Synthetic EvalMuse releases: procedurally drawn images, written in the EXACT raw formats.

They are the test fixtures of this package and the embedded data of the demo, so they are
built to be learnable:

* :func:`write_alignment_release` draws simple scenes (shapes, houses, trees, fish, apples,
  people; colours, counts, sizes, positions, striped/checkered fills, backgrounds) for prompts
  composed from those elements. Each "generator" draws each element correctly with its own
  probability, so an element voted present is visibly drawn (e.g. two red circles on the left)
  and the overall ratings follow the fraction of correctly drawn elements. Three simulated
  annotators vote with realistic disagreement.
* :func:`write_structure_release` draws scenes and damages them inside regions (block noise and
  shuffled tiles, visible at 64 px) whose number, size and strength follow a target MOS drawn
  from the real EvalMuse-Structure training MOS distribution; three simulated annotators mark
  the regions with rectangles or polygons, with jitter, misses and occasional false alarms.

Both are deterministic given ``seed``.

Example::

    from evalmuse_models.data.synthetic import write_alignment_release, write_structure_release

    write_alignment_release("raw/alignment", num_prompts=200, seed=0)
    write_structure_release("raw/structure", num_images=300, seed=0)

or ``evalmuse synthetic alignment raw/alignment --num-prompts 200``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from ..utils import atomic_write_text

# ---------------------------------------------------------------------------------------------
# Vocabulary

COLORS = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (40, 75, 215),
    "yellow": (240, 205, 25),
    "purple": (135, 45, 170),
    "orange": (245, 135, 20),
}
#: noun -> (plural, category)
NOUNS = {
    "circle": ("circles", "shape"),
    "square": ("squares", "shape"),
    "triangle": ("triangles", "shape"),
    "star": ("stars", "shape"),
    "house": ("houses", "object"),
    "tree": ("trees", "object"),
    "fish": ("fish", "animal"),
    "apple": ("apples", "food"),
    "person": ("people", "human"),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
POSITIONS = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom"}
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
SIZES = {"small": 0.075, "big": 0.17}
NORMAL_SIZE = 0.11
MATERIALS = ("striped", "checkered")
BACKGROUNDS = {"at night": "night", "on the grass": "grass", "at the beach": "beach"}
#: colours that would vanish into a background
BACKGROUND_CLASH = {"night": {"blue", "purple"}, "grass": {"green"}, "beach": {"yellow", "orange"}}
#: how much harder each category is to draw right (multiplies a generator's skill)
CATEGORY_DIFFICULTY = {"counting": 0.75, "spatial": 0.85, "material": 0.85, "activity": 0.85, "attribute": 0.9}
REAL_SUFFIXES = (
    "", ", digital art", ", highly detailed", ", trending on artstation", ", 4k", ", minimalism",
    ", flat illustration", ", octane render",
)

#: name -> (skill: probability of drawing an element right, image side in pixels)
DEFAULT_GENERATORS = {
    "PixelForge-XL": (0.93, 192),
    "PixelForge-Turbo": (0.75, 160),
    "PixelForge-Base": (0.62, 176),
    "PixelForge-Lite": (0.42, 128),
}
#: A fifth generator with a style of its own (pastel colours, soft edges), for held-out-generator
#: experiments: ``write_alignment_release(..., holdout_generator=True)`` adds it, and
#: ``prepare-data --holdout-generators PixelForge-Pastel`` keeps it out of training.
#: name -> (skill, image side, style)
HOLDOUT_GENERATOR = {"PixelForge-Pastel": (0.8, 144, "pastel")}
#: Drawing styles a generator may have (the third field of its spec).
STYLES = ("plain", "pastel")


@dataclass
class _Object:
    noun: str
    count: int
    color: str | None = None  # None: not in the prompt (drawn in any colour)
    count_said: bool = False
    position: str | None = None
    size: str | None = None
    material: str | None = None
    activity: str | None = None  # "waving" (people only)


@dataclass
class _Prompt:
    objects: list[_Object]
    background: str | None = None
    text: str = ""
    elements: list[tuple[str, str, tuple]] = field(default_factory=list)  # (phrase, category, target)


# ---------------------------------------------------------------------------------------------
# Prompts


def _compose_prompt(rng: np.random.Generator, prompt_type: str) -> _Prompt:
    num_objects = int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
    nouns = list(rng.choice(list(NOUNS), size=num_objects, replace=False))
    background = None
    if rng.random() < 0.4:
        background = str(rng.choice(list(BACKGROUNDS)))
    clash = BACKGROUND_CLASH.get(BACKGROUNDS.get(background, ""), set())
    free_colors = [c for c in COLORS if c not in clash]
    rng.shuffle(free_colors)
    free_counts = [2, 3, 4]
    rng.shuffle(free_counts)
    free_positions = list(POSITIONS)
    rng.shuffle(free_positions)
    used_sizes, used_materials = set(), set()
    objects = []
    for noun in nouns:
        obj = _Object(noun=str(noun), count=1)
        if rng.random() < 0.55 and free_counts:
            obj.count, obj.count_said = free_counts.pop(), True
        if rng.random() < 0.85 and free_colors:
            obj.color = free_colors.pop()
        if rng.random() < 0.4 and free_positions:
            obj.position = free_positions.pop()
        if rng.random() < 0.2:
            size = str(rng.choice(list(SIZES)))
            if size not in used_sizes:
                obj.size = size
                used_sizes.add(size)
        if rng.random() < 0.2 and obj.noun in {"circle", "square", "triangle", "star", "house", "fish"}:
            material = str(rng.choice(MATERIALS))
            if material not in used_materials:
                obj.material = material
                used_materials.add(material)
        if obj.noun == "person" and rng.random() < 0.6:
            obj.activity = "waving"
        objects.append(obj)

    parts, elements = [], []
    for obj in objects:
        plural, category = NOUNS[obj.noun]
        noun_word = plural if obj.count > 1 else obj.noun
        words = []
        if obj.count_said:
            words.append(COUNT_WORDS[obj.count])
            elements.append((COUNT_WORDS[obj.count], "counting", ("count", obj)))
        else:
            words.append("a")  # "a"/"an" is settled by _fix_articles
        for word, category_name, kind in ((obj.size, "attribute", "size"), (obj.material, "material", "material"),
                                          (obj.color, "color", "color")):
            if word:
                words.append(word)
                elements.append((word, category_name, (kind, obj)))
        words.append(noun_word)
        elements.append((noun_word, category, ("noun", obj)))
        if obj.activity:
            words.append(obj.activity)
            elements.append((obj.activity, "activity", ("activity", obj)))
        if obj.position:
            words.append(obj.position)
            elements.append((obj.position, "spatial", ("position", obj)))
        parts.append(" ".join(words))
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if background:
        text += f" {background}"
        elements.append((background, "location", ("background", None)))
    if prompt_type == "real":
        text += str(rng.choice(REAL_SUFFIXES))
    else:
        text = text[0].upper() + text[1:] + "."
    return _Prompt(objects=objects, background=background, text=_fix_articles(text), elements=elements)


def _fix_articles(text: str) -> str:
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i].lower() in {"a", "an"}:
            article = "an" if words[i + 1][:1].lower() in "aeiou" else "a"
            words[i] = article.capitalize() if words[i][0].isupper() else article
    return " ".join(words)


# ---------------------------------------------------------------------------------------------
# Drawing (PIL)


def _background(draw_size: tuple[int, int], kind: str | None, rng: np.random.Generator):
    from PIL import Image, ImageDraw

    width, height = draw_size
    top = np.array([232, 228, 218], dtype=np.float64)
    bottom = top - 18
    if kind == "night":
        top, bottom = np.array([14, 16, 44.0]), np.array([30, 34, 76.0])
    elif kind in ("grass", "beach"):
        top, bottom = np.array([165, 205, 240.0]), np.array([200, 225, 245.0])
    t = np.linspace(0, 1, height)[:, None, None]
    array = (top * (1 - t) + bottom * t).repeat(width, axis=1)
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    if kind == "night":
        for _ in range(int(width * height / 900)):
            x, y = rng.integers(0, width), rng.integers(0, height)
            draw.point((int(x), int(y)), fill=(250, 250, 235))
    elif kind == "grass":
        draw.rectangle([0, int(height * 0.62), width, height], fill=(70, 150, 60))
    elif kind == "beach":
        draw.rectangle([0, int(height * 0.5), width, int(height * 0.66)], fill=(40, 120, 190))
        draw.rectangle([0, int(height * 0.66), width, height], fill=(226, 203, 150))
    return image


def _pattern_fill(size: tuple[int, int], color, material: str | None):
    """A fill image: plain colour, or with white stripes / a checkerboard."""
    from PIL import Image

    width, height = size
    fill = np.empty((height, width, 3), np.uint8)
    fill[:] = color
    if material == "striped":
        yy, xx = np.mgrid[0:height, 0:width]
        fill[((xx + yy) // 4) % 2 == 1] = (250, 250, 250)
    elif material == "checkered":
        yy, xx = np.mgrid[0:height, 0:width]
        fill[((xx // 5) + (yy // 5)) % 2 == 1] = (250, 250, 250)
    return Image.fromarray(fill, "RGB")


def _draw_thing(image, noun: str, cx: float, cy: float, r: float, color, material, waving: bool, rng):
    """Draw one instance of ``noun`` centred at (cx, cy) with radius r."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", image.size, 0)
    md = ImageDraw.Draw(mask)
    draw = ImageDraw.Draw(image)
    dark = tuple(int(c * 0.45) for c in color)
    box = [cx - r, cy - r, cx + r, cy + r]
    if noun == "circle":
        md.ellipse(box, fill=255)
    elif noun == "square":
        s = r * 0.88
        md.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    elif noun == "triangle":
        md.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=255)
    elif noun == "star":
        points = []
        for k in range(10):
            angle = -math.pi / 2 + k * math.pi / 5
            radius = r if k % 2 == 0 else r * 0.45
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        md.polygon(points, fill=255)
    elif noun == "house":
        md.rectangle([cx - r * 0.8, cy - r * 0.1, cx + r * 0.8, cy + r], fill=255)
        md.polygon([(cx - r, cy - r * 0.1), (cx, cy - r), (cx + r, cy - r * 0.1)], fill=255)
    elif noun == "fish":
        md.ellipse([cx - r, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5], fill=255)
        md.polygon([(cx + r * 0.35, cy), (cx + r, cy - r * 0.5), (cx + r, cy + r * 0.5)], fill=255)
    elif noun == "apple":
        md.ellipse([cx - r * 0.85, cy - r * 0.7, cx + r * 0.85, cy + r], fill=255)
    elif noun == "tree":
        draw.rectangle([cx - r * 0.18, cy, cx + r * 0.18, cy + r], fill=(110, 70, 35))
        md.ellipse([cx - r * 0.8, cy - r, cx + r * 0.8, cy + r * 0.35], fill=255)
    elif noun == "person":
        width = max(2, int(r * 0.22))
        md.ellipse([cx - r * 0.3, cy - r, cx + r * 0.3, cy - r * 0.4], fill=255)
        md.line([(cx, cy - r * 0.4), (cx, cy + r * 0.3)], fill=255, width=width)
        md.line([(cx, cy + r * 0.3), (cx - r * 0.45, cy + r)], fill=255, width=width)
        md.line([(cx, cy + r * 0.3), (cx + r * 0.45, cy + r)], fill=255, width=width)
        if waving:  # both arms raised
            md.line([(cx, cy - r * 0.2), (cx - r * 0.6, cy - r * 0.85)], fill=255, width=width)
            md.line([(cx, cy - r * 0.2), (cx + r * 0.6, cy - r * 0.85)], fill=255, width=width)
        else:  # arms down
            md.line([(cx, cy - r * 0.2), (cx - r * 0.5, cy + r * 0.2)], fill=255, width=width)
            md.line([(cx, cy - r * 0.2), (cx + r * 0.5, cy + r * 0.2)], fill=255, width=width)
    else:  # pragma: no cover - the vocabulary is closed
        raise ValueError(noun)
    image.paste(_pattern_fill(image.size, color, material), (0, 0), mask)
    # a thin dark outline keeps shapes readable at low resolution
    edges = np.asarray(mask) > 0
    border = edges & ~_erode(edges)
    array = np.asarray(image).copy()
    array[border] = dark
    image.paste(Image.fromarray(array, "RGB"))
    if noun == "apple":
        draw = ImageDraw.Draw(image)
        draw.line([(cx, cy - r * 0.7), (cx + r * 0.15, cy - r)], fill=(90, 60, 30), width=max(1, int(r * 0.12)))
        draw.ellipse([cx + r * 0.1, cy - r * 1.05, cx + r * 0.45, cy - r * 0.8], fill=(40, 140, 40))
    if noun == "fish":
        draw = ImageDraw.Draw(image)
        e = max(1.0, r * 0.1)
        draw.ellipse([cx - r * 0.6 - e, cy - r * 0.15 - e, cx - r * 0.6 + e, cy - r * 0.15 + e], fill=(15, 15, 15))


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] &= mask[:-1, :]
    out[:-1, :] &= mask[1:, :]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def _region_box(position: str | None, width: int, height: int, r: float) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) bounds for centres of an object at ``position``."""
    x0, x1, y0, y1 = r, width - r, r, height - r
    if position == "left":
        x1 = max(x0 + 1, width * 0.42 - r * 0.3)
    elif position == "right":
        x0 = min(x1 - 1, width * 0.58 + r * 0.3)
    elif position == "top":
        y1 = max(y0 + 1, height * 0.42 - r * 0.3)
    elif position == "bottom":
        y0 = min(y1 - 1, height * 0.58 + r * 0.3)
    return x0, x1, y0, y1


def _place(rng, box, r, placed: list[tuple[float, float, float]]) -> tuple[float, float]:
    x0, x1, y0, y1 = box
    best, best_overlap = None, math.inf
    for _ in range(40):
        cx, cy = rng.uniform(x0, max(x0 + 1e-3, x1)), rng.uniform(y0, max(y0 + 1e-3, y1))
        overlap = sum(max(0.0, (r + pr) * 1.05 - math.hypot(cx - px, cy - py)) for px, py, pr in placed)
        if overlap == 0:
            return cx, cy
        if overlap < best_overlap:
            best, best_overlap = (cx, cy), overlap
    return best


def _apply_style(image, style: str):
    """A generator's look: ``plain`` as drawn; ``pastel`` washed towards white (40 %) with soft edges,
    so colours stay recognisable but unlike those of the other generators."""
    if style == "plain":
        return image
    from PIL import Image, ImageFilter

    washed = Image.blend(image, Image.new("RGB", image.size, (255, 250, 245)), 0.4)
    return washed.filter(ImageFilter.GaussianBlur(radius=max(0.6, image.size[0] / 200)))


def _render_alignment_image(prompt: _Prompt, correct: dict[int, bool], side: int, rng: np.random.Generator):
    """Draw ``prompt``; element ``i`` of ``prompt.elements`` is drawn right iff ``correct[i]``."""
    wrong: dict[int | None, set[str]] = {}  # id(object) (None: the scene) -> kinds drawn wrong
    for i, (_, _, (kind, obj)) in enumerate(prompt.elements):
        if not correct[i]:
            wrong.setdefault(id(obj) if obj is not None else None, set()).add(kind)
    background = BACKGROUNDS[prompt.background] if prompt.background else None
    if background and "background" in wrong.get(None, set()):
        background = None
    image = _background((side, side), background, rng)
    clash = BACKGROUND_CLASH.get(background or "", set())
    prompt_nouns = {o.noun for o in prompt.objects}
    prompt_colors = {o.color for o in prompt.objects if o.color}
    placed: list[tuple[float, float, float]] = []
    for obj in prompt.objects:
        bad = wrong.get(id(obj), set())
        noun = obj.noun
        if "noun" in bad:
            noun = str(rng.choice([n for n in NOUNS if n not in prompt_nouns]))
        color = obj.color
        if color is None:
            color = str(rng.choice([c for c in COLORS if c not in clash and c not in prompt_colors] or list(COLORS)))
        elif "color" in bad:
            color = str(rng.choice([c for c in COLORS if c != obj.color and c not in clash]))
        count = obj.count
        if "count" in bad:
            count = count + int(rng.choice([-1, 1])) if count > 1 else 2
        position = POSITIONS[obj.position] if obj.position else None
        if position and "position" in bad:
            position = OPPOSITE[position]
        size = obj.size
        if size and "size" in bad:
            size = "small" if size == "big" else "big"
        material = obj.material if "material" not in bad else None
        waving = obj.activity == "waving" and "activity" not in bad
        r = side * (SIZES[size] if size else NORMAL_SIZE) * rng.uniform(0.9, 1.1)
        if count >= 3 and size != "big":
            r *= 0.85
        box = _region_box(position, side, side, r)
        for _ in range(count):
            cx, cy = _place(rng, box, r, placed)
            placed.append((cx, cy, r))
            _draw_thing(image, noun, cx, cy, r, COLORS[color], material, waving, rng)
    return image


# ---------------------------------------------------------------------------------------------
# Annotators


def _vote(rng, truth: bool, reliability: float) -> int:
    return int(truth) if rng.random() < reliability else 1 - int(truth)


def _ratings(rng, fraction_correct: float, num: int = 3) -> list[int]:
    base = 1.0 + 4.0 * fraction_correct
    return [int(np.clip(round(base + rng.normal(0.0, 0.55)), 1, 5)) for _ in range(num)]


def _format_literal(elements: dict[str, list[int] | None]) -> str:
    """A Python-literal dict string like the release's ``element_score`` (``repr`` of a dict)."""
    return repr(elements)


# ---------------------------------------------------------------------------------------------
# Alignment release


#: ``quirks=True``: how the release spells some categories (capitalised, sub-typed), as the real files do
QUIRK_CATEGORY_SPELLINGS = {"color": "Color", "material": "Material"}
QUIRK_SUBTYPES = {"house": "object-building", "tree": "object-plant"}
QUIRK_FIDELITY_TAG = "非真实场景"


def _release_key(phrase: str, category: str, target: tuple, position: int, quirks: bool) -> str:
    """The ``element_score`` key of one element; with ``quirks`` spelled as messily as the real
    files: capitalised and sub-typed categories, a trailing space on every third key."""
    if not quirks:
        return f"{phrase} ({category})"
    kind, obj = target
    spelled = QUIRK_SUBTYPES.get(obj.noun, category) if kind == "noun" else category
    spelled = QUIRK_CATEGORY_SPELLINGS.get(spelled, spelled)
    return f"{phrase} ({spelled})" + (" " if position % 3 == 0 else "")


def _split_indices(n: int, rng: np.random.Generator, val_fraction: float, test_fraction: float):
    order = rng.permutation(n)
    n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
    n_val = max(1, round(n * val_fraction)) if n >= 3 else 0
    split = {}
    for rank, index in enumerate(order):
        split[int(index)] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
    return split


def write_alignment_release(
    out_dir,
    num_prompts: int = 48,
    seed: int = 0,
    *,
    generators: dict[str, tuple[float, int]] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    extra_image_rate: float = 0.12,
    progress: bool = False,
    quirks: bool = False,
    holdout_generator: bool = False,
) -> dict[str, int]:
    """Write a synthetic EvalMuse-40K release into ``out_dir``.

    Files: ``train_list.json`` and ``val_list.json`` (labelled), ``test.json`` (labels null,
    confidence flags averaged, as in the real test file), ``test_eval.json`` (the test split's
    hidden truth in the official ``eval.json`` format: ``prompt``, ``img_path``, mean
    ``total_score``, ``element_score`` dict of means) and images ``<generator>/<prompt_id>.png``
    (plus ``_1``/``_2`` extra images of some prompts).

    Args:
        out_dir: the release folder (created if needed; existing files with the same names are
            replaced).
        num_prompts: prompts; every generator draws each of them once (sometimes more).
        seed: everything is deterministic given the seed.
        generators: ``{name: (skill, image side)}`` or ``{name: (skill, image side, style)}``;
            skill is the probability of drawing an element right, style one of :data:`STYLES`
            (default ``"plain"``). Default: four generators of clearly different quality.
        val_fraction, test_fraction: prompts going to the validation and test splits.
        extra_image_rate: probability of an ``_1`` extra image per (prompt, generator).
        quirks: write the quirks of the real files (the images and labels are the same):
            element keys spelled messily (``"red (Color) "``, ``"houses (object-building)"``:
            capitalised and sub-typed categories, trailing spaces); in ``train_list.json``
            integer ``prompt_id`` values and every other ``element_score`` as an already parsed
            dict; the validation split in the validation release's layout: flat
            ``img_0001.png`` paths (the generator is unknown), ``prompt_id`` ``"val_0001"``,
            averaged confidence flags, ``fidelity_label`` ``[]`` or ``["非真实场景"]``, and
            ``val_generators.csv`` (``img_path,generator``) for ``--generator-map``.
        holdout_generator: add :data:`HOLDOUT_GENERATOR` (``PixelForge-Pastel``, pastel colours and
            soft edges) after the others, to be held out with ``prepare-data --holdout-generators
            PixelForge-Pastel``. The other generators' images and labels do not change.

    Returns:
        Records written per split.
    """
    from PIL import Image  # noqa: F401  (fail early if Pillow is missing)
    from tqdm.auto import tqdm

    if num_prompts < 1:
        raise ValueError(f"num_prompts must be at least 1, got {num_prompts}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generators = dict(generators or DEFAULT_GENERATORS)
    if holdout_generator:
        generators.update(HOLDOUT_GENERATOR)
    for name, spec in generators.items():
        if len(spec) not in (2, 3) or (len(spec) == 3 and spec[2] not in STYLES):
            raise ValueError(f"generator {name!r}: expected (skill, side) or (skill, side, style) with a style in "
                             f"{STYLES}, got {spec!r}")
    rng = np.random.default_rng([seed, 1])
    splits = _split_indices(num_prompts, rng, val_fraction, test_fraction)
    records = {"train": [], "validation": [], "test": []}
    truth = []
    flat_generators = []  # (img_path, generator) of the flat validation images (quirks)
    for p in tqdm(range(num_prompts), desc="synthetic alignment", disable=not progress):
        prng = np.random.default_rng([seed, 2, p])
        prompt_type = "real" if prng.random() < 0.5 else "synthetic"
        prompt = _compose_prompt(prng, prompt_type)
        prompt_id = f"{p:05d}"
        split = splits[p]
        num_elements = len(prompt.elements)
        for g, (generator, (skill, side, *style)) in enumerate(generators.items()):
            suffixes = [""]
            if prng.random() < extra_image_rate:
                suffixes.append("_1")
                if prng.random() < 0.25:
                    suffixes.append("_2")
            for suffix in suffixes:
                irng = np.random.default_rng([seed, 3, p, g, len(suffix) and int(suffix[1:])])
                difficulty = 0.97 ** max(0, num_elements - 2)
                correct = {
                    i: bool(irng.random() < skill * difficulty * CATEGORY_DIFFICULTY.get(category, 1.0))
                    for i, (_, category, _) in enumerate(prompt.elements)
                }
                image = _render_alignment_image(prompt, correct, side, irng)
                image = _apply_style(image, style[0] if style else "plain")
                img_path = f"{generator}/{prompt_id}{suffix}.png"
                if quirks and split == "validation":
                    img_path = f"img_{len(records['validation']) + 1:04d}.png"
                    flat_generators.append((img_path, generator))
                target = out_dir / img_path
                target.parent.mkdir(parents=True, exist_ok=True)
                image.save(target, format="PNG", compress_level=1)
                reliability = irng.uniform(0.84, 0.95, size=3)
                votes = {
                    _release_key(phrase, category, target, i, quirks): [
                        _vote(irng, correct[i], reliability[a]) for a in range(3)
                    ]
                    for i, (phrase, category, target) in enumerate(prompt.elements)
                }
                fraction = sum(correct.values()) / max(1, num_elements)
                ratings = _ratings(irng, fraction)
                flags = {
                    "promt_meaningless": [int(irng.random() < 0.03) for _ in range(3)],
                    "split_confidence": [int(irng.random() < 0.05) for _ in range(3)],
                    "attribute_confidence": [int(irng.random() > 0.08) for _ in range(3)],
                }
                record = {
                    "prompt_id": prompt_id,
                    "prompt": prompt.text,
                    "type": prompt_type,
                    "img_path": img_path,
                    "total_score": ratings,
                    "element_score": _format_literal(votes),
                    **flags,
                    "fidelity_label": [
                        "none" if irng.random() > 0.1 else str(irng.choice(["distorted", "blurry", "artifact"]))
                        for _ in range(3)
                    ],
                }
                if split == "test":
                    truth.append({
                        "prompt": prompt.text,
                        "img_path": img_path,
                        "total_score": round(float(np.mean(ratings)), 6),
                        "element_score": {k: round(float(np.mean(v)), 6) for k, v in votes.items()},
                    })
                    record["total_score"] = None
                    record["element_score"] = _format_literal({k: None for k in votes})
                    for name, values in flags.items():
                        record[name] = round(float(np.mean(values)), 6)
                if quirks:
                    _add_quirks(record, split, p, len(records[split]), votes, flags)
                records[split].append(record)
    names = {"train": "train_list.json", "validation": "val_list.json", "test": "test.json"}
    for split, name in names.items():
        atomic_write_text(out_dir / name, json.dumps(records[split], ensure_ascii=False, indent=1))
    atomic_write_text(out_dir / "test_eval.json", json.dumps(truth, ensure_ascii=False, indent=1))
    if quirks:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([("img_path", "generator"), *flat_generators])
        atomic_write_text(out_dir / "val_generators.csv", buffer.getvalue())
    return {split: len(items) for split, items in records.items()}


def _add_quirks(record: dict, split: str, prompt_index: int, position: int, votes: dict, flags: dict) -> None:
    """Rewrite one record of a ``quirks=True`` release the way the real files spell it."""
    if split == "train":
        record["prompt_id"] = prompt_index  # an integer, as in some copies of the release
        if position % 2:
            record["element_score"] = votes  # already parsed, as the organisers' preprocessing reads it
    elif split == "validation":
        record["prompt_id"] = f"val_{prompt_index:04d}"
        for name, values in flags.items():
            record[name] = round(float(np.mean(values)), 6)
        record["fidelity_label"] = [QUIRK_FIDELITY_TAG] if position % 4 == 3 else []


# ---------------------------------------------------------------------------------------------
# Structure release


@lru_cache(maxsize=1)
def real_structure_mos() -> np.ndarray:
    """The 10,000 real EvalMuse-Structure training MOS values shipped with the package."""
    text = resources.files(__package__).joinpath("resources/evalmuse_structure_train_mos.csv").read_text("utf-8")
    values = [float(row["mos"]) for row in csv.DictReader(io.StringIO(text))]
    return np.asarray(values, dtype=np.float64)


STRUCTURE_OBJECTS = ("circle", "square", "triangle", "house", "tree", "person", "fish", "apple", "star")
#: background kind -> scene phrases that fit it
STRUCTURE_SCENES = {
    "plain": ("", "", " in a quiet room", " on a white wall"),
    "grass": (" in a park", " on a sunny day", " on a meadow"),
    "night": (" at night", " under the night sky"),
    "beach": (" on the beach", " by the sea"),
}


def _star_polygon(rng, cx, cy, rx, ry, n: int) -> np.ndarray:
    """A star-shaped polygon (clockwise in image coordinates) around (cx, cy)."""
    angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
    radii = rng.uniform(0.65, 1.0, size=n)
    return np.stack([cx + rx * radii * np.cos(angles), cy + ry * radii * np.sin(angles)], axis=1)


def _damage(array: np.ndarray, region: np.ndarray, strength: float, rng: np.random.Generator) -> None:
    """Block noise + shuffled tiles inside ``region`` (bool mask), in place."""
    height, width = region.shape
    block = max(3, min(width, height) // 48)
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    patch = array[y0:y1, x0:x1].astype(np.float64)
    ph, pw = patch.shape[:2]
    bh, bw = -(-ph // block), -(-pw // block)
    # shuffle tiles
    tiles = patch[: (ph // block) * block, : (pw // block) * block]
    th, tw = tiles.shape[0] // block, tiles.shape[1] // block
    if th * tw > 1:
        grid = tiles.reshape(th, block, tw, block, 3).transpose(0, 2, 1, 3, 4).reshape(th * tw, block, block, 3)
        grid = grid[rng.permutation(th * tw)]
        patch[: th * block, : tw * block] = grid.reshape(th, tw, block, block, 3).transpose(0, 2, 1, 3, 4).reshape(
            th * block, tw * block, 3)
    # high-contrast colour blocks
    noise = rng.integers(0, 256, size=(bh, bw, 3)).astype(np.float64)
    noise = noise.repeat(block, axis=0).repeat(block, axis=1)[:ph, :pw]
    alpha = 0.45 + 0.4 * strength
    patch = (1 - alpha) * patch + alpha * noise
    sub = region[y0:y1, x0:x1]
    array[y0:y1, x0:x1][sub] = np.clip(patch[sub], 0, 255).astype(np.uint8)


def _annotate(rng, regions: list[tuple[str, np.ndarray]], width: int, height: int, strength: float):
    """Three annotators' ``bbox_info`` for the damaged ``regions`` ((kind, points))."""
    prefer_polygon = (0.15, 0.5, 0.85)
    bbox_info = []
    for a in range(3):
        shapes = []
        for kind, points in regions:
            if rng.random() > 0.72 + 0.25 * strength:
                continue  # missed
            x_lo, y_lo = points.min(axis=0)
            x_hi, y_hi = points.max(axis=0)
            if kind == "rectangle":  # its outline as a polygon, clockwise on screen
                points = np.array([[x_lo, y_lo], [x_hi, y_lo], [x_hi, y_hi], [x_lo, y_hi]])
            jitter = 0.08 * max(x_hi - x_lo, y_hi - y_lo)
            if rng.random() < prefer_polygon[a]:
                cx, cy = (x_lo + x_hi) / 2, (y_lo + y_hi) / 2
                scale = rng.uniform(0.95, 1.15)
                pts = np.array([[cx + (x - cx) * scale, cy + (y - cy) * scale] for x, y in points])
                pts += rng.normal(0, jitter / 3, size=pts.shape)
                as_dicts = rng.random() < 0.3
                bbox = [{"x": round(float(x), 2), "y": round(float(y), 2)} if as_dicts
                        else [round(float(x), 2), round(float(y), 2)] for x, y in pts]
                shapes.append({"bbox_type": 2, "bbox": bbox})
            else:
                d = rng.normal(0, jitter / 2, size=4)
                shapes.append({"bbox_type": 1, "bbox": [
                    {"x": round(float(x_lo + d[0]), 2), "y": round(float(y_lo + d[1]), 2)},
                    {"x": round(float(x_hi + d[2]), 2), "y": round(float(y_hi + d[3]), 2)},
                ]})
        if rng.random() < 0.04:  # a false alarm
            w, h = rng.uniform(0.08, 0.2) * width, rng.uniform(0.08, 0.2) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            shapes.append({"bbox_type": 1, "bbox": [{"x": round(float(x), 2), "y": round(float(y), 2)},
                                                    {"x": round(float(x + w), 2), "y": round(float(y + h), 2)}]})
        bbox_info.append(shapes)
    return bbox_info


def _render_structure_image(rng: np.random.Generator, mos: float):
    from PIL import Image

    from .masks import rasterize_annotators

    width, height = (int(v) for v in rng.integers(20, 51, size=2) * 8)  # 160..400 px
    kind = str(rng.choice(["plain", "grass", "night", "beach"]))
    image = _background((width, height), None if kind == "plain" else kind, rng)
    clash = BACKGROUND_CLASH.get(kind, set())
    colors = [c for c in COLORS if c not in clash]
    num_objects = int(rng.integers(1, 5))
    nouns = [str(n) for n in rng.choice(STRUCTURE_OBJECTS, size=num_objects)]
    placed, words = [], []
    side = min(width, height)
    for noun in nouns:
        color = str(rng.choice(colors))
        r = side * rng.uniform(0.1, 0.2)
        cx, cy = _place(rng, (r, width - r, r, height - r), r, placed)
        placed.append((cx, cy, r))
        _draw_thing(image, noun, cx, cy, r, COLORS[color], None, bool(rng.random() < 0.5), rng)
        words.append(f"a {color} {noun}")
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    prompt = _fix_articles(text + str(rng.choice(STRUCTURE_SCENES[kind])))

    strength = float(np.clip((5.0 - mos) / 4.0, 0.0, 1.0))
    num_regions = 0 if mos >= 4.3 else 1 if mos >= 3.0 else 2 if mos >= 1.7 else 3
    array = np.asarray(image).copy()
    regions = []
    for k in range(num_regions):
        px, py, pr = placed[k % len(placed)]
        cx = px + rng.uniform(-0.3, 0.3) * pr
        cy = py + rng.uniform(-0.3, 0.3) * pr
        rx = side * (0.1 + 0.1 * strength) * rng.uniform(0.8, 1.2)
        ry = side * (0.1 + 0.1 * strength) * rng.uniform(0.8, 1.2)
        if rng.random() < 0.5:
            points = np.array([[cx - rx, cy - ry], [cx + rx, cy + ry]])
            points = np.clip(points, 0, [width - 1, height - 1])
            x0, y0 = np.floor(points[0]).astype(int)
            x1, y1 = np.ceil(points[1]).astype(int)
            regions.append(("rectangle", np.array([[x0, y0], [x1 + 1, y1 + 1]], dtype=np.float64)))
        else:
            points = _star_polygon(rng, cx, cy, rx, ry, int(rng.integers(5, 9)))
            points = np.round(np.clip(points, 0, [width - 1, height - 1]))  # whole pixels, as drawn
            regions.append(("polygon", points))
        # the damaged pixels: the region rasterised by the same rule as the truth masks
        mask = rasterize_annotators([[{"type": regions[-1][0], "points": regions[-1][1]}]], width, height)[0]
        if mask.any():
            _damage(array, mask.astype(bool), strength, rng)
    bbox_info = _annotate(rng, regions, width, height, strength)
    return Image.fromarray(array, "RGB"), prompt, bbox_info


def write_structure_release(
    out_dir,
    num_images: int = 60,
    seed: int = 0,
    *,
    layout: str = "subfolders",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    progress: bool = False,
) -> dict[str, int]:
    """Write a synthetic EvalMuse-Structure release into ``out_dir``.

    Files: ``train_info.json``, ``val_info.json``, ``test_info.json`` (all labelled, so a demo
    can score the test split) and images ``<key>.jpg`` (160-400 px a side) in ``train/``,
    ``val/``, ``test/`` (``layout="subfolders"``) or beside the JSON files (``layout="flat"``).
    Target MOS values are drawn from the real training MOS distribution; damage (number of
    regions, size, strength) grows as the MOS falls, and images with MOS >= 4.33 are intact.

    Returns:
        Records written per split.
    """
    from tqdm.auto import tqdm

    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if layout not in ("subfolders", "flat"):
        raise ValueError(f"layout must be 'subfolders' or 'flat', got {layout!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 11])
    splits = _split_indices(num_images, rng, val_fraction, test_fraction)
    mos_pool = real_structure_mos()
    folders = {"train": "train", "validation": "val", "test": "test"}
    data: dict[str, dict] = {"train": {}, "validation": {}, "test": {}}
    for i in tqdm(range(num_images), desc="synthetic structure", disable=not progress):
        irng = np.random.default_rng([seed, 12, i])
        key = "".join(f"{int(b):02x}" for b in irng.integers(0, 256, size=16))
        mos = float(irng.choice(mos_pool))
        image, prompt, bbox_info = _render_structure_image(irng, mos)
        split = splits[i]
        folder = out_dir / folders[split] if layout == "subfolders" else out_dir
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{key}.jpg", format="JPEG", quality=92)
        data[split][key] = {"prompt_en": prompt, "mos": mos, "bbox_info": bbox_info}
    names = {"train": "train_info.json", "validation": "val_info.json", "test": "test_info.json"}
    for split, name in names.items():
        atomic_write_text(out_dir / name, json.dumps(data[split], ensure_ascii=False, indent=1))
    return {split: len(items) for split, items in data.items()}
