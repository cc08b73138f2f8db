"""What a reader sees on each page of the built book, measured in a real browser at a window width: tables
wider than the text column, figure text smaller than 8 px at the size the page renders it, empty figures and
panels, values printed outside their own printed interval, intervals rounded to no width, over-long floats and
pandas index columns. tests/test_browser.py fails on these; run this file to measure any built book:

    python tests/page_audit.py runs/default/book/_build/html            # a table per page and width
    python tests/page_audit.py HTML --json before.json                  # the measurements as data

Figure text is read from the PNG itself: rlvr_utils.core.plots.save records the smallest font (in pixels of the
image) and the number of empty panels in the file's text chunks; the rendered size is that times the width the
page shows the image at over its natural width. An image without the record is reported as unchecked.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

WIDTHS = (1280, 400)  # a laptop window and a phone
MIN_TEXT_PX = 8.0
MIN_FONT_KEY, EMPTY_KEY = "rlvr:min_font_px", "rlvr:empty_panels"  # as rlvr_utils.core.plots writes them

_NUMBER = r"[+\-−]?\d+(?:\.\d+)?"
# 'v [lo, hi]' with an optional shared power of ten, as rlvr_utils.core.fmt prints it (and as older pages did)
PRINTED_INTERVAL = re.compile(rf"(?<![\w.\]])({_NUMBER})(%?)\s*\[({_NUMBER})%?,\s*({_NUMBER})%?\]")
LONG_FLOAT = re.compile(r"(?<![\w.])\d+\.\d{6,}(?![\w.])")

MEASURE = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const column = article.clientWidth;
  const tables = Array.from(article.querySelectorAll('table')).map(t => {
    let box = t.parentElement;
    while (box && box !== article && getComputedStyle(box).overflowX === 'visible') box = box.parentElement;
    const heads = Array.from(t.querySelectorAll('thead th')).map(h => h.innerText.trim());
    const rowHeads = Array.from(t.querySelectorAll('tbody th')).map(h => h.innerText.trim());
    const caption = t.querySelector('caption');
    return {width: Math.round(t.getBoundingClientRect().width), box: Math.min(box ? box.clientWidth : column, column),
            columns: heads.length, label: (caption ? caption.innerText : heads.slice(0, 3).join(' | ')).slice(0, 60),
            index: rowHeads.length > 0 && rowHeads.every((h, i) => h === String(i)) || (heads[0] === '' && rowHeads.length > 0)};
  });
  const images = Array.from(article.querySelectorAll('img')).filter(i => i.naturalWidth > 0).map(i => ({
    src: i.getAttribute('src'), natural: i.naturalWidth, rendered: i.getBoundingClientRect().width}));
  return {column: column, tables: tables, images: images, text: article.innerText};
}"""


def png_record(path: Path) -> dict:
    """The text chunks plots.save wrote into a figure (empty for images made otherwise)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            info = dict(getattr(image, "text", {}) or {})
            blank = _blank(image)
    except (OSError, ValueError):
        return {}
    info["blank"] = blank
    return info


def _blank(image) -> bool:
    """An image of one colour: nothing drawn at all."""
    extrema = image.convert("L").getextrema()
    return extrema[1] - extrema[0] < 8


def intervals_problems(text: str) -> list[str]:
    """Values printed outside their printed interval, intervals rounded to no width, and over-long floats."""
    problems = []
    for found in PRINTED_INTERVAL.finditer(text):
        v, lo, hi = (float(found.group(i).replace("−", "-")) for i in (1, 3, 4))
        shown = found.group(0)
        if not lo <= v <= hi:
            problems.append(f"value outside its printed interval: {shown!r}")
        elif lo == hi and v == lo and "." in found.group(3):
            problems.append(f"interval rounded to no width: {shown!r}")
    problems += [f"over-long number {m.group(0)!r}" for m in LONG_FLOAT.finditer(text)]
    return problems


def page_problems(measured: dict, html: Path, page_url: str, assume: tuple[float, float] | None = None
                  ) -> tuple[list[str], dict]:
    """(problems, summary) of one page measured at one width. `assume`: (points, dpi) taken as the smallest
    text of a figure that recorded none (a book built before plots.save recorded it), as an estimate."""
    problems, summary = [], {"column": measured["column"]}
    widest = max(measured["tables"], key=lambda t: t["width"] - t["box"], default=None)
    summary["widest_table"] = f"{widest['width']}/{widest['box']}" if widest else "—"
    for t in measured["tables"]:
        if t["width"] > t["box"] + 1:
            problems.append(f"table {t['label']!r} is {t['width']} px wide in a {t['box']} px column")
        if t["index"]:
            problems.append(f"table {t['label']!r} shows a pandas index column")
    smallest, empty, unchecked = None, 0, 0
    for image in measured["images"]:
        path = html / unquote(urlparse(page_url).path).lstrip("/")
        path = (path.parent / unquote(image["src"])).resolve()
        record = png_record(path)
        name = Path(image["src"]).name
        if record.get("blank"):
            empty += 1
            problems.append(f"figure {name} is blank")
        if EMPTY_KEY in record and int(record[EMPTY_KEY]):
            empty += 1
            problems.append(f"figure {name} has {record[EMPTY_KEY]} empty panel(s)")
        if MIN_FONT_KEY not in record and assume is None:
            unchecked += 1
            continue
        natural_px = float(record[MIN_FONT_KEY]) if MIN_FONT_KEY in record else assume[0] * assume[1] / 72
        px = natural_px * image["rendered"] / image["natural"]
        smallest = px if smallest is None else min(smallest, px)
        if px < MIN_TEXT_PX:
            problems.append(f"figure {name}: smallest text {px:.1f} px at {image['rendered']:.0f} of "
                            f"{image['natural']} px")
    summary.update(smallest_font=None if smallest is None else round(smallest, 1), empty_figures=empty,
                   unchecked_figures=unchecked, figures=len(measured["images"]))
    text_problems = intervals_problems(measured["text"])
    summary["outside_interval"] = sum("outside" in p for p in text_problems)
    return problems + text_problems, summary


def pages(html: Path) -> list[str]:
    skip = {"genindex.html", "search.html", "index.html"}  # index.html only redirects to the intro
    return sorted(str(p.relative_to(html)) for p in html.rglob("*.html")
                  if p.name not in skip and "_static" not in p.parts and "_sources" not in p.parts)


def serve(html: Path):
    """(server, base URL) of a local HTTP server of the built book (stop it with server.shutdown())."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # one line per request would bury the report
            pass

    handler = functools.partial(Quiet, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def audit(browser, html: Path, base: str, widths=WIDTHS, shots: Path | None = None, assume=None) -> dict:
    """{page: {width: {"problems": [...], "summary": {...}}}} of every page of the book at every width."""
    out = {}
    for rel in pages(html):
        out[rel] = {}
        for width in widths:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(base + rel, wait_until="load")
            measured = page.evaluate(MEASURE)
            problems, summary = page_problems(measured, html, base + rel, assume)
            if shots is not None:
                shots.mkdir(parents=True, exist_ok=True)
                name = rel.replace("/", "__").removesuffix(".html")
                page.screenshot(path=str(shots / f"{name}@{width}.png"), full_page=True)
            page.close()
            out[rel][width] = {"problems": problems, "summary": summary}
    return out


def report(results: dict) -> str:
    """One line per page and width: widest table / its column, smallest figure text, empty figures, values
    outside their interval, and the number of problems."""
    lines = ["| page | width | widest table / column (px) | smallest figure text (px) | empty figures | "
             "outside interval | problems |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for rel, by_width in results.items():
        for width, r in by_width.items():
            s = r["summary"]
            font = "—" if s["smallest_font"] is None else s["smallest_font"]
            if s["unchecked_figures"]:
                font = f"{font} ({s['unchecked_figures']} of {s['figures']} unrecorded)"
            lines.append(f"| {rel.removeprefix('book/').removesuffix('.html')} | {width} | {s['widest_table']} | "
                         f"{font} | {s['empty_figures']} | {s['outside_interval']} | {len(r['problems'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, help="the built book's HTML folder (…/_build/html)")
    parser.add_argument("--json", type=Path, help="also write every measurement and problem to this file")
    parser.add_argument("--shots", type=Path, help="save a full-page screenshot per page and width here")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    parser.add_argument("--assume", type=float, nargs=2, metavar=("POINTS", "DPI"),
                        help="estimate the smallest text of figures that recorded none as POINTS at DPI")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    server, base = serve(args.html)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--headless", "--no-sandbox"])
            results = audit(browser, args.html.resolve(), base, shots=args.shots, assume=args.assume)
            browser.close()
    finally:
        server.shutdown()
    print(report(results))
    for rel, by_width in results.items():
        for width, r in by_width.items():
            for problem in r["problems"]:
                print(f"{rel} @{width}: {problem}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
