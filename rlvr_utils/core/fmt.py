"""Numbers as the book prints them: a value and its interval share the decimal place that the interval's
half-width supports (one significant digit of the half-width, two when that digit is 1 or 2, as the Particle Data
Group rounds uncertainties); a value clearly away from zero keeps at least two significant digits; very small or
very large numbers share one power of ten (`5.2 [4.1, 6.3] ×10⁻⁴`) instead of printing `0.00 [0.00, 0.00]`.

Rounding to one decimal place is monotone, so a value inside its interval is printed inside its printed interval;
a value outside it stays outside (that is a property of the estimate, and the book's browser test flags it).
Exact values (counts, a deterministic function of the checkpoints) print alone, with three significant digits
and no trailing zeros (`1`, not `1.000000`).
"""
from __future__ import annotations

import math

SMALL, LARGE = 1e-3, 1e5  # magnitudes below / from which a power of ten is factored out
MAX_PLACES = 4  # more decimals than this below 0.1: a power of ten instead of a run of leading zeros
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _finite(x) -> bool:
    return x is not None and not isinstance(x, bool) and math.isfinite(float(x))


def _fixed(x: float, places: int, sign: bool = False) -> str:
    text = f"{x:{'+' if sign else ''}.{max(0, places)}f}"
    if float(text) == 0:  # no '-0.00'; '+0.00' only when a sign is asked for
        text = text.replace("-", "+" if sign else "", 1)
    return text


def _exponent(x: float) -> int:
    return math.floor(math.log10(abs(x)))


def decimals(ci) -> int | None:
    """Decimal places an interval supports, or None when it has no width (may be negative: tens, hundreds)."""
    if ci is None or len(ci) != 2 or not all(_finite(v) for v in ci):
        return None
    half = abs(float(ci[1]) - float(ci[0])) / 2
    if half == 0:
        return None
    exponent = _exponent(half)
    significant = 2 if half / 10 ** exponent < 3 else 1
    return significant - 1 - exponent


def _power(*values: float, places: int = 0) -> int:
    """The power of ten to factor out of numbers printed together (0: print them as they are): below 1e-3 or
    from 1e5, and below 0.1 when they need more than MAX_PLACES decimals (0.002998 [0.002988, 0.003011] reads
    better as 2.998 [2.988, 3.011] ×10⁻³)."""
    big = max(abs(v) for v in values)
    if big == 0 or (SMALL <= big < LARGE and not (big < 0.1 and places > MAX_PLACES)):
        return 0
    return _exponent(big)


def _times(power: int) -> str:
    return "" if power == 0 else f" ×10{str(power).translate(_SUPERSCRIPT)}"


def number(value, digits: int = 3, sign: bool = False) -> str:
    """One number without an interval: `digits` significant digits, no trailing zeros, integers as integers,
    a power of ten only for magnitudes below 1e-3 or from 1e5; '—' when missing."""
    if not _finite(value):
        return "—"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < LARGE:
        return f"{int(value):{'+' if sign else ''}d}"
    v = float(value)
    power = _power(v)
    scaled = v / 10 ** power
    places = digits - 1 - _exponent(scaled)
    text = _fixed(scaled, places, sign)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + _times(power)


def _places(v: float, lo: float, hi: float) -> int:
    """Decimals of a value and its interval: what the interval supports, and two significant digits at least
    for a value clearly away from zero."""
    places = decimals((lo, hi))
    if v != 0 and abs(v) >= abs(hi - lo) / 2:
        places = max(places, 1 - _exponent(v))
    return places


def interval(value, ci=None, scale: float = 1.0, unit: str = "", sign: bool = False) -> str:
    """'0.16 [0.12, 0.20]' at the precision the interval supports; `scale=100, unit=' points'` for shares shown
    in percent; `sign=True` for differences (+/-). A value without an interval keeps three significant digits;
    'not measured' when there is no value."""
    if not _finite(value):
        return "not measured"
    v = float(value) * scale
    bounds = None if ci is None else [float(c) * scale if _finite(c) else None for c in ci]
    places = decimals(bounds)
    if places is None:
        return number(v, sign=sign) + unit
    lo, hi = bounds
    power = _power(v, lo, hi, places=_places(v, lo, hi))
    v, lo, hi = (x / 10 ** power for x in (v, lo, hi))
    places = _places(v, lo, hi)
    return (f"{_fixed(v, places, sign)} [{_fixed(lo, places, sign)}, {_fixed(hi, places, sign)}]"
            f"{_times(power)}{unit}")


def observed(value: float | None, ci) -> str:
    """A value with its interval as `interval` prints it; the value alone when exact; '—' when missing."""
    if not _finite(value):
        return "—"
    return interval(value, ci)


def frame(table, caption: str | None = None, **formats):
    """A pandas DataFrame as the book shows it: no index column, numbers through `number` (or a per-column
    callable in `formats`), text left-aligned so long cells wrap instead of widening the page."""
    import pandas as pd

    def cell(x):
        if isinstance(x, str) or x is None:
            return "—" if x is None else breakable(x)
        if isinstance(x, (bool,)):
            return "yes" if x else "no"
        if isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x)):
            return number(x)
        return "—" if isinstance(x, float) else str(x)

    styler = (table.reset_index(drop=not _named_index(table)) if isinstance(table, pd.DataFrame) else table).style
    styler = styler.format(cell).format_index(lambda c: breakable(str(c)), axis=1)
    if formats:
        styler = styler.format(formats)
    styler = styler.hide(axis="index").set_properties(**{"text-align": "left"})
    return styler.set_caption(caption) if caption else styler


def breakable(text: str) -> str:
    """Text for an HTML table cell: escaped, with a line-break opportunity after each '_' and '/', so that an
    identifier such as representation_hybrid_matched wraps at its parts in a narrow column."""
    import html

    return html.escape(text, quote=False).replace("_", "_<wbr>").replace("/", "/<wbr>")


def _named_index(table) -> bool:
    """An index that carries data (a pivot's rows, named levels) becomes columns; a default range is dropped."""
    import pandas as pd

    return not isinstance(table.index, pd.RangeIndex) and any(n is not None for n in table.index.names)


def value(value, ci=None) -> str:
    """The value alone at the precision its interval supports, as `interval` prints it (for a heatmap's cells,
    where the interval does not fit); '—' when missing."""
    if not _finite(value):
        return "—"
    text = interval(value, ci)
    return text.split(" [")[0] + (text[text.index(" ×10"):] if " ×10" in text else "")
