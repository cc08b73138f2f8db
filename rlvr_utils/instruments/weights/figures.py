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


# --- captions ---------------------------------------------------------------------------------------
# The chapter draws its figures inline with seaborn from the frames above; these write each figure's caption
# from the same frames and `result` (metrics/weights.json): what is plotted, then what this run shows, with
# numbers through rlvr_utils.core.captions and fmt, never typed by hand.
SUMMARY_PREFIX = {"rlvr-sft": "rlvr", "sft-base": "sft"}  # weights.json summary keys of a pair
GROUP_NAMES = {"mlp": "MLP", "all": "all parameters"}


def pair_label(pair: str) -> str:
    """'rlvr-sft' -> 'RLVR − SFT'."""
    from rlvr_utils.core.captions import stage

    return " − ".join(stage(p) for p in str(pair).split("-"))


def _pairs(result: dict) -> list[str]:
    """The pairs a caption states: RLVR − SFT and SFT − base when the run has them (RLVR − base is nearly
    SFT − base), else every pair."""
    pairs = list(result.get("pairs") or [])
    return [p for p in SUMMARY_PREFIX if p in pairs] or pairs


def _summary(result: dict, pair: str, key: str):
    """The summary's estimate of `key` for a pair (rlvr_<key>, sft_<key>), None when absent."""
    prefix = SUMMARY_PREFIX.get(pair)
    entry = (result.get("summary") or {}).get(f"{prefix}_{key}") if prefix else None
    return entry if isinstance(entry, dict) and entry.get("value") is not None else None


def _mean(frame: pd.DataFrame, pair: str, column: str) -> float | None:
    if frame is None or column not in frame or "pair" not in frame:
        return None
    values = frame.loc[frame["pair"] == pair, column].dropna()
    return float(values.mean()) if len(values) else None


def caption_energy(result: dict, groups: pd.DataFrame) -> str:
    """The MLP share of each pair's update energy per parameter (with its interval over layers, read against
    0.5, an equal update per parameter) and how much smaller RLVR's update is per parameter than SFT's."""
    from rlvr_utils.core import captions, fmt

    what = "Squared update per parameter of each attention and MLP matrix, by layer (log scale), per pair of checkpoints."
    if groups is None or groups.empty or "group" not in groups:
        return f"{what} Not measured on this run."
    shares, equal = [], []
    for pair in _pairs(result):
        share = _summary(result, pair, "update_mlp_share")
        if share:
            shares.append(f"{pair_label(pair)} {captions.estimate(share)}")
            lo, hi = (list(share.get("ci") or []) + [None, None])[:2]
            if lo is not None and hi is not None and lo <= 0.5 <= hi:
                equal.append(pair_label(pair))
        elif _mean(groups, pair, "mlp_share") is not None:
            shares.append(f"{pair_label(pair)} {fmt.number(_mean(groups, pair, 'mlp_share'))}")
    text = what
    if shares:
        text += " MLP share of the energy per parameter (0.5 = equal to attention's): " + ", ".join(shares)
        if equal:
            text += (f"; {captions.names(equal)}: no difference from 0.5 detected" if len(equal) < len(shares)
                     else "; each interval holds 0.5 (no difference from attention detected)")
        text += "."
    whole = groups[groups["group"] == "all"]
    rlvr, sft = _mean(whole, "rlvr-sft", "energy_per_param"), _mean(whole, "sft-base", "energy_per_param")
    if rlvr and sft:
        text += f" Per parameter, RLVR's update is {fmt.number(sft / rlvr)} times smaller than SFT's."
    return text


def caption_spectra(result: dict, spectra: pd.DataFrame, floor: float = 0.1) -> str:
    """Singular value spectra of the updates: per pair, how many singular values stay above `floor` of the
    largest (median over matrices), out of how many."""
    from rlvr_utils.core import fmt

    what = "Singular values of each update divided by its largest (log scale), mean over layers with their range as a band."
    if spectra is None or spectra.empty:
        return f"{what} Not measured on this run."
    parts = []
    for pair in _pairs(result):
        part = spectra[spectra["pair"] == pair]
        if part.empty:
            continue
        above = part[part["normalised"] >= floor].groupby(["layer", "module"], observed=True).size()
        size = part.groupby(["layer", "module"], observed=True)["index"].max()
        parts.append(f"{pair_label(pair)} {fmt.number(float(above.reindex(size.index, fill_value=0).median()))} "
                     f"of {fmt.number(float(size.median()))}")
    if not parts:
        return f"{what} Not measured on this run."
    return (f"{what} Singular values ≥ {fmt.number(floor)} σ₁ (median over matrices): "
            + "; ".join(parts) + ".")


def caption_rank(result: dict, matrices: pd.DataFrame) -> str:
    """Effective rank / full rank (with the summary's interval over matrices) and stable rank / full rank (mean
    over matrices) of each pair's update."""
    from rlvr_utils.core import captions, fmt

    what = "Effective and stable rank of each update as a share of full rank, mean over layers per matrix (black: range)."
    parts = []
    for pair in _pairs(result):
        effective = _summary(result, pair, "update_effective_rank_ratio")
        shown = (captions.estimate(effective) if effective
                 else fmt.number(_mean(matrices, pair, "effective_rank_ratio")))
        stable = _mean(matrices, pair, "stable_rank_ratio")
        if shown != "—" or stable is not None:
            parts.append(f"{pair_label(pair)} effective {shown}, stable {fmt.number(stable)}")
    if not parts:
        return f"{what} Not measured on this run."
    return f"{what} Means over all attention and MLP matrices (95% CI over matrices): " + "; ".join(parts) + "."


def caption_subspace(result: dict, matrices: pd.DataFrame) -> str:
    """The largest principal angle of the weights' top singular subspace (summary interval over matrices) and the
    relative change of the top-k singular values (mean over matrices), per pair."""
    from rlvr_utils.core import captions, fmt

    k = result.get("top_k")
    what = ("Largest principal angle between the weights' top singular subspaces before and after (k at the "
            f"spectral gap), and relative change of the top{f'-{k}' if k else ''} singular values, mean over layers.")
    parts = []
    for pair in _pairs(result):
        angle = _summary(result, pair, "top_subspace_angle")
        shown = (captions.estimate(angle, unit="°") if angle
                 else fmt.number(_mean(matrices, pair, "subspace_angle")) + "°")
        change = _mean(matrices, pair, "spectrum_change")
        if not shown.startswith("—") or change is not None:
            parts.append(f"{pair_label(pair)} angle {shown}, singular values changed by {fmt.number(change)}")
    if not parts:
        return f"{what} Not measured on this run."
    return f"{what} Mean over matrices: " + "; ".join(parts) + "."


def caption_dynamics(result: dict, dynamics: pd.DataFrame) -> str:
    """The RLVR update's relative norm at the last saved GRPO checkpoint per group, and how much of it the last
    interval between checkpoints added (a plateau adds little)."""
    from rlvr_utils.core import fmt

    what = "Relative norm of the update from SFT's weights at each saved GRPO checkpoint."
    if dynamics is None or dynamics.empty or "step" not in dynamics:
        return f"{what} No intermediate checkpoints were saved on this run."
    steps = sorted(dynamics["step"].unique())
    last = dynamics[dynamics["step"] == steps[-1]].set_index("group")["relative_norm"]
    text = (f"{what} At step {fmt.number(steps[-1])}: "
            + ", ".join(f"{GROUP_NAMES.get(group, group)} {fmt.number(float(value))}" for group, value in last.items())
            + ".")
    if len(steps) >= 2 and "all" in last.index and last["all"] > 0:
        before = dynamics[(dynamics["step"] == steps[-2]) & (dynamics["group"] == "all")]["relative_norm"]
        if len(before):
            grown = (last["all"] - float(before.iloc[0])) / last["all"]
            text += (f" The last interval (steps {fmt.number(steps[-2])} to {fmt.number(steps[-1])}) added "
                     f"{fmt.number(100 * grown)}% of the whole update's final size.")
    return text
