"""``evalmuse report``: the leaderboard numbers, and the page as a real headless browser renders it."""

from __future__ import annotations

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
from evalmuse_models.report import build_report, generator_table
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
