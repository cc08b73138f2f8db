"""The CKA chapter's figures and readings: the stage comparisons (per layer and component, cross-layer, the
estimator check, the training dynamics) and the same-input changes beside the end-to-end ones. Each reads
what the instruments wrote (metrics/cka.json, metrics/same_input.json), or `instrument.run_dynamics`'s rows,
and draws it or reads it out; no measurement is made here.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from rlvr_utils.core.plots import STAGE_COLORS
from rlvr_utils.instruments.cka.instrument import short
from rlvr_utils.instruments.cka.maths import COMPONENT_SITES
from rlvr_utils.treatments import registry
from rlvr_utils.treatments.registry import REFERENCE, STUDY


# --- the stage comparisons ---------------------------------------------------------------------------------
def plot_components(result: dict):
    """Heatmaps, one per model pair: CKA per layer (rows) and component (columns), each cell annotated
    with its estimate and bootstrap interval."""
    cells = pd.DataFrame(result["cells"])
    cells["component"] = cells["site"].map(short)
    fig, axes = plt.subplots(1, len(result["pairs"]), figsize=(4.2 * len(result["pairs"]), 1.0 + 0.8 * len(result["layers"])),
                             sharey=True, squeeze=False)
    low = min(0.0, float(cells["value"].min()))
    for ax, pair in zip(axes[0], result["pairs"]):
        sub = cells[cells["pair"] == pair]
        values = sub.pivot(index="layer", columns="component", values="value")
        text = sub.assign(t=[f"{v:.3f}\n[{lo:.3f}, {hi:.3f}]" for v, (lo, hi) in zip(sub["value"], sub["ci"])]) \
            .pivot(index="layer", columns="component", values="t")
        sns.heatmap(values, annot=text.loc[values.index, values.columns].values, fmt="", vmin=low, vmax=1.0,
                    cmap="viridis", cbar=ax is axes[0][-1], ax=ax, annot_kws={"fontsize": 8})
        ax.set_title(pair.replace("_", " vs "))
        ax.set_xlabel("component")
        ax.set_ylabel("layer" if ax is axes[0][0] else "")
    kind = "debiased" if result["debiased"] else "biased"
    fig.suptitle(f"Linear CKA ({kind}) per layer and component, {int(result['confidence'] * 100)}% bootstrap "
                 f"intervals over problems ({result['selection']} positions)")
    fig.tight_layout()
    return fig


def plot_cross_layer(result: dict):
    """Grid of layer x layer CKA matrices: rows are model pairs, columns are components."""
    sites, pairs = result["sites"], result["pairs"]
    fig, axes = plt.subplots(len(pairs), len(sites), figsize=(3.6 * len(sites), 3.2 * len(pairs)), squeeze=False)
    for entry in result["cross_layer"]:
        ax = axes[pairs.index(entry["pair"])][sites.index(entry["site"])]
        first, second = entry["pair"].split("_")
        sns.heatmap(np.array(entry["matrix"]), vmin=min(0.0, np.min(entry["matrix"])), vmax=1.0, cmap="viridis",
                    annot=len(entry["layers"]) <= 6, fmt=".2f", xticklabels=entry["layers"],
                    yticklabels=entry["layers"], ax=ax, annot_kws={"fontsize": 7})
        ax.set_title(f"{first} vs {second}: {short(entry['site'])}")
        ax.set_xlabel(f"layer ({second})")
        ax.set_ylabel(f"layer ({first})")
    fig.suptitle("Cross-layer CKA: does a layer of one model match the same layer of the other?")
    fig.tight_layout()
    return fig


def plot_inflation(result: dict):
    """Biased vs debiased CKA against the number of samples, true and shuffled pairings."""
    info = result["inflation"]
    points = pd.DataFrame(info["points"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(points, x="n", y="cka", hue="estimator", style="pairing", markers=True, errorbar=("pi", 100), ax=ax)
    ax.axvline(info["d"], color="grey", linestyle=":", label=f"d = {info['d']}")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("samples n (tokens, spread over problems)")
    ax.set_ylabel("linear CKA")
    first, second = info["pair"].split("_")
    ax.set_title(f"Biased CKA inflates when n is not >> d ({first} vs {second}, layer {info['layer']} "
                 f"{short(info['site'])})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def summary_markdown(result: dict) -> str:
    """A short reading of the run's numbers, in the terms of the two hypotheses."""
    s = result["summary"]

    def fmt(key):  # 4 digits: CKA near 1 differs in the third decimal
        v = s[key]
        return f"{v['value']:.4f} [{v['ci'][0]:.4f}, {v['ci'][1]:.4f}]"

    conf = int(result["confidence"] * 100)
    lines = [f"Debiased linear CKA, mean over layers {result['layers'][0]}..{result['layers'][-1]}, at "
             f"`{result['selection']}` positions ({conf}% bootstrap intervals over problems):", ""]
    lines.append("| pair | " + " | ".join(short(x) for x in result["sites"]) + " |")
    lines.append("|---|" + "---|" * len(result["sites"]))
    for pair in result["pairs"]:
        lines.append(f"| {pair.replace('_', ' vs ')} | "
                     + " | ".join(fmt(f"cka_{pair}_{short(x)}") for x in result["sites"]) + " |")
    lines.append("")
    lines.append(f"Chance level (rows shuffled): {fmt('cka_permutation_baseline')}.")
    for pair in (f"{REFERENCE}_{STUDY}", f"base_{STUDY}"):
        key = f"cka_{pair}_mlp_minus_attn"
        if key in s:
            lo, hi = s[key]["ci"]
            # described, not read as a hypothesis: end-to-end outputs mix in upstream changes, and the
            # verdict reads components only against placebos (rlvr_utils.evidence.readings says what it reads)
            verdict = ("MLP outputs changed **less** than attention outputs, end to end"
                       if lo > 0 else
                       "MLP outputs changed **more** than attention outputs, end to "
                       "end" if hi < 0 else
                       "the data cannot tell whether MLP or attention outputs changed more")
            lines.append(f"- {pair.replace('_', ' → ')}: MLP minus attention CKA = {fmt(key)}: {verdict}.")
    inflation = _smallest_n_inflation(result)
    if inflation:
        lines.append(f"- Estimator check: on shuffled (unrelated) rows at n = {inflation['n']} < d = "
                     f"{result['inflation']['d']}, the biased estimator reads {inflation['biased']:.3f} "
                     f"while the debiased one reads {inflation['debiased']:.3f} (true value 0).")
    return "\n".join(lines)


def _smallest_n_inflation(result: dict) -> dict | None:
    """Mean biased and debiased CKA of the shuffled pairing at the smallest n of the inflation curve."""
    points = [p for p in result["inflation"]["points"] if p["pairing"] == "shuffled"]
    if not points:
        return None
    n = min(p["n"] for p in points)

    def mean(estimator):
        return float(np.mean([p["cka"] for p in points if p["n"] == n and p["estimator"] == estimator]))

    return {"n": n, "biased": mean("biased"), "debiased": mean("debiased")}


def plot_dynamics(rows: list[dict]):
    """CKA of SFT with each GRPO checkpoint against the training step, one line per component (mean over
    layers, the band spanning the layers)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=pd.DataFrame(rows), x="step", y="cka", hue="site", marker="o", errorbar=("pi", 100), ax=ax)
    ax.set(xlabel="GRPO step", ylabel="debiased CKA with SFT",
           title="How far RLVR's representations move from SFT during training (band: range over layers)")
    ax.legend(title="component")
    return fig


# --- the same-input change beside the end-to-end one ----------------------------------------------------------
SAME_INPUT = "same input"
END_TO_END = "end to end (mixes upstream changes)"
CONTROL_COLORS = ("#9467bd", "#2ca02c", "#8c564b", "#e377c2")  # the controls, in registry order


def per_layer_table(same_input: dict, cka_result: dict | None = None) -> pd.DataFrame:
    """One row per variant, layer, component and measure ('same input' / 'end to end (mixes upstream
    changes)'): change = 1 - CKA with its interval."""
    records = [{"variant": r["variant"], "layer": r["layer"], "component": r["component"], "measure": SAME_INPUT,
                "change": r["change"], "lo": r["change_ci"][0], "hi": r["change_ci"][1]} for r in same_input["rows"]]
    for cell in (cka_result or {}).get("variant_cells", []):
        records.append({"variant": cell["variant"], "layer": cell["layer"], "component": cell["component"],
                        "measure": END_TO_END, "change": cell["change"], "lo": cell["change_ci"][0],
                        "hi": cell["change_ci"][1]})
    return pd.DataFrame(records)


def summary_table(same_input: dict, cka_result: dict | None = None) -> pd.DataFrame:
    """Per variant: same-input and end-to-end change of attention and MLP (mean over layers, interval)."""
    def fmt(entry):
        if not entry or entry.get("value") is None:
            return ""
        lo, hi = entry["ci"]
        return f"{entry['value']:.2e} [{_e(lo)}, {_e(hi)}]"

    end = (cka_result or {}).get("variants", {})
    records = []
    for name, measures in same_input["variants"].items():
        records.append({"variant": name,
                        "attn change, same input": fmt(measures.get("attn_change")),
                        "MLP change, same input": fmt(measures.get("mlp_change")),
                        "attn relative change, same input": fmt(measures.get("attn_relative_change")),
                        "MLP relative change, same input": fmt(measures.get("mlp_relative_change")),
                        "attn change, end to end": fmt(end.get(name, {}).get("attn_change_end_to_end")),
                        "MLP change, end to end": fmt(end.get(name, {}).get("mlp_change_end_to_end"))})
    return pd.DataFrame(records).set_index("variant") if records else pd.DataFrame()


def _e(x):
    return "nan" if x is None else f"{x:.2e}"


def _colors(cfg) -> dict[str, str]:
    """A colour per treatment drawn as a line: the study in its stage colour, each control its own, and a
    treatment known to carry no change (the copy of SFT; the nulls are drawn as a band) in SFT's."""
    quiet = [name for name, answer in registry.expected(cfg).items() if answer == registry.NO_EVIDENCE]
    controls = registry.names(cfg, "control")
    return {**{name: STAGE_COLORS[REFERENCE] for name in quiet},
            **{name: CONTROL_COLORS[i % len(CONTROL_COLORS)] for i, name in enumerate(controls)},
            **{name: STAGE_COLORS[STUDY] for name in registry.names(cfg, "study")}}


def plot_comparison(cfg, same_input: dict, cka_result: dict | None = None):
    """Change (1 - CKA) per layer: columns are components, rows the measure (same input; end to end). RLVR and
    the controls are lines; the nulls are a grey band (their range) with thin lines."""
    table = per_layer_table(same_input, cka_result)
    measures = [m for m in (SAME_INPUT, END_TO_END) if m in set(table["measure"])] if len(table) else [SAME_INPUT]
    fig, axes = plt.subplots(len(measures), 2, figsize=(11, 3.6 * len(measures)), squeeze=False, sharex=True)
    colors, null_names = _colors(cfg), set(registry.names(cfg, "null"))
    for i, measure_name in enumerate(measures):
        for j, component in enumerate(COMPONENT_SITES):
            ax = axes[i][j]
            sub = table[(table["measure"] == measure_name) & (table["component"] == component)] if len(table) else table
            nulls = sub[sub["variant"].isin(null_names)] if len(sub) else sub
            if len(nulls):
                band = nulls.groupby("layer")["change"].agg(["min", "max"])
                ax.fill_between(band.index, band["min"], band["max"], color="grey", alpha=0.25,
                                label=f"nulls (range of {nulls['variant'].nunique()})")
                for _, one in nulls.groupby("variant"):
                    ax.plot(one["layer"], one["change"], color="grey", linewidth=0.6)
            named = [v for v in dict.fromkeys(sub["variant"]) if v not in null_names] if len(sub) else []
            for name in sorted(named, key=lambda v: v == STUDY):  # RLVR drawn last, on top of the controls
                one = sub[sub["variant"] == name].sort_values("layer")
                color = colors.get(name, "black")
                ax.plot(one["layer"], one["change"], marker="o", color=color, label=name,
                        linestyle="-" if name == STUDY else "--", markersize=6 if name == STUDY else 4)
                ax.fill_between(one["layer"], one["lo"], one["hi"], color=color, alpha=0.15)
            ax.set_yscale("symlog", linthresh=1e-6)
            ax.set_title(f"{'attention' if component == 'attn' else 'MLP'}: {measure_name}")
            ax.set_xlabel("layer")
            ax.set_ylabel("1 - debiased CKA with SFT")
            if len(sub):
                ax.set_xticks(sorted(sub["layer"].unique()))
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), title="vs SFT")
    fig.suptitle("Did the component change? Same input (the component's own change) vs end to end (its output "
                 "in each model, mixing upstream changes)")
    fig.tight_layout()
    return fig
