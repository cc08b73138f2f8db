"""The page checks of the browser test (tests/page_audit.py) can fail: they flag what the book printed before."""
import page_audit


def test_page_checks_can_fail(tmp_path):
    """The page checks flag what the book printed before: a value outside its rounded interval, an interval
    rounded to no width, long floats, a table wider than its column, text too small once the image is scaled
    to the column, empty panels; and pass what it prints now."""
    assert page_audit.intervals_problems("0.008 [0.01, 0.01]")
    assert page_audit.intervals_problems("+0.00 [0.00, 0.00]") and page_audit.intervals_problems("x 1.000000 y")
    assert not page_audit.intervals_problems("0.0080 [0.0061, 0.0098]; 5.0 [4.0, 6.0] ×10⁻⁴; layers [0, 3]")
    assert not page_audit.intervals_problems("+28 [+24, +33] points; 0.5 [−0.2, 0.9]")
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(page_audit.MIN_FONT_KEY, "17.5")
    info.add_text(page_audit.EMPTY_KEY, "1")
    image = Image.new("RGB", (800, 400), "white")
    image.putpixel((10, 10), (0, 0, 0))
    image.save(tmp_path / "fig.png", pnginfo=info)
    (tmp_path / "page.html").write_text("")
    measured = {"column": 360, "text": "",
                "tables": [{"width": 900, "box": 360, "columns": 12, "label": "wide", "index": True}],
                "images": [{"src": "fig.png", "natural": 800, "rendered": 360}]}
    problems, summary = page_audit.page_problems(measured, tmp_path, "http://h/page.html")
    assert any("900 px wide" in p for p in problems) and any("index column" in p for p in problems)
    assert any("smallest text 7.9 px" in p for p in problems) and any("empty panel" in p for p in problems)
    assert summary["smallest_font"] == 7.9 and summary["empty_figures"] == 1
