"""Numbers as the book prints them (rlvr_utils.core.fmt): properties over many random value/interval pairs of
every magnitude, and the cases the book got wrong before ('+0.00 [0.00, 0.00]', '0.008 [0.01, 0.01]',
'0.00e+00 [0.00e+00, 0.00e+00]', '1.000000')."""
import math
import re

import numpy as np
import pandas as pd

from rlvr_utils.core import fmt

SUPERSCRIPT = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")
PRINTED = re.compile(r"^([+-]?\d+(?:\.\d+)?) \[([+-]?\d+(?:\.\d+)?), ([+-]?\d+(?:\.\d+)?)\](?: ×10([⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+))?$")


def parse(text: str) -> tuple[float, float, float, int, str]:
    """(value, low, high, power of ten, the value's digits as printed) of 'v [lo, hi]' or 'v [lo, hi] ×10ⁿ'."""
    found = PRINTED.match(text)
    assert found, text
    power = int(found.group(4).translate(SUPERSCRIPT)) if found.group(4) else 0
    return float(found.group(1)), float(found.group(2)), float(found.group(3)), power, found.group(1)


def significant(digits: str) -> int:
    return len(digits.lstrip("+-").replace(".", "").lstrip("0"))


def random_pairs(n: int = 4000, seed: int = 0):
    """(value, [low, high]) with the value inside its interval, magnitudes from 1e-9 to 1e7, either sign, intervals
    from 1e-6 of the value's size to many times it."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        magnitude = 10.0 ** rng.uniform(-9, 7)
        value = magnitude * rng.choice([-1, 1]) * rng.uniform(0.1, 1)
        width = magnitude * 10.0 ** rng.uniform(-6, 1.5)
        low = value - width * rng.uniform(0, 1)
        yield value, [low, low + width]


def test_a_value_inside_its_interval_is_printed_inside_its_printed_interval():
    for value, ci in random_pairs():
        v, lo, hi, _, _ = parse(fmt.interval(value, ci))
        assert lo <= v <= hi, (value, ci, fmt.interval(value, ci))
        assert lo < hi, (value, ci, fmt.interval(value, ci))  # the interval's width survives the rounding


def test_a_value_clearly_away_from_zero_keeps_two_significant_digits():
    for value, ci in random_pairs(seed=1):
        if abs(value) >= (ci[1] - ci[0]) / 2:
            text = fmt.interval(value, ci)
            assert significant(parse(text)[4]) >= 2, (value, ci, text)


def test_the_printed_numbers_are_the_values_at_the_printed_precision():
    for value, ci in random_pairs(500, seed=2):
        v, lo, hi, power, digits = parse(fmt.interval(value, ci))
        places = len(digits.split(".")[1]) if "." in digits else 0
        unit = 10.0 ** (power - places)  # one unit in the last printed place
        for printed, true in ((v, value), (lo, ci[0]), (hi, ci[1])):
            assert abs(printed * 10.0 ** power - true) <= unit / 2 * (1 + 1e-9), (value, ci, v, lo, hi, power)


def test_scientific_notation_only_for_very_small_or_large_numbers():
    assert fmt.interval(0.16, [0.12, 0.2]) == "0.16 [0.12, 0.20]"
    assert fmt.interval(0.0018, [0.0005, 0.003]) == "0.0018 [0.0005, 0.0030]"
    assert fmt.interval(1234.5, [1200, 1300]) == "1234 [1200, 1300]"
    assert fmt.interval(0.002998, [0.002988, 0.003011]) == "2.998 [2.988, 3.011] ×10⁻³"  # not six decimals
    assert fmt.interval(0.99977, [0.99971, 0.99983]) == "0.99977 [0.99971, 0.99983]"  # near 1: decimals, not ×10⁻¹
    for value, ci in random_pairs(seed=3):
        text = fmt.interval(value, ci)
        big = max(abs(value), *map(abs, ci))
        if big < fmt.SMALL or big >= fmt.LARGE:
            assert "×10" in text, (value, ci, text)
        elif big >= 0.1:
            assert "×10" not in text, (value, ci, text)
        if "×10" not in text and big < 0.1:  # small numbers: no run of decimals, a power of ten instead
            assert not re.search(r"\.\d{5,}", text), (value, ci, text)


def test_what_the_book_printed_before():
    direct = fmt.interval(0.0005, [0.0004, 0.0006])  # was '+0.00 [0.00, 0.00]'
    assert direct == "5.0 [4.0, 6.0] ×10⁻⁴", direct
    assert fmt.interval(0.008, [0.0061, 0.0098]) == "0.0080 [0.0061, 0.0098]"  # was '0.008 [0.01, 0.01]'
    assert fmt.observed(0.0, [0.0, 0.0]) == "0"  # was '0.00e+00 [0.00e+00, 0.00e+00]'
    assert fmt.number(1.0) == "1" and fmt.number(0.5) == "0.5" and fmt.number(12) == "12"  # was '1.000000'
    assert fmt.number(0.000123456) == "1.23 ×10⁻⁴" and fmt.number(2.0e-9) == "2 ×10⁻⁹"
    assert fmt.number(123456.0) == "1.23 ×10⁵" and fmt.number(float("nan")) == "—"


def test_signs_units_and_scales():
    assert fmt.interval(0.282, [0.238, 0.328], scale=100, unit=" points", sign=True) == "+28 [+24, +33] points"
    assert fmt.interval(-0.00001, [-0.02, 0.02], sign=True) == "+0.000 [-0.020, +0.020]"  # no '-0.000'
    assert fmt.interval(-0.00001, [-0.02, 0.02]) == "0.000 [-0.020, 0.020]"
    assert fmt.interval(None, [0, 1]) == "not measured" and fmt.observed(None, None) == "—"
    assert fmt.interval(0.5, [None, None]) == "0.5" and fmt.interval(0.5, [0.5, 0.5]) == "0.5"


def test_tables_show_no_index_and_no_long_floats():
    table = pd.DataFrame({"x": [1.0, 0.123456789, 5e-7, math.nan], "name": ["a", "b", "c", None]})
    html = fmt.frame(table).to_html()
    assert "1.000000" not in html and "0.123457" not in html and "0.123" in html and "5 ×10⁻⁷" in html
    assert 'class="row_heading' not in html  # no pandas index column
    pivot = table.set_index("name")
    assert ">name<" in fmt.frame(pivot).to_html()  # an index that carries data stays, as a column
