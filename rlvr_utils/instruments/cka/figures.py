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

from rlvr_utils.core import captions, fmt, plots
from rlvr_utils.core.plots import STAGE_COLORS
from rlvr_utils.instruments.cka.instrument import short
from rlvr_utils.instruments.cka.maths import COMPONENT_SITES
from rlvr_utils.treatments import registry
from rlvr_utils.treatments.registry import REFERENCE, STUDY


# --- the stage comparisons ---------------------------------------------------------------------------------
def plot_components(result: dict):
    """Heatmaps, one per model pair, one above the other: CKA per layer (rows) and component (columns), each cell
    annotated with its estimate (at most four decimals; the intervals are in the chapter's table). Each pair has
    its own colour scale spanning its values: CKA between SFT and RLVR sits within a few thousandths of 1, which
    a shared 0-1 scale would paint in one colour."""
    cells = pd.DataFrame(result["cells"])
    cells["component"] = cells["site"].map(short)
    pairs, n_layers = result["pairs"], len(result["layers"])
    annotate = n_layers <= 8
    height = 1.0 + (0.36 if annotate else 0.12) * n_layers
    fig, axes = plt.subplots(len(pairs), 1, figsize=(plots.PAGE_WIDTH, height * len(pairs) + 0.6), squeeze=False)
    for ax, pair in zip(axes[:, 0], pairs):
        sub = cells[cells["pair"] == pair]
        values = sub.pivot(index="layer", columns="component", values="value")
        text = sub.assign(t=[_cell_text(v, ci) for v, ci in zip(sub["value"], sub["ci"])]) \
            .pivot(index="layer", columns="component", values="t")
        low, high = float(values.min().min()), float(values.max().max())
        high = high if high > low else low + 1e-9
        sns.heatmap(values, annot=text.loc[values.index, values.columns].values if annotate else False, fmt="",
                    vmin=low, vmax=high, cmap="viridis", ax=ax, annot_kws={"fontsize": plots.MIN_FONT},
                    cbar_kws={"ticks": [low, high], "format": "%.4g", "pad": 0.02})
        ax.set_title(pair.replace("_", " vs "))
        ax.set_xlabel("component")
        ax.set_ylabel("layer")
        ax.tick_params(axis="x", rotation=0)
        ax.tick_params(axis="y", rotation=0)
    kind = "debiased" if result["debiased"] else "biased"
    fig.suptitle(f"Linear CKA ({kind}) per layer and component\n(each pair on its own colour scale)")
    fig.tight_layout()
    return fig


def _pair_name(pair: str) -> str:
    return pair.replace("_", " vs ")


def caption_components(result: dict) -> str:
    """The heatmaps' caption: what they show, and the means over layers of SFT vs RLVR (attention, MLP and their
    difference) beside base vs SFT's, with their intervals."""
    s, pairs = result.get("summary", {}), result.get("pairs", [])
    kind = "Debiased" if result.get("debiased", True) else "Biased"
    text = f"{kind} linear CKA per layer and component, one heatmap per model pair (each on its own colour scale)."
    parts = []
    for pair in (f"{REFERENCE}_{STUDY}", f"base_{REFERENCE}"):
        if pair not in pairs:
            continue
        shown = f"{_pair_name(pair)}: attention {captions.estimate(s.get(f'cka_{pair}_attn_out'))}, " \
                f"MLP {captions.estimate(s.get(f'cka_{pair}_mlp_out'))}"
        if pair.endswith(STUDY) and f"cka_{pair}_mlp_minus_attn" in s:
            shown += f" (MLP − attention: {captions.change(s[f'cka_{pair}_mlp_minus_attn'])})"
        parts.append(shown)
    if not parts:
        return text + f" {_pair_name(f'{REFERENCE}_{STUDY}')}: not measured."
    return text + " Mean over layers, " + "; ".join(parts) + "."


def _cell_text(value: float, ci) -> str:
    """A heatmap cell's number: the precision its interval supports, at most four decimals (it must fit)."""
    text = fmt.value(value, ci)
    return f"{value:.4f}" if len(text) > 6 and "×" not in text else text


def plot_cross_layer(result: dict):
    """Layer x layer CKA matrices in a grid: a row per model pair, a column per component, one colour scale
    spanning every matrix's values."""
    sites, pairs = result["sites"], result["pairs"]
    size = plots.PAGE_WIDTH / len(sites)
    fig, axes = plt.subplots(len(pairs), len(sites), figsize=(plots.PAGE_WIDTH, 0.9 * size * len(pairs) + 0.9),
                             squeeze=False, sharex=True, sharey=True)
    matrices = [np.array(e["matrix"]) for e in result["cross_layer"]]
    low = float(min(m.min() for m in matrices)) if matrices else 0.0
    small = all(len(e["layers"]) <= 4 for e in result["cross_layer"])  # annotations fit 4 x 4 cells at most
    mesh = None
    for entry in result["cross_layer"]:
        ax = axes[pairs.index(entry["pair"])][sites.index(entry["site"])]
        first, second = entry["pair"].split("_")
        mesh = ax.imshow(np.array(entry["matrix"]), vmin=low, vmax=1.0, cmap="viridis")
        if small:
            for (i, j), v in np.ndenumerate(np.array(entry["matrix"])):
                ax.text(j, i, f"{v:.2f}".replace("0.", ".", 1) if f"{v:.2f}".startswith("0.") else f"{v:.2f}",
                        ha="center", va="center",
                        fontsize=plots.MIN_FONT, color="white" if v < (low + 1) / 2 else "black")
        ax.set_xticks(range(len(entry["layers"])), entry["layers"])
        ax.set_yticks(range(len(entry["layers"])), entry["layers"])
        ax.grid(False)
        ax.set_title(f"{first}–{second}\n{short(entry['site'])}", fontsize=plots.MIN_FONT)
        if entry["site"] == sites[0]:  # shared axes: the outer panels carry the labels
            ax.set_ylabel(f"layer ({first})", fontsize=plots.MIN_FONT)
        if entry["pair"] == pairs[-1]:
            ax.set_xlabel(f"layer ({second})", fontsize=plots.MIN_FONT)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, shrink=0.6, label="CKA")
    fig.suptitle("Cross-layer CKA: does a layer of one model\nmatch the same layer of the other?")
    return fig


def caption_cross_layer(result: dict) -> str:
    """The cross-layer matrices' caption: in how many matrices every layer matches the same layer of the other
    model best, and SFT vs RLVR's same-layer CKA against its best other-layer CKA."""
    entries = result.get("cross_layer", [])
    text = "Layer × layer debiased CKA, a row per model pair and a column per component."
    if not entries:
        return text + " Not measured on this run."
    diagonal = 0
    for e in entries:
        m = np.array(e["matrix"], dtype=float)
        diagonal += bool(m.size) and all(int(np.argmax(row)) == i for i, row in enumerate(m))
    text += (f" In {diagonal} of {len(entries)} matrices every layer is most similar to the same layer of the "
             "other model.")
    study = [np.array(e["matrix"], dtype=float) for e in entries if e["pair"] == f"{REFERENCE}_{STUDY}"]
    study = [m for m in study if m.size]
    if study:
        same = [1 - v for m in study for v in np.diag(m)]
        other = [1 - v for m in study for v in m[~np.eye(len(m), dtype=bool)]]
        text += (f" {_pair_name(f'{REFERENCE}_{STUDY}')}: 1 − CKA at the same layer {captions.span(same)}"
                 + (f", between different layers at least {fmt.number(min(other))}." if other else "."))
    return text


def plot_inflation(result: dict):
    """Biased vs debiased CKA against the number of samples, true and shuffled pairings."""
    info = result["inflation"]
    points = pd.DataFrame(info["points"])
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH, 4.2))
    sns.lineplot(points, x="n", y="cka", hue="estimator", style="pairing", markers=True, errorbar=("pi", 100), ax=ax)
    ax.axvline(info["d"], color="grey", linestyle=":", label=f"d = {info['d']}")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("samples n (tokens, spread over problems)")
    ax.set_ylabel("linear CKA")
    first, second = info["pair"].split("_")
    ax.set_title(f"Biased CKA inflates when n is not >> d ({first} vs {second}, layer {info['layer']} "
                 f"{short(info['site'])})")
    ax.legend(fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig


def caption_inflation(result: dict) -> str:
    """The estimator check's caption: both estimators on shuffled rows (true value 0) at the smallest and the
    largest n."""
    info = result.get("inflation") or {}
    points = [p for p in info.get("points", []) if p.get("pairing") == "shuffled"]
    if not points:
        return "Biased and debiased CKA against the number of samples: not measured on this run."
    first, second = info["pair"].split("_")
    text = (f"Biased and debiased CKA against the number of samples n ({first} vs {second}, layer {info['layer']} "
            f"{short(info['site'])}, d = {info['d']}), on matched and on shuffled rows (true CKA 0).")

    def mean(n, estimator):
        return fmt.number(float(np.mean([p["cka"] for p in points if p["n"] == n and p["estimator"] == estimator])))

    ns = sorted({p["n"] for p in points})
    reads = [f"at n = {n}, {mean(n, 'biased')} and {mean(n, 'debiased')}" for n in dict.fromkeys((ns[0], ns[-1]))]
    return text + " On shuffled rows the biased and the debiased estimator read, " + "; ".join(reads) + "."


def summary_markdown(result: dict) -> str:
    """A short reading of the run's numbers, in the terms of the two hypotheses."""
    s = result["summary"]

    def shown(key):  # at the precision its interval supports: CKA near 1 differs in the third decimal
        return fmt.interval(s[key]["value"], s[key]["ci"])

    conf = int(result["confidence"] * 100)
    lines = [f"Debiased linear CKA, mean over layers {result['layers'][0]}..{result['layers'][-1]}, at "
             f"`{result['selection']}` positions ({conf}% bootstrap intervals over problems):", ""]
    lines.append("| pair | " + " | ".join(short(x) for x in result["sites"]) + " |")
    lines.append("|---|" + "---|" * len(result["sites"]))
    for pair in result["pairs"]:
        lines.append(f"| {pair.replace('_', ' vs ')} | "
                     + " | ".join(shown(f"cka_{pair}_{short(x)}") for x in result["sites"]) + " |")
    lines.append("")
    lines.append(f"Chance level (rows shuffled): {shown('cka_permutation_baseline')}.")
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
            lines.append(f"- {pair.replace('_', ' → ')}: MLP minus attention CKA = {shown(key)}: {verdict}.")
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
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH, 4))
    sns.lineplot(data=pd.DataFrame(rows), x="step", y="cka", hue="site", marker="o", errorbar=("pi", 100), ax=ax)
    ax.set(xlabel="GRPO step", ylabel="debiased CKA with SFT",
           title="How far RLVR's representations move from SFT during training (band: range over layers)")
    ax.legend(title="component")
    return fig


def caption_dynamics(rows: list[dict]) -> str:
    """The training dynamics' caption: per component, 1 − CKA (mean over layers) at the first and at the last
    saved checkpoint."""
    text = "Debiased CKA of SFT with each saved GRPO checkpoint, per component (mean over layers; band: range over layers)."
    table = pd.DataFrame(rows)
    if table.empty:
        return text + " No intermediate checkpoint on this run."
    means = table.groupby(["site", "step"])["cka"].mean()
    first, last = int(table["step"].min()), int(table["step"].max())
    parts = [f"{site} from {fmt.number(1 - means[(site, first)])} to {fmt.number(1 - means[(site, last)])}"
             for site in dict.fromkeys(table["site"]) if (site, first) in means and (site, last) in means]
    return text + f" 1 − CKA from step {first} to step {last}: " + "; ".join(parts) + "."


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


SUMMARY_MEASURES = ((SAME_INPUT + ", 1 − CKA", "attn_change", "mlp_change", "same_input"),
                    (SAME_INPUT + ", relative change", "attn_relative_change", "mlp_relative_change", "same_input"),
                    ("end to end, 1 − CKA", "attn_change_end_to_end", "mlp_change_end_to_end", "end_to_end"))


def summary_table(same_input: dict, cka_result: dict | None = None) -> pd.DataFrame:
    """Per measure and treatment (long, four columns, so it fits a phone's width): the change of attention and of
    the MLPs against SFT, mean over layers with its interval, at the precision the interval supports."""
    end = (cka_result or {}).get("variants", {})
    sources = {"same_input": same_input["variants"], "end_to_end": end}
    records = []
    for label, attn, mlp, source in SUMMARY_MEASURES:
        for name in same_input["variants"]:
            measures = sources[source].get(name, {})
            if attn in measures or mlp in measures:
                records.append({"measure": label, "treatment": name,
                                **{f"{side} [95% CI]": fmt.interval(e.get("value"), e.get("ci")) if e else "not measured"
                                   for side, e in (("attention", measures.get(attn)), ("MLP", measures.get(mlp)))}})
    return pd.DataFrame(records)


def _colors(cfg) -> dict[str, str]:
    """A colour per treatment drawn as a line: the study in its stage colour, each control its own, and a
    treatment known to carry no change (the copy of SFT; the nulls are drawn as a band) in SFT's."""
    quiet = [name for name, answer in registry.expected(cfg).items() if answer == registry.NO_EVIDENCE]
    controls = registry.names(cfg, "control")
    return {**{name: STAGE_COLORS[REFERENCE] for name in quiet},
            **{name: CONTROL_COLORS[i % len(CONTROL_COLORS)] for i, name in enumerate(controls)},
            **{name: STAGE_COLORS[STUDY] for name in registry.names(cfg, "study")}}


def caption_comparison(cfg, same_input: dict, cka_result: dict | None = None) -> str:
    """The same-input figure's caption: RLVR's change of attention and of the MLPs (mean over layers) on the
    same input, against the placebos' (with their range) and the nulls', and end to end against the placebos'."""
    text = "1 − debiased CKA with SFT per layer, on the same input (top) and end to end (bottom)."
    placebos, nulls = registry.names(cfg, "placebo"), registry.names(cfg, "null")
    sources = (("RLVR's same-input change, mean over layers", (same_input or {}).get("variants", {}), ""),
               ("End to end", (cka_result or {}).get("variants", {}), "_end_to_end"))
    parts = []
    for label, variants, suffix in sources:
        if STUDY not in variants:
            parts.append(f"{label}: not measured.")
            continue
        sides = []
        for component, name in (("attn", "attention"), ("mlp", "MLP")):
            key = f"{component}_change{suffix}"
            e = variants[STUDY].get(key)
            where = [captions.against(e, [variants.get(t, {}).get(key) for t in placebos], "placebo", "placebos",
                             show_range=not suffix)]
            if not suffix and captions.excludes_zero(e):
                where.insert(0, captions.against(e, [variants.get(t, {}).get(key) for t in nulls], "null", "nulls"))
            sides.append(f"{name} {captions.estimate(e)}, {' and '.join(where)}")
        parts.append(f"{label}: " + "; ".join(sides) + ".")
    return " ".join([text, *parts])


def plot_comparison(cfg, same_input: dict, cka_result: dict | None = None):
    """Change (1 - CKA) per layer: columns are components, rows the measure (same input; end to end). RLVR and
    the controls are lines; the nulls are a grey band (their range) with thin lines."""
    table = per_layer_table(same_input, cka_result)
    measures = [m for m in (SAME_INPUT, END_TO_END) if m in set(table["measure"])] if len(table) else [SAME_INPUT]
    n_named = len({v for v in table["variant"]} - set(registry.names(cfg, "null"))) + 1 if len(table) else 1
    fig, axes = plt.subplots(len(measures), 2, figsize=(plots.PAGE_WIDTH, 2.9 * len(measures) + 1.0 + 0.22 * -(-n_named // 2)),
                             squeeze=False, sharex=True)
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
            ax.set_title(f"{'attention' if component == 'attn' else 'MLP'}: "
                         f"{'same input' if measure_name == SAME_INPUT else 'end to end'}")
            ax.set_xlabel("layer")
            ax.set_ylabel("1 − CKA with SFT")
            if len(sub):
                ax.set_xticks(sorted(sub["layer"].unique()))
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=2, title="vs SFT",
                   fontsize=plots.MIN_FONT, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("Did the component change? Same input (its own change)\nvs end to end (mixing upstream changes)")
    # the legend's rows (two names each) take the bottom of the figure, in inches of its height
    fig.tight_layout(rect=(0, min(0.6, (0.5 + 0.22 * -(-len(handles) // 2)) / fig.get_size_inches()[1]), 1, 1))
    return fig
