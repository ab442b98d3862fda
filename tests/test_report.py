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
