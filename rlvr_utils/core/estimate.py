"""The typed number every instrument reports: a value with its interval, the kind of interval, and how many
units it was computed from. In the metrics files an Estimate is `{"value", "ci", "interval", "n"}`; the verdict
reads `value` and `ci` and trusts `interval` to say what the interval means.

Kinds of interval:
  - 'bootstrap': percentile bootstrap over problems (or matrices, or tokens' problems): sampling uncertainty;
  - 'seeds': the range (min, max) over independently seeded fits: a spread, not a confidence interval;
  - 'exact': no sampling involved (a count, a deterministic function of the checkpoints): ci = [value, value];
  - 'none': nothing could be computed (value None): a zero update's share, too few problems.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

IntervalKind = Literal["bootstrap", "seeds", "exact", "none"]
KINDS = ("bootstrap", "seeds", "exact", "none")


def _number(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Estimate:
    value: float | None
    ci: tuple[float | None, float | None] = (None, None)
    interval: IntervalKind = "bootstrap"
    n: int | None = None  # problems (or seeds, matrices) the interval resamples; None when not known

    def __post_init__(self):
        if self.interval not in KINDS:
            raise ValueError(f"interval={self.interval!r}: expected one of {KINDS}")
        object.__setattr__(self, "value", _number(self.value))
        lo, hi = (tuple(self.ci) + (None, None))[:2]
        object.__setattr__(self, "ci", (_number(lo), _number(hi)))

    @classmethod
    def undefined(cls, n: int | None = None) -> "Estimate":
        """Nothing to report (a share of a zero update, too few problems): read as 'not measured'."""
        return cls(None, (None, None), "none", n)

    @classmethod
    def exact(cls, value) -> "Estimate":
        return cls(value, (value, value), "exact")

    @property
    def defined(self) -> bool:
        return self.value is not None and None not in self.ci

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "ci": list(self.ci), "interval": self.interval, "n": self.n}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Estimate":
        """Read an estimate from a metrics file; files written before intervals were typed say nothing of their
        kind, and are read as bootstrap intervals, which they were."""
        return cls(data.get("value"), tuple(data.get("ci") or (None, None)), data.get("interval", "bootstrap"),
                   data.get("n"))


def estimates_json(block: Mapping[str, Mapping[str, "Estimate | Mapping"]]) -> dict:
    """{treatment: {key: Estimate}} as JSON; a plain {value, ci} dict is refused, so every number an instrument
    hands the verdict says what kind of interval it carries."""
    out = {}
    for treatment, measures in block.items():
        out[treatment] = {}
        for key, est in measures.items():
            if not isinstance(est, Estimate):
                raise TypeError(f"variants[{treatment!r}][{key!r}] is a {type(est).__name__}, not an Estimate: "
                                "instruments report typed estimates (rlvr_utils.core.estimate.Estimate)")
            out[treatment][key] = est.to_json()
    return out
