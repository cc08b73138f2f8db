"""Figure captions that state what a figure shows on this run, with its numbers: never typed by hand.

A chapter's `caption_*` functions sit beside its figure functions and write the takeaway from the same metrics
the figure draws, with these helpers, so a caption reads the way the verdict does: an interval that contains 0
is "no change detected", never a direction. `plots.save(fig, cfg, name, caption=...)` attaches the caption and
the book numbers the figure (rlvr_utils.publish.clean).
"""
from __future__ import annotations

from typing import Iterable, Mapping

from rlvr_utils.core import fmt

# how a caption names the study's stages (treatments.registry's REFERENCE and STUDY; not imported from there, which
# would put every treatment family's params into the fingerprint of each chapter that writes a caption)
STAGE_NAMES = {"sft": "SFT", "rlvr": "RLVR"}


def stage(name: str) -> str:
    """'SFT' for the reference, 'RLVR' for the study; any other name as it is."""
    return STAGE_NAMES.get(name, name)


def _parts(e) -> tuple[float | None, list | None]:
    """(value, ci) of an Estimate or of its JSON form {"value": ..., "ci": [lo, hi]}."""
    if e is None:
        return None, None
    if isinstance(e, Mapping):
        return e.get("value"), e.get("ci")
    return getattr(e, "value", None), getattr(e, "ci", None)


def estimate(e, scale: float = 1.0, unit: str = "", sign: bool = False) -> str:
    """'0.16 [0.12, 0.20]' at the precision its interval supports; 'not measured' when missing."""
    value, ci = _parts(e)
    return fmt.interval(value, ci, scale=scale, unit=unit, sign=sign)


def excludes_zero(e) -> bool:
    """Whether the estimate's interval lies wholly on one side of 0 (an exact nonzero value counts)."""
    value, ci = _parts(e)
    if value is None:
        return False
    if not ci or any(c is None for c in ci):
        return value != 0
    return ci[0] > 0 or ci[1] < 0


def change(e, scale: float = 1.0, unit: str = "", none: str = "no change detected") -> str:
    """A signed change with its interval, or '<none> (…)' when the interval contains 0."""
    shown = estimate(e, scale=scale, unit=unit, sign=True)
    if _parts(e)[0] is None or excludes_zero(e):
        return shown
    return f"{none} ({shown})"


def span(values: Iterable[float], scale: float = 1.0, unit: str = "", sign: bool = False) -> str:
    """'from −4 to +2 points' over the values given (point values), or the one value."""
    shown = sorted(float(v) * scale for v in values if v is not None)
    if not shown:
        return "not measured"
    lo, hi = fmt.number(shown[0], sign=sign), fmt.number(shown[-1], sign=sign)
    return f"{lo}{unit}" if lo == hi else f"from {lo} to {hi}{unit}"


def names(items: Iterable[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items) or "none"
    return ", ".join(items[:-1]) + " and " + items[-1]


def against(e, references: list, singular: str, plural: str, show_range: bool = True) -> str:
    """Where an estimate lies against references' estimates (the placebos', the nulls'): above or below every
    reference's interval, else inside their values' range or overlapping their intervals (never a direction);
    `show_range`: with the references' values."""
    refs = [r for r in references if r and r.get("value") is not None]
    value, ci = (e or {}).get("value"), (e or {}).get("ci")
    if value is None:
        return "not measured"
    if not refs:
        return f"no {singular} measured"
    lo, hi = (ci if ci and None not in ci else (value, value))
    bounds = [r["ci"] if r.get("ci") and None not in r["ci"] else (r["value"], r["value"]) for r in refs]
    values = [r["value"] for r in refs]
    if lo > max(b[1] for b in bounds):
        return f"above every {singular}"
    if hi < min(b[0] for b in bounds):
        return f"below every {singular}"
    where = "inside" if min(values) <= value <= max(values) else "overlapping"
    return f"{where} the {plural}' range" + (f" ({span(values)})" if show_range else "")
