"""The book as a PDF (`make pdf`): printed offline from the built book by the machine's Chromium, with the
theme's style sheets and the figures (the one-page HTML's relative links resolve), an outline of the book's
headings, and no navigation bar; before the book is built it refuses and says what to run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_utils.publish import pdf

pytestmark = pytest.mark.slow  # two Jupyter Book builds and a print: about half a minute

FIGURE = (6, 5)  # a figure of its own size: a missing one prints as a 14x16 broken-image sign
CONFIG = """title: A tiny book
author: Someone
only_build_toc_files: true
execute:
  execute_notebooks: "off"
"""
TOC = """format: jb-book
root: book/intro
parts:
  - caption: The captions of the navigation bar
    chapters:
      - file: book/chapter
"""


def _outline(pdf_bytes: bytes) -> list[str]:
    """The titles of the PDF's outline entries (and its document title): literal or UTF-16 hex strings."""
    titles = []
    for raw in re.findall(rb"/Title (\((?:[^()\\]|\\.)*\)|<[0-9A-Fa-f]+>)", pdf_bytes):
        text = raw.decode("latin-1")
        titles.append(bytes.fromhex(text[1:-1]).decode("utf-16") if text.startswith("<") else text[1:-1])
    return titles


@pytest.fixture
def tiny_book(tmp_path):
    root = tmp_path / "book_root"
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text(CONFIG)
    (root / "_toc.yml").write_text(TOC)
    (root / "book" / "intro.md").write_text("# The tiny introduction\n\nSome words.\n")
    from PIL import Image  # matplotlib's own dependency

    Image.new("RGB", FIGURE, (200, 30, 30)).save(root / "book" / "figure.png")
    long = "\n\n".join(f"Paragraph {i} of a chapter long enough for a second page." for i in range(80))
    (root / "book" / "chapter.md").write_text(f"# The tiny chapter\n\n![a figure](figure.png)\n\n{long}\n")
    return root


def test_the_pdf_is_refused_before_the_book_is_built_and_says_what_to_run(tiny_book):
    with pytest.raises(SystemExit, match=r"no built book in .*: build it first \(make book PARAMS=params/x.yaml, "
                                         r"or python -m rlvr_utils run --params params/x.yaml\)"):
        pdf.build(tiny_book, "params/x.yaml")
    assert not (tiny_book / pdf.PDF).exists()


def test_the_built_book_prints_to_a_pdf_with_its_figures_and_an_outline(tiny_book):
    if not pdf.chromium():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium: see .ci/run")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    html = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(tiny_book),
                           "--warningiserror", "--quiet"], capture_output=True, text=True)
    assert html.returncode == 0, html.stdout[-2000:] + html.stderr[-2000:]
    out = pdf.build(tiny_book)
    assert out == tiny_book / pdf.PDF
    data = out.read_bytes()
    assert data.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) >= 2
    assert re.search(rb"/Subtype\s*/Image\s*/Width %d\s*/Height %d" % FIGURE, data), \
        "the figure is missing: the page's relative links did not resolve"
    titles = _outline(data)
    assert {"The tiny introduction", "The tiny chapter"} <= set(titles), titles
    assert not any(t.endswith("#") for t in titles), titles  # the headings' permalink signs are hidden
    assert "The captions of the navigation bar" not in titles  # the theme's print style hides the navigation


def test_the_run_s_book_prints_with_every_chapter(built_book):
    """The end-to-end book (params/ci.yaml) as `make pdf` prints it: the one-page build passes with warnings as
    errors over the real chapters, and the PDF's outline has every chapter of the table of contents."""
    if not pdf.chromium():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium: see .ci/run")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    import nbformat

    book_root = built_book[1]
    data = pdf.build(book_root, str(built_book[0])).read_bytes()
    titles = {t.replace("\u2019", "'") for t in _outline(data)}  # Sphinx's smart quotes
    chapters = sorted((book_root / "book" / "executed").glob("[0-9][0-9]_*.ipynb"))
    assert len(chapters) >= 10
    for chapter in chapters:
        heading = next(line.lstrip("# ").strip() for cell in nbformat.read(chapter, as_version=4).cells
                       if cell.cell_type == "markdown" for line in cell.source.splitlines() if line.startswith("# "))
        # the outline has the heading's text, not its markup; where a heading wraps on the page Chromium's outline drops
        # the space and repeats the first line ('04 · Extract activations on a shared04 · Extract ...'), so compare
        # the start of the first line only, without whitespace (enough to tell the chapters apart)
        heading = re.sub(r"\s", "", re.sub(r"[`*]", "", heading))[:16]
        assert any(re.sub(r"\s", "", t).startswith(heading) for t in titles), (chapter.name, heading, sorted(titles)[:20])
    assert len(re.findall(rb"/Type\s*/Page\b", data)) > len(chapters)
