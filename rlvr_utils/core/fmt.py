"""Numbers rounded to what their intervals support: a value and its interval share the decimal place of the
interval's half-width, at one significant digit (two when that digit is 1 or 2, as the Particle Data Group
rounds uncertainties)."""
from __future__ import annotations

import math


def decimals(ci) -> int | None:
    """Decimal places an interval supports, or None when it has no width."""
    if ci is None or any(v is None or not math.isfinite(v) for v in ci):
        return None
    half = abs(ci[1] - ci[0]) / 2
    if half == 0:
        return None
    exponent = math.floor(math.log10(half))
    significant = 2 if half / 10 ** exponent < 3 else 1
    return max(0, significant - 1 - exponent)


def interval(value, ci=None, scale: float = 1.0, unit: str = "") -> str:
    """'0.16 [0.12, 0.20]'; `scale=100, unit=' points'` for shares shown in percent. A value without an
    interval keeps three significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    ci = None if ci is None else [None if c is None else c * scale for c in ci]
    d = decimals(ci)
    v = value * scale
    if d is None:
        return f"{v:.3g}{unit}"
    return f"{v:.{d}f} [{ci[0]:.{d}f}, {ci[1]:.{d}f}]{unit}"


def observed(value: float | None, ci) -> str:
    """'0.16 [0.12, 0.2]' with three significant digits, the value alone when exact, '—' when missing."""
    if value is None:
        return "—"
    exact = ci is None or None in ci or ci[0] == ci[1]  # an exact value (a count, a total) has no interval to show
    return f"{value:.3g}" if exact else f"{value:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"
