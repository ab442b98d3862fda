"""``evalmuse report``: the leaderboard numbers, and the page as a real headless browser renders it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from test_score_engine import FakeAlign, FakeStructure, write_image_folder

from evalmuse_models.cli import main
from evalmuse_models.report import build_report, category_table, generator_table
from evalmuse_models.scoring import read_results, score
from evalmuse_models.utils import UserInputError


def find_chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    pytest.fail("chromium is not installed: the report test needs a real headless browser. "
                "Install it with `sudo apt-get install chromium` (Debian) or set CHROMIUM=/path/to/chrome.")


def run_chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    write_image_folder(tmp / "images", count=9)
    out = tmp / "results.jsonl"
    score(tmp / "images", out=out, align=FakeAlign(), structure=FakeStructure(), progress=False)
    return out


class _Cards(HTMLParser):
    """Visible cards (in page order) and the leaderboard's generator column from a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.cards: list[dict] = []
        self.leaderboard: list[str] = []
        self._in_table = self._first_td = False
        self._td_index = -1
        self.body_attrs: dict = {}
        self.count_text = ""
        self._in_count = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body_attrs = attrs
        if tag == "article" and "card" in attrs.get("class", "").split():
            self.cards.append(attrs)
        if tag == "table" and attrs.get("id") == "leaderboard":
            self._in_table = True
        if self._in_table and tag == "tr":
            self._td_index = -1
        if self._in_table and tag == "td":
            self._td_index += 1
            self._first_td = self._td_index == 0
        if tag == "span" and attrs.get("id") == "count":
            self._in_count = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        if tag == "td":
            self._first_td = False
        if tag == "span":
            self._in_count = False

    def handle_data(self, data):
        if self._first_td:
            self.leaderboard.append(data)
        if self._in_count:
            self.count_text += data


def test_generator_table_numbers(results):
    rows = read_results(results)
    table = {r["generator"]: r for r in generator_table(rows)}
    gen_a = [r for r in rows if r["generator"] == "gen-a"]
    ok = [r for r in gen_a if r["status"] == "ok"]
    assert table["gen-a"]["images"] == len(gen_a) and table["gen-a"]["errors"] == len(gen_a) - len(ok) == 1
    assert table["gen-a"]["alignment"] == pytest.approx(np.mean([r["alignment"]["overall"] for r in ok]))
    values = [p for r in ok for p in r["alignment"]["elements"].values()]
    assert table["gen-a"]["elements_present"] == pytest.approx(np.mean([p >= 0.5 for p in values]))
    assert table["gen-a"]["structure"] == pytest.approx(np.mean([r["structure"]["score"] for r in ok]))
    first, second = generator_table(rows)
    assert first["alignment"] >= second["alignment"]


def test_report_in_a_headless_browser(results, tmp_path):
    index = build_report(results, tmp_path / "report", title="Fake <models>", progress=False)
    html_text = index.read_text()
    assert "Fake &lt;models&gt;" in html_text  # escaped
    thumbs = sorted((tmp_path / "report" / "images").glob("*.jpg"))
    overlays = sorted((tmp_path / "report" / "images").glob("*_heat.png"))
    assert len(thumbs) == len(overlays) == 9  # the corrupt and the missing image have none
    assert Image.open(overlays[0]).mode == "RGBA"

    rows = read_results(results)
    url = index.resolve().as_uri()
    dom = _Cards()
    dom.feed(run_chromium(tmp_path, url, "--dump-dom").stdout)
    assert dom.body_attrs.get("data-ready") == "1", "the page script did not run"
    assert sorted(dom.leaderboard) == ["gen-a", "gen-b"]
    assert dom.count_text == f"showing {len(rows)} of {len(rows)} images"
    assert len(dom.cards) == len(rows)
    assert sum("error" in c["class"].split() for c in dom.cards) == 2

    # The URL hash drives sorting and filtering (what the controls do when clicked).
    dom = _Cards()
    dom.feed(run_chromium(tmp_path, url + "#sort=alignment-asc&generator=gen-b", "--dump-dom").stdout)
    visible = [c for c in dom.cards if "hidden" not in c["class"].split()]
    expected = sorted((r for r in rows if r["generator"] == "gen-b"),
                      key=lambda r: r["alignment"]["overall"] if "alignment" in r else float("inf"))
    assert [c["data-text"].split()[-1] for c in visible] == [r["id"] for r in expected]
    assert dom.count_text == f"showing {len(expected)} of {len(rows)} images"

    shot = tmp_path / "report.png"
    run_chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars")
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape[:2] == (2000, 1280)
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 500, "the screenshot looks blank"


def test_report_cli_and_errors(results, tmp_path, capsys):
    assert main(["report", str(results), "--out", str(tmp_path / "r"), "--max-cards", "3"]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert len(re.findall(r'<article class="card', page)) == 3 and "first 3 of 11" in page
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserInputError, match="no rows"):
        build_report(empty, tmp_path / "r2")
    assert main(["report", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r3")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _flat_rows():
    """Results of the validation release's layout: flat image ids, the release's messy element keys."""
    keys = ["Pale (Color) ", "red (color)", "car (object-vehicle)", "cup (object-household goods)", "thing"]
    rows = []
    for i in range(6):
        probs = {k: ((i + j) % 4) / 3 for j, k in enumerate(keys)}
        truth = {k: float((i + j) % 2) for j, k in enumerate(keys)}
        rows.append({"id": f"img_{i + 1:04d}.png", "prompt": f"prompt {i}", "generator": None, "status": "ok",
                     "source": {"path": "/nonexistent.png"},
                     "alignment": {"overall": 1.0 + i / 2, "elements": probs},
                     "reference": {"overall": 1.0 + i / 3, "elements": truth}})
    return rows


def test_category_table_groups_by_the_normalised_category():
    rows = _flat_rows()
    table = {r["category"]: r for r in category_table(rows)}
    assert set(table) == {"color", "object", "other"}  # "Color" + "color ", object-*, no category
    pairs = {"color": [], "object": [], "other": []}
    for row in rows:
        for key, p in row["alignment"]["elements"].items():
            cat = "color" if "olor" in key else "object" if "object" in key else "other"
            pairs[cat].append((p, row["reference"]["elements"][key]))
    for cat, values in pairs.items():
        assert table[cat]["elements"] == len(values) == (12 if cat != "other" else 6)
        assert table[cat]["present"] == pytest.approx(np.mean([p >= 0.5 for p, _ in values]))
        assert table[cat]["accuracy"] == pytest.approx(np.mean([(p >= 0.5) == (t >= 0.5) for p, t in values]))


def test_report_generator_map_and_category_filter(tmp_path, capsys):
    from evalmuse_models.scoring.results import ResultsWriter

    rows = _flat_rows()
    results = tmp_path / "results.jsonl"
    with ResultsWriter(results) as writer:
        writer.write(rows)
    mapping = tmp_path / "generators.csv"
    mapping.write_text("img_path,generator\n" + "".join(
        f"{r['id']},{'gen-x' if i < 4 else 'gen-y'}\n" for i, r in enumerate(rows)), encoding="utf-8")

    # without the map every flat image is of an unknown generator; with it the tables group by it
    assert [r["generator"] for r in generator_table(read_results(results))] == ["(unknown)"]
    assert main(["report", str(results), "--out", str(tmp_path / "r"), "--generator-map", str(mapping)]) == 0
    board = {r["generator"]: r["images"] for r in json.loads((tmp_path / "r" / "leaderboard.json").read_text())}
    assert board == {"gen-x": 4, "gen-y": 2}
    categories = json.loads((tmp_path / "r" / "categories.json").read_text())
    assert [c["category"] for c in categories] == ["color", "object", "other"]

    url = (tmp_path / "r" / "index.html").resolve().as_uri()
    dom = _Cards()
    dom.feed(run_chromium(tmp_path, url + "#category=object&only=missing&generator=gen-x", "--dump-dom").stdout)
    assert dom.body_attrs.get("data-ready") == "1"
    visible = [c["data-text"].split()[-1] for c in dom.cards if "hidden" not in c["class"].split()]
    object_keys = ("car (object-vehicle)", "cup (object-household goods)")
    expected = [r["id"] for r in rows[:4] if any(r["alignment"]["elements"][k] < 0.5 for k in object_keys)]
    assert visible == expected and 0 < len(expected) < 4

    wrong = tmp_path / "other.json"
    wrong.write_text('{"SDXL/0001.png": "SDXL"}', encoding="utf-8")
    assert main(["report", str(results), "--out", str(tmp_path / "r2"), "--generator-map", str(wrong)]) == 2
    assert "no image of" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# What a new user met: the structure split, long labels, the heatmap legend, outlines, axis titles
# ---------------------------------------------------------------------------------------------

LONG_GENERATORS = ["Stable-Diffusion-XL-Turbo-1.0-refiner-with-an-extraordinarily-long-checkpoint-name",
                   "DALL·E 3 HD (wide aspect ratio, vivid style, second attempt with seed 1234567)"]
LONG_KEY = "an extraordinarily_long_unbroken_element_phrase_that_never_stops_going_on_and_on (object)"
LONG_PROMPT = ("a photograph of " + "x" * 90 + " next to a very long prompt that describes many things, "
               "such as the weather, the light and the precise arrangement of the objects on the table")


def run_probe(tmp_path, index, script: str, fragment: str = "") -> dict:
    """Open a copy of the report page with ``script`` appended after the page's own script (it
    stores its findings with ``done(result)``) in headless Chromium, and return what it found."""
    page = index.read_text(encoding="utf-8")
    probe = index.with_name(f"probe-{len(list(index.parent.glob('probe-*.html')))}.html")
    helper = ("function done(result) { document.body.setAttribute('data-probe', JSON.stringify(result)); }\n"
              "try {\n" + script + "\n} catch (err) { done({error: String(err) + ' ' + err.stack}); }")
    probe.write_text(page.replace("</body>", f"<script>{helper}</script>\n</body>"), encoding="utf-8")
    dom = _Cards()
    dom.feed(run_chromium(tmp_path, probe.resolve().as_uri() + fragment, "--dump-dom",
                          "--window-size=1280,2000").stdout)
    assert dom.body_attrs.get("data-ready") == "1", "the page script did not run"
    found = json.loads(dom.body_attrs["data-probe"])
    assert "error" not in found, found.get("error")
    return found


def _rectangle_images(folder, count: int) -> list[np.ndarray]:
    """Dark images with one bright rectangle each (what FakeStructure marks as distorted)."""
    folder.mkdir(parents=True)
    masks = []
    for i in range(count):
        width, height = 60 + 10 * i, 48 + 6 * i
        pixels = np.full((height, width, 3), 30, dtype=np.uint8)
        x0, y0 = 5 + 3 * i, 4 + 2 * i
        pixels[y0:y0 + 12, x0:x0 + 16 + i] = 240
        Image.fromarray(pixels).save(folder / f"s{i:02d}.png")
        masks.append((pixels[..., 0] > 127).astype(np.uint8))
    return masks


@pytest.fixture(scope="module")
def mixed_results(tmp_path_factory):
    """The demo's combined file: images of two (long-named) generators with both scores, and the
    images of a structure split (no generator, the true MOS and mask attached by the dataset)."""
    from evalmuse_models.scoring import mask_to_rle
    from evalmuse_models.scoring.results import ResultsWriter

    tmp = tmp_path_factory.mktemp("mixed")
    write_image_folder(tmp / "gen", count=4, bad=False)
    score(tmp / "gen", out=tmp / "gen.jsonl", align=FakeAlign(), structure=FakeStructure(), progress=False)
    rows = read_results(tmp / "gen.jsonl")
    for i, row in enumerate(rows):
        row["generator"] = LONG_GENERATORS[i % 2]
        row["alignment"]["elements"][LONG_KEY] = 0.25
    rows[0]["prompt"] = LONG_PROMPT
    masks = _rectangle_images(tmp / "structure", 4)
    score(tmp / "structure", out=tmp / "structure.jsonl", structure=FakeStructure(), progress=False)
    split_rows = read_results(tmp / "structure.jsonl")
    for i, row in enumerate(split_rows[:3]):  # the last image is unlabelled
        truth = masks[i] if i != 2 else np.zeros_like(masks[i])  # the third: labelled, no distortion
        # the truth sits a few pixels off the prediction, as a real one would
        row["reference"] = {"mos": 2.0 + i, "mask": mask_to_rle(np.roll(truth, 2, axis=1))}
    out = tmp / "results.jsonl"
    with ResultsWriter(out) as writer:
        writer.write(rows)
        writer.write(split_rows)
    return out


@pytest.fixture(scope="module")
def mixed_report(mixed_results, tmp_path_factory):
    return build_report(mixed_results, tmp_path_factory.mktemp("mixed-report") / "report", progress=False)


def test_structure_split_is_no_generator(mixed_results, mixed_report, tmp_path):
    from evalmuse_models.report import is_structure_split, structure_split_table

    # which rows are a structure split: scored for structure only, with no generator or from a structure dataset
    assert is_structure_split({"meta": {"align_model": None, "structure_model": "m"}, "generator": None})
    assert is_structure_split({"meta": {"align_model": None}, "generator": "EvalMuse-Structure test",
                               "source": {"path": "ds", "config": "structure", "split": "test", "index": 0}})
    assert not is_structure_split({"meta": {"align_model": None}, "generator": "sdxl", "source": {"path": "a.png"}})
    assert not is_structure_split({"meta": {"align_model": "a"}, "generator": None})  # alignment: "(unknown)"
    assert not is_structure_split({"alignment": {"overall": 3.0, "elements": {}}})  # hand-made rows

    rows = read_results(mixed_results)
    split_rows = [r for r in rows if r["meta"]["align_model"] is None]
    assert {r["generator"] for r in generator_table(rows)} == set(LONG_GENERATORS)  # no "(unknown)" row
    split = structure_split_table(rows)
    assert split["images"] == len(split_rows) == 4 and split["truth_masks"] == 3
    assert split["structure"] == pytest.approx(np.mean([r["structure"]["score"] for r in split_rows]))
    assert split["reference_structure"] == pytest.approx(3.0) and split["reference_distorted"] == pytest.approx(2 / 3)
    folder = mixed_report.parent
    assert {r["generator"] for r in json.loads((folder / "leaderboard.json").read_text())} == set(LONG_GENERATORS)
    assert json.loads((folder / "structure_split.json").read_text()) == split

    found = run_probe(tmp_path, mixed_report, """
      var text = function (el) { return el ? el.textContent.trim() : null; };
      var cards = Array.prototype.slice.call(document.querySelectorAll('.card'));
      document.getElementById('generator').value = '(no generator)';
      document.getElementById('generator').dispatchEvent(new Event('change'));
      done({
        board: Array.prototype.map.call(document.querySelectorAll('#leaderboard tbody tr td:first-child'), text),
        splitHead: Array.prototype.map.call(document.querySelectorAll('#structure-split th'), text),
        splitRows: document.querySelectorAll('#structure-split tbody tr').length,
        barLabels: Array.prototype.map.call(document.querySelectorAll('g.bar title'), text),
        ids: cards.map(function (c) { return text(c.querySelector('.id')); }),
        shown: cards.filter(function (c) { return !c.classList.contains('hidden'); }).map(function (c) {
          return text(c.querySelector('.id')); }),
      });""")
    assert sorted(found["board"]) == sorted(LONG_GENERATORS)
    assert "Generator" not in found["splitHead"] and found["splitRows"] == 1
    assert found["splitHead"][:3] == ["Images", "Errors", "Structure (1–5)"]
    assert not any("(unknown)" in t or "no generator" in t for t in found["barLabels"])
    assert found["shown"] == [r["id"] for r in split_rows]  # the filter's "without a generator" entry
    assert all("·" not in i for i in found["ids"][-4:]) and all("·" in i for i in found["ids"][:-4])

    # a report of a structure split alone: no per-generator table or chart at all
    only = tmp_path / "split.jsonl"
    only.write_text("".join(json.dumps(r) + "\n" for r in split_rows), encoding="utf-8")
    page = build_report(only, tmp_path / "split-report", progress=False).read_text()
    assert 'id="structure-split"' in page and 'id="leaderboard"' not in page
    assert "score per generator" not in page and 'class="bar"' not in page
    assert json.loads((tmp_path / "split-report" / "leaderboard.json").read_text()) == []


def test_long_labels_are_never_cut(mixed_report, tmp_path):
    from evalmuse_models.report.builder import wrap_label

    assert "".join(wrap_label(LONG_GENERATORS[0], 100)) == LONG_GENERATORS[0]  # nothing dropped
    assert " ".join(wrap_label(LONG_GENERATORS[1], 100)) == LONG_GENERATORS[1]
    found = run_probe(tmp_path, mixed_report, """
      var inside = function (inner, outer) {
        var a = inner.getBoundingClientRect(), b = outer.getBoundingClientRect();
        return a.width > 0 && a.left >= b.left - 0.5 && a.right <= b.right + 0.5 &&
          a.top >= b.top - 0.5 && a.bottom <= b.bottom + 0.5;
      };
      var fits = function (el) { return el.scrollWidth <= el.clientWidth + 1; };
      var bars = Array.prototype.map.call(document.querySelectorAll('.plot svg g.bar'), function (g) {
        var label = g.querySelector('text.label');
        return {label: Array.prototype.map.call(label.querySelectorAll('tspan'), function (t) {
                  return t.textContent; }).join(' '),
                title: g.querySelector('title').textContent, inside: inside(label, g.ownerSVGElement)};
      });
      var card = document.querySelector('.card');
      card.scrollIntoView();
      var html = ['.card .prompt', '.card .id', '.checklist .key', '.checklist .p', '.scores', '#leaderboard td',
                  '.legend li'].map(function (sel) {
        var el = card.querySelector(sel) || document.querySelector(sel);
        var holder = el.closest('.card') || el.closest('.plot') || el.closest('table');
        return {sel: sel, fits: fits(el), inside: inside(el, holder), text: el.textContent};
      });
      done({bars: bars, html: html, card: fits(card),
            legend: Array.prototype.map.call(document.querySelectorAll('.legend li'), function (li) {
              return li.textContent; })});""")
    assert len(found["bars"]) == 4  # two generators, two bar charts
    for bar in found["bars"]:
        label = bar["title"].rsplit(": ", 1)[0]  # the tooltip: the full label and the value
        assert label in LONG_GENERATORS and bar["inside"], bar
        assert bar["label"].replace(" ", "") == label.replace(" ", ""), bar  # wrapped, not cut
    for item in found["html"]:
        assert item["fits"] and item["inside"], item
    assert found["card"]
    texts = {item["sel"]: item["text"] for item in found["html"]}
    assert texts[".card .prompt"] == LONG_PROMPT
    assert set(LONG_GENERATORS) <= set(found["legend"])


def test_heatmap_legend(mixed_results, mixed_report, results, tmp_path):
    from evalmuse_models.report.builder import heat_color

    found = run_probe(tmp_path, mixed_report, """
      var legend = document.getElementById('heat-legend');
      var stops = Array.prototype.map.call(legend.querySelectorAll('stop'), function (s) {
        return [s.getAttribute('offset'), s.getAttribute('stop-color')]; });
      done({visible: legend.getBoundingClientRect().height > 0, stops: stops,
            title: legend.querySelector('.axis-title').textContent,
            ticks: Array.prototype.map.call(legend.querySelectorAll('.tick'), function (t) { return t.textContent; }),
            threshold: !!legend.querySelector('line.threshold'), text: legend.textContent});""")
    assert found["visible"] and found["title"] == "predicted distortion probability (0–1)"
    assert found["ticks"] == ["0", "0.25", "0.5", "0.75", "1"]
    assert found["stops"][0] == ["0", heat_color(0)] and found["stops"][-1] == ["1", heat_color(1)]
    assert not found["threshold"] and "not recorded in the results" in found["text"]  # FakeStructure's is unknown

    # the threshold, when known (from the rows, or given), is marked on the colour bar
    page = build_report(mixed_results, tmp_path / "t", progress=False, mask_threshold=40 / 255).read_text()
    assert 'class="threshold"' in page and "mask threshold 0.157" in page and "heatmap above 0.157" in page
    recorded = tmp_path / "recorded.jsonl"
    rows = read_results(mixed_results)
    for row in rows:
        if "structure" in row:
            row["structure"]["threshold"] = 0.5  # as evalmuse score records it
    recorded.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    page = build_report(recorded, tmp_path / "r", progress=False, mask_threshold=0.1).read_text()
    assert "mask threshold 0.5<" in page  # what the rows say wins
    assert main(["report", str(mixed_results), "--out", str(tmp_path / "c"), "--mask-threshold", "2"]) == 2

    # no structure scores, no heatmap legend
    align_only = tmp_path / "align.jsonl"
    align_only.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "structure"}) + "\n"
                                  for r in read_results(results)), encoding="utf-8")
    page = build_report(align_only, tmp_path / "a", progress=False).read_text()
    assert 'id="heat-legend"' not in page and 'id="outlines"' not in page


def test_outline_path_traces_the_mask():
    from evalmuse_models.report.builder import outline_path

    mask = np.zeros((100, 200), dtype=np.uint8)
    mask[20:40, 50:90] = 1
    path = outline_path(mask, (100, 50))  # a thumbnail at half the size
    points = np.array([[float(v) for v in p.split()] for p in path.strip("MZ").split("L")])
    assert points.min(axis=0) == pytest.approx([25, 10], abs=0.6) and points.max(axis=0) == pytest.approx([45, 20], abs=0.6)
    assert outline_path(np.zeros((8, 8)), (8, 8)) == ""
    noisy = (np.random.default_rng(0).random((256, 256)) > 0.5).astype(np.uint8)  # thousands of tiny regions
    assert 0 < outline_path(noisy, (128, 128)).count("L") <= 600


def test_outlines_and_truth_toggle(mixed_results, mixed_report, results, tmp_path):
    from evalmuse_models.scoring import rle_to_mask

    rows = read_results(mixed_results)
    page = mixed_report.read_text()
    svgs = re.findall(r'<svg class="outlines" viewBox="0 0 (\d+) (\d+)"', page)
    thumbs = sorted((mixed_report.parent / "images").glob("*.jpg"))
    assert len(svgs) == len(thumbs) == len(rows)
    assert [tuple(map(int, s)) for s in svgs] == [Image.open(t).size for t in thumbs]  # in thumbnail pixels

    script = """
      var cards = Array.prototype.slice.call(document.querySelectorAll('.card'));
      var state = function () {
        return cards.map(function (c) {
          var pred = c.querySelector('.outlines .pred'), truth = c.querySelector('.outlines .truth');
          var empty = c.querySelector('.truth-empty');
          return {pred: pred ? pred.getAttribute('d') : null,
                  predShown: pred ? getComputedStyle(pred).display !== 'none' : null,
                  truth: truth ? truth.getAttribute('d') : null,
                  truthShown: truth ? getComputedStyle(truth).display !== 'none' : null,
                  emptyShown: empty ? getComputedStyle(empty).display !== 'none' : null};
        });
      };
      var box = document.getElementById('truth');
      var result = {toggle: !!box, checked: box && box.checked, first: state()};
      box.click();
      result.clicked = state(); result.hash = location.hash;
      box.click();
      result.again = state();
      document.getElementById('outlines').click();
      result.noOutlines = state();
      done(result);"""
    found = run_probe(tmp_path, mixed_report, script)
    assert found["toggle"] and not found["checked"]
    split = [i for i, r in enumerate(rows) if r["meta"]["align_model"] is None]
    for i, (row, card) in enumerate(zip(rows, found["first"])):
        assert card["predShown"] and (card["pred"] != "") == bool(rle_to_mask(row["structure"]["mask"]).any())
        assert (card["truth"] is not None) == ("mask" in (row.get("reference") or {}))
        assert card["truthShown"] in (None, False) and card["emptyShown"] in (None, False)  # hidden at first
    labelled = [i for i in split if "mask" in (rows[i].get("reference") or {})]
    assert len(labelled) == 3
    for i in labelled:
        assert found["clicked"][i]["truthShown"]  # the toggle shows the truth...
        assert not found["again"][i]["truthShown"]  # ... and hides it again
    empty = labelled[2]
    assert found["first"][empty]["truth"] == "" and found["clicked"][empty]["emptyShown"]
    assert found["hash"].endswith("&truth=1")
    assert not any(c["predShown"] for c in found["noOutlines"] if c["pred"] is not None)

    # a shared view with the truth on opens with it on
    shared = run_probe(tmp_path, mixed_report, "done({shown: getComputedStyle(document.querySelectorAll('.card')"
                       f"[{labelled[0]}].querySelector('.truth')).display}});", fragment="#truth=1")
    assert shared["shown"] != "none"

    # without true masks in the rows there is no truth toggle, but there are outlines
    page = build_report(results, tmp_path / "plain", progress=False).read_text()
    assert 'id="truth"' not in page and 'class="truth"' not in page and page.count('<path class="pred"') == 9


def test_axis_titles_on_every_plot(mixed_report, tmp_path):
    found = run_probe(tmp_path, mixed_report, """
      done(Array.prototype.map.call(document.querySelectorAll('.plot svg.chart'), function (svg) {
        var box = svg.getBoundingClientRect();
        var titles = {};
        ['x', 'y'].forEach(function (axis) {
          var t = svg.querySelector('.axis-title.' + axis);
          var r = t && t.getBoundingClientRect();
          titles[axis] = t ? {text: t.textContent, inside: r.width > 0 && r.height > 0 && r.left >= box.left - 0.5 &&
            r.right <= box.right + 0.5 && r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5} : null;
        });
        return {plot: svg.closest('.plot').querySelector('h3').textContent, x: titles.x, y: titles.y,
                ticks: svg.querySelectorAll('.tick').length};
      }));""")
    assert [p["plot"] for p in found] == ["Mean alignment per generator", "Mean structure score per generator",
                                          "Alignment score (1–5)", "Element probabilities", "Structure score (1–5)"]
    for plot in found:
        assert plot["x"] and plot["y"] and plot["x"]["inside"] and plot["y"]["inside"], plot
        assert plot["ticks"] >= 3
    titles = {p["plot"]: (p["x"]["text"], p["y"]["text"]) for p in found}
    assert titles["Mean alignment per generator"] == ("mean alignment score (1–5)", "generator")
    assert titles["Alignment score (1–5)"] == ("alignment score (1–5), bins of 0.2", "images")
    assert titles["Element probabilities"] == ("element presence probability (0–1), bins of 0.05", "elements")


# ---------------------------------------------------------------------------------------------
# Analysis sections (--analysis FILE)


@pytest.fixture(scope="module")
def analyses(tmp_path_factory):
    """The JSON of a weights analysis (three alignment submissions) and of a generalisation gap."""
    from test_analysis_weights import _alignment_files

    from evalmuse_models.analysis import AlignmentParts, analyze_weights, generalisation_gap

    tmp = tmp_path_factory.mktemp("analyses")
    truth, subs = _alignment_files(tmp, n=24)
    weights = analyze_weights(truth, subs, n_resamples=8)
    rng = np.random.default_rng(4)
    n = 30
    ref = rng.uniform(1, 5, n)
    noise = np.where(np.arange(n) < 16, 0.4, 1.6)  # the held-out images are scored worse
    parts = AlignmentParts.from_arrays(ref + rng.normal(0, noise), ref, [[0.8, 0.3]] * n, [[1.0, 0.0]] * n)
    subsets = ["seen"] * 16 + ["unseen_prompt_seen"] * 8 + ["unseen_prompt_unseen"] * 6
    gap = generalisation_gap(parts, subsets, n_resamples=10, holdout_generators=["Held-Out"])
    paths = {}
    for name, data in (("weights", weights), ("generalisation", gap)):
        paths[name] = tmp / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    return paths


def test_analysis_sections(analyses, tmp_path):
    from evalmuse_models.report.builder import PALETTE

    index = build_report(None, tmp_path / "report", analyses=[analyses["weights"], analyses["generalisation"]],
                         progress=False)
    page = index.read_text()
    weights = json.loads(analyses["weights"].read_text())
    gap = json.loads(analyses["generalisation"].read_text())
    assert 'id="analysis-weights"' in page and 'id="analysis-generalisation"' in page
    assert 'id="images"' not in page and 'id="leaderboard-section"' not in page  # no results: analyses only
    for name in ("weights", "generalisation"):
        assert json.loads((tmp_path / "report" / f"analysis_{name}.json").read_text()) == json.loads(
            analyses[name].read_text())

    # One simplex cell per grid weighting, coloured by the system it ranks first.
    official = weights["official_ranking"]
    cells = re.findall(r'<path class="cell" d="[^"]+" fill="([^"]+)" stroke="[^"]+" stroke-width="[^"]+" '
                       r'data-winner="([^"]+)"', page)
    grid = [w for w in weights["weightings"] if w["name"] is None]
    assert len(cells) == len(grid) == 231
    assert [winner for _, winner in cells] == [w["ranking"][0] for w in grid]
    assert all(fill == PALETTE[official.index(winner)] for fill, winner in cells)
    assert page.count('<line class="tie"') == len(weights["rank_flips"]) > 0
    for name in official:
        for p in weights["bootstrap"][name]["rank_probabilities"]:
            assert f'data-value="{p}"' in page
    named = [w for w in weights["weightings"] if w["name"]]
    for w in named:
        assert " &gt; ".join(w["ranking"]) in page

    # The generalisation table: every group and gap with its value.
    for entry in gap["groups"].values():
        assert f'{entry["main_score"]:.4f}' in page
    assert f'{gap["gaps"]["generator"]["values"]["main_score"]:+.4f}' in page
    assert "Held-Out" in page


def test_analysis_sections_beside_results_and_errors(analyses, results, tmp_path, capsys):
    out = tmp_path / "both"
    assert main(["report", str(results), "--analysis", str(analyses["weights"]), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert 'id="leaderboard-section"' in page and 'id="analysis-weights"' in page and 'id="images"' in page

    assert main(["report", "--out", str(tmp_path / "none")]) == 2
    assert "nothing to report" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"systems": {}}))
    assert main(["report", "--analysis", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert "bad.json: not an analysis" in capsys.readouterr().err
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"analysis": "weights", "systems": {}}))
    with pytest.raises(UserInputError, match="partial.json: a 'weights' analysis without track"):
        build_report(None, tmp_path / "partial", analyses=[partial], progress=False)


def test_analysis_plots_in_a_headless_browser(analyses, tmp_path):
    index = build_report(None, tmp_path / "report", analyses=[analyses["weights"], analyses["generalisation"]],
                         progress=False)
    found = run_probe(tmp_path, index, """
      done(Array.prototype.map.call(document.querySelectorAll('section.analysis svg.chart'), function (svg) {
        var box = svg.getBoundingClientRect();
        var inside = Array.prototype.every.call(svg.querySelectorAll('text'), function (t) {
          var r = t.getBoundingClientRect();
          return r.width > 0 && r.left >= box.left - 0.5 && r.right <= box.right + 0.5 &&
            r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5;
        });
        var cells = svg.querySelectorAll('path.cell');
        var shown = Array.prototype.filter.call(cells, function (c) { return c.getBoundingClientRect().width > 0; });
        return {plot: svg.closest('.plot').querySelector('h3').textContent, texts_inside: inside,
                x_title: !!svg.querySelector('.axis-title.x'), cells: shown.length, width: box.width};
      }));""")
    assert [p["plot"] for p in found] == ["Which system each weighting ranks first", "Scores by group", "Gaps"]
    for plot in found:
        assert plot["texts_inside"] and plot["x_title"] and plot["width"] > 300, plot
    assert found[0]["cells"] == 231
