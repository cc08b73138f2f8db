"""The rendered book in a real browser: every page loads with its images, working internal links, no error
output and no console error; no raw-pipe table, warning, progress bar or absolute path of the building machine
in what a reader sees, and every figure numbered with a caption. At a laptop's 1280 px and a phone's 400 px
(tests/page_audit.py): no table wider than the text column, no figure text under 8 px as rendered, no empty
figure or panel, no value outside its printed interval. Screenshots of every page and width land in
tests/output/screenshots/, the measurements per page in tests/output/page_audit.md."""
import functools
import http.server
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

import page_audit

pytestmark = pytest.mark.slow  # end-to-end: minutes (make test-fast leaves it out)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]
SHOTS = Path(__file__).parent / "output" / "screenshots"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must install Debian's chromium ({CHROMIUM} missing): see .ci/run")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(built_book):
    html = built_book[1] / "_build" / "html"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield html, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _pages(html: Path) -> list[str]:
    skip = {"genindex.html", "search.html", "index.html"}  # index.html only redirects to the intro
    return sorted(str(p.relative_to(html)) for p in html.rglob("*.html")
                  if p.name not in skip and "_static" not in p.parts and "_sources" not in p.parts)


def test_every_page_renders_cleanly(browser, site):
    html, base = site
    pages = _pages(html)
    assert "book/intro.html" in pages and any("10_verdict" in p for p in pages)
    landing = browser.new_page()
    landing.goto(base + "index.html")
    landing.wait_for_url("**/book/intro.html")
    landing.close()
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems = []
    for rel in pages:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        console, failed = [], []
        # A failed load is reported with its URL; the console's copy of it has none. Chromium asks every new
        # site for /favicon.ico, which the book never references.
        page.on("console", lambda m: console.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        page.on("pageerror", lambda e: console.append(str(e)))
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
        response = page.goto(base + rel, wait_until="load")
        if response is None or response.status != 200:
            problems.append(f"{rel}: HTTP {response and response.status}")
        broken = page.eval_on_selector_all("img", "imgs => imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        problems += [f"{rel}: broken image {src}" for src in broken]
        errors = page.eval_on_selector_all(".output.error, .output.traceback, .cell_output .traceback",
                                           "els => els.map(e => e.innerText.slice(0, 200))")
        problems += [f"{rel}: error output {e!r}" for e in errors]
        for href in page.eval_on_selector_all("a[href]", "as => as.map(a => a.getAttribute('href'))"):
            target = urlparse(urljoin(base + rel, href))
            if target.netloc != urlparse(base).netloc or target.scheme not in ("http", "https"):
                continue
            path = html / target.path.lstrip("/")
            if not (path.is_file() or (path / "index.html").is_file()):
                problems.append(f"{rel}: broken link {href}")
        problems += [f"{rel}: console error {c}" for c in console]
        problems += [f"{rel}: failed request {f}" for f in failed]
        page.screenshot(path=str(SHOTS / (rel.replace("/", "__").removesuffix(".html") + ".png")), full_page=True)
        page.close()
    assert not problems, "\n".join(problems)


def test_chapters_show_their_figures(browser, site):
    html, base = site
    for rel in _pages(html):
        if "executed/0" not in rel:
            continue
        page = browser.new_page()
        page.goto(base + rel, wait_until="load")
        n_images = page.eval_on_selector_all(".cell_output img", "imgs => imgs.length")
        page.close()
        assert n_images >= 1, f"{rel} shows no figure"


PIPE_ROW = re.compile(r"^\s*\|.*\|\s*$")
PIPE_SEP = re.compile(r"^\s*\|(\s*:?-{3,}:?\s*\|)+\s*$")
CLUTTER = re.compile(r"\b\w*Warning\b|\d+%\|| \d+(\.\d+)?(it/s|s/it)\]|Traceback|\bINFO\b|PosixPath\(")


def clutter(texts: list[str], body: str, machine_paths: list[str]) -> list[str]:
    """What a reader should never see: raw-pipe tables and warnings, progress bars or logging in outputs, and
    absolute paths of the machine that built the book anywhere on the page."""
    problems = []
    for text in texts:
        lines = text.splitlines()
        if any(PIPE_ROW.match(a) and PIPE_SEP.match(b) for a, b in zip(lines, lines[1:])):
            problems.append(f"raw-pipe table {text[:80]!r}")
        found = CLUTTER.search(text)
        if found:
            problems.append(f"warning, progress bar or log line {found.group(0)!r} in {text[:80]!r}")
    problems += [f"absolute path {p!r} of the building machine" for p in machine_paths if p in body]
    return problems


def test_clutter_check_can_fail():
    assert clutter(["| a | b |\n| --- | --- |\n| 1 | 2 |"], "", [])
    assert clutter(["FutureWarning: x"], "", []) and clutter([" 50%|#####     | 5/10"], "", [])
    assert clutter([], "saved /home/me/project/runs/x.png", ["/home/me/project"])
    assert not clutter(["accuracy 0.16 [0.12, 0.20]"], "runs/ci/figures/x.png", ["/home/me/project"])


def test_pages_show_no_clutter_and_numbered_figures(browser, site, built_book):
    html, base = site
    machine = [str(ROOT), str(built_book[1].parent), tempfile.gettempdir() + "/"]
    if str(Path.home()) not in ("/", ""):
        machine.append(str(Path.home()) + "/")
    problems = []
    for rel in _pages(html):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + rel, wait_until="load")
        texts = page.eval_on_selector_all(
            ".cell_output", "els => els.map(e => Array.from(e.querySelectorAll('pre, p, .output'))"
            ".filter(x => !x.closest('table')).map(x => x.innerText).join('\\n'))")
        body = page.eval_on_selector("article, main, body", "e => e.innerText")
        problems += [f"{rel}: {p}" for p in clutter(texts, body, machine)]
        problems += [f"{rel}: stderr output shown" for _ in page.query_selector_all(".cell_output .stderr")]
        unnumbered = page.eval_on_selector_all(".cell_output img", """imgs => imgs.filter(i => {
            const f = i.closest('figure');
            const c = f && f.querySelector('figcaption');
            return !c || !c.querySelector('.caption-number') || c.innerText.trim().length < 12;
        }).map(i => i.src.slice(-40))""")
        problems += [f"{rel}: figure without a number and caption {src}" for src in unnumbered]
        page.close()
    assert not problems, "\n".join(problems)


def test_every_page_fits_a_laptop_and_a_phone(browser, site):
    """At 1280 px and 400 px: no table wider than the text column, no figure text below 8 px as rendered, no
    blank figure or empty panel, no value outside its printed interval, no interval rounded to no width, no
    over-long float, no pandas index column. The measurements per page go to tests/output/page_audit.md."""
    html, base = site
    results = page_audit.audit(browser, html, base, shots=SHOTS)
    (SHOTS.parent / "page_audit.md").write_text(page_audit.report(results) + "\n")
    problems = [f"{rel} @{width}: {p}" for rel, by_width in results.items() for width, r in by_width.items()
                for p in r["problems"]]
    unrecorded = [f"{rel} @{width}: {r['summary']['unchecked_figures']} figure(s) without a font record"
                  for rel, by_width in results.items() for width, r in by_width.items()
                  if r["summary"]["unchecked_figures"] and "executed/" in rel]
    assert not problems + unrecorded, "\n".join(problems + unrecorded)
