"""What the verdict reads from the rows of `updates.compare`: per treatment against the reference, each an
Estimate with a bootstrap interval over matrices (over layers for the MLP share); the same measures relative to
the nulls', matrix by matrix; and the summary of SFT's and RLVR's updates (context).

Routing predicts small, low-rank, attention-heavy RLVR updates that leave the principal directions of the
weights in place; Representation learning predicts updates that reach the MLP matrices.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rlvr_utils.core import stats
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.instruments.weights.updates import GROUPS, group_table
from rlvr_utils.treatments.registry import REFERENCE, STUDY

PAIRS: tuple[tuple[str, str], ...] = ((REFERENCE, "base"), (STUDY, REFERENCE), (STUDY, "base"))  # (after, before)
COMPONENTS = (("attn", "attention"), ("mlp", "mlp"))  # (prefix of the verdict's keys, group of the rows)
NULL_RELATIVE = {"structured_update": "structured_energy", "rotation": "rotation"}


def pair_name(after: str, before: str) -> str:
    return f"{after}-{before}"


def matrices(rows: Sequence[dict], pair: str, group: str | None = None) -> list[dict]:
    """Attention and MLP matrix rows (with spectra) of one pair, of one group or both."""
    return [r for r in rows if r["pair"] == pair and r["group"] in GROUPS and (group is None or r["group"] == group)
            and r.get("effective_rank") is not None]


def estimate(values, statistic, n_bootstrap: int, confidence: float, seed: int) -> Estimate:
    """`statistic` of the rows of `values` with a percentile bootstrap over those rows; undefined when there are
    none or the statistic is not finite (a share of a zero update); no interval when no resample is finite."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return Estimate.undefined(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = statistic(values)
        if not math.isfinite(value):
            return Estimate.undefined(len(values))
        samples = np.array([statistic(values[i]) for i in stats.bootstrap_indices(len(values), n_bootstrap, seed)])
    if not np.isfinite(samples).any():
        return Estimate(value, (None, None), "bootstrap", len(values))
    return Estimate(value, stats.interval(samples, confidence), "bootstrap", len(values))


def _mean(v):
    return float(np.mean(v))


def _relative_norm(v):  # rows (||dW||^2, ||W||^2)
    return float(np.sqrt(v[:, 0].sum() / v[:, 1].sum())) if v[:, 1].sum() > 0 else float("nan")


def _share(v):  # rows per layer (attention energy, attention params, MLP energy, MLP params)
    attn, mlp = v[:, 0].sum() / v[:, 1].sum(), v[:, 2].sum() / v[:, 3].sum()
    return float(mlp / (mlp + attn)) if mlp + attn > 0 else float("nan")


def _angle(m: dict) -> float:
    """The weight's top-subspace rotation: mean of the left and right largest principal angles (degrees)."""
    return (m.get("subspace_angle_left", np.nan) + m.get("subspace_angle_right", np.nan)) / 2


def measures(rows: Sequence[dict], pair: str, n_bootstrap: int = 1000, confidence: float = 0.95,
             seed: int = 0) -> dict[str, Estimate]:
    """What the verdict reads for one pair (after vs before); 'attn' = q, k, v, o and 'mlp' = gate, up, down
    (embeddings and norms are left out):

      - {attn,mlp}_structured_update: energy of the update's top-k singular directions relative to the
        weight's, sum_{i<=k} sigma_i(dW)^2 / ||W||_F^2, mean over the component's matrices (0 for no update; a
        same-norm low-rank update scores higher than a Gaussian one, whose energy is spread over all directions);
      - {attn,mlp}_rotation: largest principal angle (degrees, mean of left and right) of the weights' top
        singular subspace at its spectral gap, mean over the component's matrices;
      - mlp_share: MLP share of the update's energy per parameter (0.5 = equal per parameter), CI over layers;
      - effective_rank_ratio: the update's effective rank (round-off floor from the stored dtype) / full rank,
        mean over the matrices it changed beyond round-off;
      - {attn,mlp}_relative_norm: ||dW||_F / ||W||_F over the component (context).
    Intervals: bootstrap over matrices (over layers for mlp_share).
    """
    est = lambda values, statistic: estimate(values, statistic, n_bootstrap, confidence, seed)  # noqa: E731
    out = {}
    for short, group in COMPONENTS:
        ms = matrices(rows, pair, group)
        out[f"{short}_structured_update"] = est([m["structured_energy"] for m in ms], _mean)
        out[f"{short}_rotation"] = est([_angle(m) for m in ms], _mean)
        out[f"{short}_relative_norm"] = est([(m["delta_norm"] ** 2, m["before_norm"] ** 2) for m in ms], _relative_norm)
    changed = [m["effective_rank_ratio"] for m in matrices(rows, pair) if m["effective_rank"] > 0]
    out["effective_rank_ratio"] = est(changed, _mean)
    per_layer = {}
    for r in rows:
        if r["pair"] == pair and r["group"] in GROUPS and r["layer"] is not None:
            acc = per_layer.setdefault(r["layer"], np.zeros(4))
            j = 0 if r["group"] == "attention" else 2
            acc[j] += r["delta_norm"] ** 2
            acc[j + 1] += r["n_params"]
    layers = [v for v in per_layer.values() if v[1] > 0 and v[3] > 0]
    out["mlp_share"] = est(layers, _share)
    return out


def null_relative(rows: Sequence[dict], treatments: Sequence[str], nulls: Sequence[str], reference: str = REFERENCE,
                  n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, Estimate]]:
    """{T: {attn,mlp}_{structured_update,rotation}_vs_null}: per matrix, T's value divided by the mean of the
    nulls' values for the same matrix (a null against the other nulls), then the mean over the component's
    matrices with a bootstrap interval over matrices. Pairing by matrix removes what matrices differ in (size,
    spectrum), so a random update of the same size reads about 1 and no change reads 0. Matrices that no null
    changed are left out. Empty with fewer than two nulls."""
    def value(m, key):
        return _angle(m) if key == "rotation" else m.get(key, np.nan)

    by_pair = {}
    for r in rows:
        if r["group"] in GROUPS:
            by_pair.setdefault(r["pair"], {})[r["name"]] = r
    out = {}
    if len(nulls) < 2:
        return out
    for t in treatments:
        mine = by_pair.get(pair_name(t, reference), {})
        others = [by_pair[pair_name(n, reference)] for n in nulls if n != t]
        out[t] = {}
        for short, group in COMPONENTS:
            for measure, key in NULL_RELATIVE.items():
                ratios = []
                for name, m in mine.items():
                    if m["group"] != group:
                        continue
                    floor = np.mean([value(o[name], key) for o in others if name in o] or [np.nan])
                    if floor > 0 and np.isfinite(value(m, key)):
                        ratios.append(value(m, key) / floor)
                out[t][f"{short}_{measure}_vs_null"] = estimate(ratios, _mean, n_bootstrap, confidence, seed)
    return out


def variant_measures(rows: Sequence[dict], treatments: Sequence[str], reference: str = REFERENCE,
                     nulls: Sequence[str] = (), **kwargs) -> dict[str, dict[str, Estimate]]:
    """{T: measures(T vs reference)} for every treatment with rows, plus, when `nulls` are given, the
    per-matrix measures relative to the nulls (`null_relative`): what the instrument reports, from rows in hand."""
    pairs = {r["pair"] for r in rows}
    out = {t: measures(rows, pair_name(t, reference), **kwargs) for t in treatments
           if pair_name(t, reference) in pairs}
    for t, relative in null_relative(rows, list(out), [n for n in nulls if n in out], reference, **kwargs).items():
        out[t].update(relative)
    return out


def summarize(rows: Sequence[dict], n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """The summary: {key: Estimate as JSON + "description"} for RLVR's and SFT's updates (context for the verdict,
    which reads the per-treatment `variants`). Intervals bootstrap over matrices (layers for MLP shares); the
    whole-model norm and sparsity are exact totals of the checkpoints."""
    g = group_table(rows).set_index(["pair", "group"])
    rlvr, sft = pair_name(STUDY, REFERENCE), pair_name(REFERENCE, "base")

    def total(pair, column):
        value = float(g.loc[(pair, "all"), column]) if (pair, "all") in g.index else float("nan")
        return Estimate.exact(value) if math.isfinite(value) else Estimate.undefined()

    by_pair = {p: measures(rows, p, n_bootstrap, confidence, seed) for p in (rlvr, sft)}

    def angle(pair):  # both components' matrices together
        return estimate([_angle(m) for m in matrices(rows, pair)], _mean, n_bootstrap, confidence, seed)

    entries = {
        "rlvr_update_mlp_share": (by_pair[rlvr]["mlp_share"],
                                  "MLP share of the RLVR update's energy per parameter: mlp / (mlp + attention), "
                                  "0.5 = equal per parameter; interval over layers"),
        "sft_update_mlp_share": (by_pair[sft]["mlp_share"],
                                 "MLP share of the SFT update's energy per parameter (the same measure for SFT)"),
        "rlvr_update_effective_rank_ratio": (by_pair[rlvr]["effective_rank_ratio"],
                                             "mean over the attention and MLP matrices RLVR changed beyond round-off "
                                             "of its update's effective rank / largest possible rank (singular values "
                                             "below the stored dtype's round-off floor do not count)"),
        "sft_update_effective_rank_ratio": (by_pair[sft]["effective_rank_ratio"],
                                            "the same ratio for the SFT update"),
        "rlvr_update_sparsity": (total(rlvr, "sparsity"),
                                 "fraction of all parameters the RLVR update moved by at most the tolerance (or the "
                                 "stored dtype's round-off of the weight, when larger)"),
        "rlvr_relative_update_norm": (total(rlvr, "relative_norm"),
                                      "||RLVR - SFT|| / ||SFT|| over all parameters"),
        "sft_relative_update_norm": (total(sft, "relative_norm"),
                                     "||SFT - base|| / ||base|| over all parameters"),
        "rlvr_top_subspace_angle": (angle(rlvr),
                                    "mean over attention and MLP matrices of the largest principal angle (degrees) "
                                    "between SFT's and RLVR's top singular subspaces (left and right), k at the spectral "
                                    "gap of SFT's singular values"),
        "sft_top_subspace_angle": (angle(sft), "the same angle between base and SFT weights"),
    }
    return {key: {**e.to_json(), "description": text} for key, (e, text) in entries.items()}
