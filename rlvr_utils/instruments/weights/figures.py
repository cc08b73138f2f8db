"""Tables the spectra chapter draws from metrics/weights.json: one row per matrix, and the updates' spectra."""
from __future__ import annotations

import pandas as pd

from rlvr_utils.instruments.weights.updates import GROUPS

MODULES = ("q", "k", "v", "o", "qkv", "gate", "up", "down")  # attention first, in the order data flows


def _ordered(modules: pd.Series) -> pd.Categorical:
    return pd.Categorical(modules, [m for m in MODULES if m in set(modules)], ordered=True)


def matrix_frame(result: dict) -> pd.DataFrame:
    """Attention and MLP weight matrices of a weights.json result, one row per (pair, matrix), with
    'subspace_angle' (mean of the left and right largest principal angles) and 'stable_rank_ratio'."""
    df = pd.DataFrame(result["matrices"])
    if "effective_rank" not in df:
        return df.iloc[:0]
    df = df[df["group"].isin(GROUPS) & df["effective_rank"].notna()].copy()
    df["layer"] = df["layer"].astype(int)
    df["module"] = _ordered(df["module"])
    df["subspace_angle"] = (df["subspace_angle_left"] + df["subspace_angle_right"]) / 2
    df["stable_rank_ratio"] = df["stable_rank"] / df["max_rank"]
    return df.reset_index(drop=True)


def spectra_frame(result: dict) -> pd.DataFrame:
    """Long table of the updates' singular values: pair, layer, module, group, index (1 = largest),
    singular_value and normalised (divided by the largest), for spectrum plots."""
    rows = []
    for m in matrix_frame(result).itertuples():
        top = m.singular_values[0] if m.singular_values else 0
        rows += [{"pair": m.pair, "layer": m.layer, "module": m.module, "group": m.group, "index": i + 1,
                  "singular_value": s, "normalised": s / top}
                 for i, s in enumerate(m.singular_values) if top > 0]
    out = pd.DataFrame(rows, columns=["pair", "layer", "module", "group", "index", "singular_value", "normalised"])
    out["module"] = _ordered(out["module"])
    return out
