"""The docs site (README, "The docs site"): it builds with warnings and broken references as errors, no page
loads anything from the network, and in a real browser (headless Chromium) the math of the LSTM and attention
pages (and of every other layer page) renders. Skipped without Sphinx (the ``docs`` extra) or without Chromium
(Debian's ``chromium``).

SCRATCHLM_DOCS_SCREENSHOTS=1 also writes the two pages' screenshots over docs/lstm_page.png and
docs/attention_page.png.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"lstm": "api/layers/lstm.html", "attention": "api/layers/attention.html"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for name in ("sphinx", "myst_parser", "sphinxarg"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("docs") / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html", "docs", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium (apt-get install -y chromium)")


def _browser(*args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def test_no_page_loads_from_the_network(site):
    """Scripts, stylesheets, images and fonts all come from the site itself (links to elsewhere are fine)."""
    loads = re.compile(r"""<(?:script|img|iframe)[^>]*\ssrc=["']?(?:https?:)?//|<link[^>]*\shref=["']?(?:https?:)?//""")
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert not loads.search(html), f"{page.relative_to(site)} loads from the network"
    assert (site / "_static/mathjax/tex-chtml.js").is_file()
    fonts = list((site / "_static/mathjax/output/chtml/fonts/woff-v2").glob("*.woff"))
    assert fonts, "MathJax's fonts are not in the site"


def _check_rendered(path):
    """Open the page at ``path`` in headless Chromium: every math block became a MathJax formula, no raw TeX is
    left in the text and MathJax reported no TeX error."""
    run = _browser("--dump-dom", path.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert "<mjx-container" in dom, f"MathJax rendered no formula on {path.name}"
    body = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)  # MathJax's configuration and CSS
    for raw_tex in (r"\frac", r"\tilde", r"\odot", "$$", r"\[", r"\begin{split}"):
        assert raw_tex not in body, f"raw TeX {raw_tex!r} left on {path.name}"
    formulas = body.count("<mjx-container")
    assert formulas >= body.count('class="math') // 2  # every displayed math block became a formula
    assert "<mjx-merror" not in body, f"MathJax reported a TeX error on {path.name}"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_math_renders_in_chromium(site, page, tmp_path):
    url = (site / PAGES[page]).as_uri()
    raw = (site / PAGES[page]).read_text(encoding="utf-8")
    assert r"\frac" in raw or r"\tilde" in raw  # the page has TeX for MathJax to render
    _check_rendered(site / PAGES[page])

    shot = tmp_path / f"{page}_page.png"
    run = _browser("--window-size=1280,1800", f"--screenshot={shot}", url)
    assert run.returncode == 0 and shot.stat().st_size > 10_000, run.stderr[-2000:]
    if os.environ.get("SCRATCHLM_DOCS_SCREENSHOTS"):
        shutil.copyfile(shot, ROOT / "docs" / f"{page}_page.png")


def test_every_layer_page_renders_its_math(site):
    """Every layer's page with math (forward and backward equations) renders it in Chromium."""
    pages = sorted((site / "api" / "layers").glob("*.html"))
    with_math = [p for p in pages if 'class="math' in p.read_text(encoding="utf-8")]
    assert len(with_math) >= 12, [p.name for p in with_math]
    for path in with_math:
        _check_rendered(path)
