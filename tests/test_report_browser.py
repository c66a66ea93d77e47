"""``vaelab report`` pages opened in a real headless Chromium (Debian's ``chromium``).

Real tiny runs are trained on Fashion-MNIST through the CLI: two evaluated on the same test
examples (so the comparison has a paired difference), one with gaps, one never evaluated.
Each page is loaded with a probe script appended to a copy (the product page itself has no
script): it records script errors and whether every image decoded. The test then checks that
the page loaded with no console message or error, every image loaded, the comparison table
holds the numbers recomputed here from the runs' eval.json, and the screenshot is not blank.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaelab import cli, data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                       "(apt-get install chromium; scripts/setup.sh does it)"),
    pytest.mark.skipif(
        not any((d / "t10k-images-idx3-ubyte.gz").is_file()
                for d in data.search_dirs("fashion-mnist")),
        reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"),
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-extensions", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000"]
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e)), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-probe', ok + '/' + imgs.length + ' errors=' +
                             window.__errors.length);
});
</script>"""
TRAIN = ["--limit", "300", "--epochs", "1", "--batch-size", "64", "--hidden", "16",
         "--latent-dim", "2", "--quiet"]


def _cli(*argv) -> None:
    assert cli.main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report_runs")
    out = {name: root / name for name in ("small", "wider", "bare")}
    _cli("train", "--out", out["small"], *TRAIN)
    _cli("train", "--out", out["wider"], *TRAIN[:-2], "4", "--quiet", "--seed", "1")
    _cli("train", "--out", out["bare"], *TRAIN)
    for name in ("small", "wider"):
        _cli("evaluate", out[name], "--limit", "30", "--k", "20", "--quiet")
    _cli("gaps", out["small"], "--limit", "5", "--k", "10", "--steps", "5")
    return out


def _open(page: Path, tmp_path: Path) -> tuple[str, str, Image.Image]:
    """(DOM after load, Chromium's stderr, screenshot) of ``page`` with the probe appended."""
    probed = tmp_path / ("probed-" + page.name)
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    profile = tmp_path / "profile"
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*common, "--dump-dom", probed.as_uri()], capture_output=True,
                         text=True, timeout=120)
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1280,1600", f"--screenshot={shot}",
                    probed.as_uri()], capture_output=True, text=True, timeout=120)
    return dom.stdout, dom.stderr, Image.open(shot).convert("L")


class _Comparison(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._inside, self._cell = False, None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == "comparison-table":
            self._inside = True
        elif self._inside and tag == "tr":
            self.rows.append([])
        elif self._inside and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._inside = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, text):
        if self._cell is not None:
            self._cell.append(text)


def _assert_loaded(dom: str, stderr: str, shot: Image.Image) -> None:
    probe = dom.split('data-probe="', 1)[1].split('"', 1)[0]
    loaded, rest = probe.split("/", 1)
    total, errors = rest.split(" errors=")
    assert int(total) > 0 and loaded == total and errors == "0", probe
    console = [line for line in stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    pixels = np.asarray(shot, dtype=float)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005   # text and pictures drawn


def test_one_run_page_loads_with_every_image(runs, tmp_path):
    page = tmp_path / "one.html"
    _cli("report", runs["small"], "--out", page)
    dom, stderr, shot = _open(page, tmp_path)
    _assert_loaded(dom, stderr, shot)
    assert "Inference gaps (5 examples" in dom and 'id="comparison-table"' not in dom


def test_comparison_page_holds_the_paired_numbers(runs, tmp_path):
    page = tmp_path / "three.html"
    _cli("report", runs["small"], runs["wider"], runs["bare"], "--out", page)
    dom, stderr, shot = _open(page, tmp_path)
    _assert_loaded(dom, stderr, shot)
    table = _Comparison()
    table.feed(dom)
    header, small, wider, bare = table.rows
    a = json.loads((runs["small"] / "eval.json").read_text())
    b = json.loads((runs["wider"] / "eval.json").read_text())
    assert small[:2] == ["small", "fashion-mnist"] and small[3] == "reference"
    assert small[2] == (f"{a['log_likelihood']['mean']:.3f} ± "
                        f"{a['log_likelihood']['se']:.3f}")
    d = (np.array(b["per_example"]["log_likelihood"])
         - np.array(a["per_example"]["log_likelihood"]))
    assert len(d) == 30
    assert wider[3] == f"{d.mean():.3f} ± {d.std(ddof=1) / math.sqrt(len(d)):.3f}"
    assert bare[2] == "not computed" and bare[3] == "undefined"
    assert "Test evaluation: not computed" in dom   # the bare run says what it lacks


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A four-trial `vaelab tune` study on a small binary table (all trials complete: the
    baseline and three sampled ones, enough for parameter importances)."""
    pytest.importorskip("optuna")
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 2)) @ (2 * rng.normal(size=(2, 10)))
    np.save(root / "table.npy", (rng.random((300, 10)) < 1 / (1 + np.exp(-logits)))
            .astype(np.float32))
    (root / "space.toml").write_text('"net.mlp.hidden.units" = 16\nbatch_size = 32\n'
                                     'family = "diagonal-normal"\nnum_samples = 1\n')
    _cli("tune", "--data", root / "table.npy", "--out", root / "study", "--budget",
         "4-trials", "--epochs", "2", "--space", root / "space.toml", "--pruner", "none",
         "--rerank", "2", "--rerank-k", "5", "--quiet")
    return root / "study"


def test_study_page_loads_with_its_tables_and_curves(study, tmp_path):
    page = tmp_path / "study.html"
    _cli("report", study, "--out", page)
    dom, stderr, shot = _open(page, tmp_path)
    _assert_loaded(dom, stderr, shot)
    summary = json.loads((study / "study.json").read_text())
    for table in ("trials-table", "ranking-table", "importances-table", "space-table"):
        assert f'id="{table}"' in dom, table
    assert f"Trial {summary['best']}, written as the recipe" in dom
