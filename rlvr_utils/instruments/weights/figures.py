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


def group_table(result: dict, groups: pd.DataFrame) -> pd.DataFrame:
    """Per measure (rows) and model pair (columns): energy per parameter of each group, the MLP share, and the
    whole model's relative norm and sparsity. Pairs as columns: there are few of them, so it fits a phone."""
    from rlvr_utils.core import fmt

    rows = []
    for group in dict.fromkeys(groups["group"]):
        rows.append({"measure": f"energy per parameter: {group}",
                     **{p: groups[(groups.pair == p) & (groups.group == group)]["energy_per_param"].iloc[0]
                        for p in result["pairs"] if len(groups[(groups.pair == p) & (groups.group == group)])}})
    first = groups.groupby("pair").first()
    whole = groups[groups.group == "all"].set_index("pair")
    rows.append({"measure": "MLP share of the energy per parameter", **first["mlp_share"].to_dict()})
    rows += [{"measure": label, **whole[key].to_dict()} for key, label in
             (("relative_norm", "relative norm of the whole update"), ("sparsity", "share of parameters unchanged"))
             if key in whole]
    table = pd.DataFrame(rows)[["measure", *[p for p in result["pairs"] if p in pd.DataFrame(rows).columns]]]
    return table.map(lambda v: v if isinstance(v, str) else fmt.number(v))


def variant_tables(result: dict, per_table: int = 3) -> list[pd.DataFrame]:
    """Each treatment's update against SFT, value [95% CI] per measure: a treatment per row and at most
    `per_table` measures per table, so that no table is wider than a phone's page."""
    from rlvr_utils.core import fmt

    variants = result.get("variants", {})
    measures = list(dict.fromkeys(k for m in variants.values() for k in m))
    tables = []
    for start in range(0, len(measures), per_table):
        chunk = measures[start:start + per_table]
        tables.append(pd.DataFrame([{"treatment": t, **{k: fmt.interval(m[k]["value"], m[k]["ci"]) if k in m
                                                         else "not measured" for k in chunk}}
                                    for t, m in variants.items()]))
    return tables
