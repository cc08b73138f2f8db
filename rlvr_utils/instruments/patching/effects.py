"""Patching results as estimates over problems: effects in nats with bootstrap intervals, and normalised
effects.

A normalised effect is computed on the aggregate metric, (mean patched - mean receiver) / (mean donor - mean
receiver) (Heimersheim and Nanda 2024), with a paired bootstrap over problems; it is reported only when the
denominator's interval excludes 0. No problem is dropped; every report says how many problems it rests on.
"""
from __future__ import annotations

import numpy as np

from rlvr_utils.core import stats
from rlvr_utils.instruments.patching.core import COMPONENT_SITES, DirectResult, SweepResult


def mean_ci(values, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean over problems with a bootstrap interval; NaN without problems."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return {"value": float("nan"), "ci": None}
    return stats.bootstrap(values, np.mean, n_bootstrap, confidence, seed)


def distinguishable(estimate: dict) -> bool:
    """True when an interval exists and excludes 0."""
    ci = estimate.get("ci")
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def normalised(patched, receiver, donor, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """(mean patched - mean receiver) / (mean donor - mean receiver) on the aggregate metric, paired bootstrap
    over problems (0 = the receiver unchanged, 1 = the donor's behaviour). NaN with a "note" when the
    denominator's own interval contains 0."""
    table = np.column_stack([np.asarray(x, dtype=float) for x in (patched, receiver, donor)])
    gap = mean_ci(table[:, 2] - table[:, 1], n_bootstrap, confidence, seed)
    if not distinguishable(gap):
        return {"value": float("nan"), "ci": None, "note": "donor - receiver gap not distinguishable from zero"}

    def ratio(rows):
        patched_mean, receiver_mean, donor_mean = rows.mean(axis=0)
        return (patched_mean - receiver_mean) / (donor_mean - receiver_mean) if donor_mean != receiver_mean else np.nan

    return stats.bootstrap(table, ratio, n_bootstrap, confidence, seed)


def patch_rows(result: SweepResult, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """Per patch: total effect in nats (mean patched - mean receiver) and its normalised value."""
    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return [{"site": p.site, "layers": list(p.layers), "positions": p.positions, "n_problems": len(result.receiver),
             "effect": mean_ci(result.patched[:, j] - result.receiver, **boot),
             "normalised": normalised(result.patched[:, j], result.receiver, result.donor, **boot)}
            for j, p in enumerate(result.patches)]


def direct_rows(result: DirectResult, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """Per (layer, component): same-input and own-run direct effects and the one-component graft effect,
    in nats and normalised by the donor - receiver gap."""
    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    rec, don = result.receiver, result.donor
    rows = []
    for j, (layer, c) in enumerate(result.components):
        row = {"layer": layer, "component": c, "n_problems": len(rec)}
        for key, values in (("direct", result.direct[:, j]), ("direct_own_run", result.direct_own_run[:, j]),
                            ("graft", result.graft[:, j] - rec)):
            row[key] = mean_ci(values, **boot)
            row[f"{key}_normalised"] = normalised(rec + values, rec, don, **boot)
        rows.append(row)
    return rows


def component_totals(result: DirectResult, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """The per-variant measures: attention and MLP direct effects summed over layers, and the total effect
    (donor metric - receiver metric), each {value, ci} in nats, bootstrap over problems."""
    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    out = {}
    for c in COMPONENT_SITES:
        cols = [j for j, (_, comp) in enumerate(result.components) if comp == c]
        out[f"{c}_direct_effect"] = mean_ci(result.direct[:, cols].sum(1), **boot)
    out["total_effect"] = mean_ci(result.donor - result.receiver, **boot)
    return out


def component_shares(result: DirectResult, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Attention and MLP direct effects summed over layers as shares of the donor - receiver gap (aggregate
    normalisation; NaN when the gap is not distinguishable from zero)."""
    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    out = {}
    for c in COMPONENT_SITES:
        cols = [j for j, (_, comp) in enumerate(result.components) if comp == c]
        out[f"{c}_direct_share"] = normalised(result.receiver + result.direct[:, cols].sum(1), result.receiver,
                                              result.donor, **boot)
    return out
