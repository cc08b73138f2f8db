"""The book as one PDF, offline: Jupyter Book's HTML route to PDF (what `jupyter-book build --builder pdfhtml`
does: the book as one HTML page, printed by a headless Chromium through playwright), with a Chromium that is
already on the machine.

Why not `--builder pdfhtml` itself: it launches playwright's own Chromium, which `playwright install chromium`
downloads; a machine with Debian's chromium (what the browser test uses) has everything needed but that download.
Why not LaTeX (`--builder pdflatex`): it needs a TeX distribution (xelatex, several GB), which the machines this
project is run on do not have. The PDF is printed from the run's built book (runs/<name>/book), so it shows the
same chapters as the HTML."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

PDF = Path("_build") / "pdf" / "book.pdf"  # where Jupyter Book's pdfhtml builder puts it
SINGLE = Path("_build") / "singlehtml"  # the whole book as one page, named after the table of contents' root
CHROMIUM_ENV = "RLVR_CHROMIUM"  # a Chromium or Chrome executable, when it is not on PATH under a usual name
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# On top of the theme's print style: Jupyter Book's own (jupyter_book/pdf.py: a cell is not split over two pages);
# no "#" after every heading (it would end each entry of the PDF's outline too); no "Show code cell source" bar,
# a button that does nothing on paper (the HTML book and the notebooks have the code).
PRINT_CSS = """
div.cell_input, div.cell_output { break-inside: avoid; page-break-inside: avoid; }
a.headerlink { display: none !important; }
details.hide.above-input { display: none !important; }
"""


class NoBrowser(RuntimeError):
    """No Chromium to print with."""


def chromium() -> str | None:
    """The Chromium to print with: $RLVR_CHROMIUM, else the first usual name on PATH; None when there is none
    (playwright's own Chromium is then tried)."""
    return os.environ.get(CHROMIUM_ENV) or next(filter(None, map(shutil.which, CANDIDATES)), None)


def print_pdf(html: Path, out: Path) -> Path:
    """Print one HTML page to `out` (A4, the theme's print style, a PDF outline from the headings)."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        raise NoBrowser("the PDF is printed with playwright: pip install playwright (it is in the dev extra: "
                        "make install)") from None
    exe = chromium()
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, args=["--disable-gpu", "--no-first-run"])
        except Error as err:
            raise NoBrowser(f"no Chromium to print the PDF with ({str(err).splitlines()[0]}): install one (Debian: "
                            f"apt-get install chromium; or python -m playwright install chromium, a download), "
                            f"or name it with {CHROMIUM_ENV}=/path/to/chromium") from None
        try:
            page = browser.new_page()
            page.goto(html.resolve().as_uri(), wait_until="networkidle")
            page.add_style_tag(content=PRINT_CSS)
            page.pdf(path=str(out), format="A4", print_background=True, outline=True, tagged=True,
                     margin={"top": "15mm", "bottom": "15mm", "left": "12mm", "right": "12mm"})
        finally:
            browser.close()
    return out


def refuse_unless_built(book_root: Path, params_file: str = "FILE") -> None:
    if not (Path(book_root) / "_build" / "html" / "index.html").is_file():
        raise SystemExit(f"no built book in {book_root}: build it first (make book PARAMS={params_file}, or python -m "
                         f"rlvr_utils run --params {params_file}); the PDF is printed from it")


def build(book_root: Path, params_file: str = "FILE") -> Path:
    """runs/<name>/book/_build/pdf/book.pdf from the run's built book. Refuses, saying what to run, when the
    book has not been built."""
    book_root = Path(book_root)
    refuse_unless_built(book_root, params_file)
    start = time.time()
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book_root), "--builder", "singlehtml",
           "--warningiserror", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"jupyter-book build --builder singlehtml failed:\n{result.stdout[-4000:]}\n"
                         f"{result.stderr[-4000:]}")
    # The one page is written under the root's own path (book/intro.html), but its links to _static/ and
    # _images/ are relative to the output folder: printed from there, it has its style sheets and figures.
    # (index.html only redirects to it.)
    root = yaml.safe_load((book_root / "_toc.yml").read_text())["root"]
    page = shutil.copy2(book_root / SINGLE / f"{root}.html", book_root / SINGLE / "book.html")
    out = print_pdf(Path(page), book_root / PDF)
    print(f"{'pdf':<16} {time.time() - start:7.1f} s", flush=True)
    return out
