"""The probes chapter's figures and its closing reading: probe scores per layer, the plain and the stitched
logit lens, and a short Markdown reading of the summaries of probes.json and lens.json."""
from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from rlvr_utils.core import captions, fmt, plots
from rlvr_utils.core.plots import STAGE_COLORS
from rlvr_utils.treatments.registry import REFERENCE, STUDY

PROBE_LABELS = {"accuracy": "accuracy", "selectivity": "selectivity (task − control)",
                "over_majority": "accuracy − majority class", "macro_f1": "macro-F1"}


def figure(table: pd.DataFrame, metric: str = "accuracy", models=None) -> plt.Figure:
    """One panel per target x site: `metric` per layer for each model (all, or `models`) with its interval.
    For accuracy the control-task accuracy (dashed) and the majority baseline (dotted) are drawn too."""
    if models is not None:
        table = table[table.model.isin(list(models))]
    if table.empty:  # e.g. completions that never write an intermediate result or an answer
        fig, ax = plt.subplots(figsize=(5, 1.5))
        plots.say_missing(ax, "No probe targets were found in this run's completions")
        return fig
    targets, sites = list(dict.fromkeys(table.target)), list(dict.fromkeys(table.site))
    panels = list(itertools.product(targets, sites))
    rows, cols = plots.grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(plots.PAGE_WIDTH, 2.8 * rows + 1.0), squeeze=False)
    plots.drop_unused(axes, len(panels))
    for ax, (target, site) in zip(axes.flat, panels):
        here = table[(table.target == target) & (table.site == site)]
        if here[here.metric == metric].empty:  # a target this site never measured: say so, draw no empty axes
            plots.say_missing(ax, f"{target} · {site.removeprefix('hook_')}:\nnot measured on this run")
            continue
        for model, rows in here.groupby("model", sort=False):
            color = STAGE_COLORS.get(model)
            line = rows[rows.metric == metric].sort_values("layer")
            sns.lineplot(data=line, x="layer", y="value", ax=ax, color=color, marker="o", label=model)
            ax.fill_between(line.layer, line.ci_low, line.ci_high, color=color, alpha=0.2)
            if metric == "accuracy":
                for extra, style in (("control_accuracy", "--"), ("majority_accuracy", ":")):
                    rows_e = rows[rows.metric == extra].sort_values("layer")
                    ax.plot(rows_e.layer, rows_e.value, linestyle=style, color=color, alpha=0.8)
        if metric != "accuracy":
            ax.axhline(0, color="black", linewidth=0.8)
        ax.set(title=f"{target} · {site.removeprefix('hook_')}", xlabel="layer",
               ylabel=PROBE_LABELS.get(metric, metric) if ax in axes[:, 0] else "")
        ax.set_xticks(sorted(here.layer.unique()))
        if ax is not axes.flat[0] and ax.get_legend():
            ax.get_legend().remove()
        elif ax.get_legend():
            ax.legend(fontsize=plots.MIN_FONT)
    key = "; dashed: control task, dotted: majority class" if metric == "accuracy" else ""
    fig.suptitle(f"Probe {PROBE_LABELS.get(metric, metric)} per layer\n(cross-fitted; 95% bootstrap interval "
                 f"over problems{key})")
    fig.tight_layout()
    return fig


def _at_last_layer(table: pd.DataFrame, metric: str, site: str = "hook_resid_post") -> pd.DataFrame:
    """The rows of `metric` at the last layer of `site`."""
    rows = table[(table.metric == metric) & (table.site == site)]
    return rows[rows.layer == rows.layer.max()] if len(rows) else rows


def caption_accuracy(table: pd.DataFrame, models=(REFERENCE, STUDY)) -> str:
    """The accuracy figure's caption: per target, SFT's and RLVR's test accuracy at the last layer's residual
    stream, beside the majority-class baseline."""
    text = ("Probe test accuracy per layer for each target and component, with the control task (dashed) and "
            "the majority class (dotted).")
    acc, majority = _at_last_layer(table, "accuracy"), _at_last_layer(table, "majority_accuracy")
    parts = []
    for target in dict.fromkeys(acc.target) if len(acc) else []:
        shown = [f"{captions.stage(m)} {fmt.interval(r.value, [r.ci_low, r.ci_high])}"
                 for m in models for r in acc[(acc.target == target) & (acc.model == m)].itertuples()]
        base = majority[(majority.target == target) & majority.model.isin(list(models))].value
        if shown:
            parts.append(f"{target}: {captions.names(shown)} (majority class {captions.span(base)})")
    if not parts:
        return text + " Not measured on this run."
    return text + " At the last layer's residual stream, " + "; ".join(parts) + "."


def _shown(summary: dict, key: str) -> str:
    return captions.estimate(summary.get(key))


def caption_selectivity(table: pd.DataFrame, summary: dict, models=(REFERENCE, STUDY)) -> str:
    """The selectivity figure's caption: the headline selectivities (at the layer chosen on validation), RLVR's
    gain over SFT for intermediate results and the noise floor; and why the `correct` panels are empty."""
    text = "Probe selectivity (task − control accuracy) per layer for each target and component."
    parts = []
    if any(f"probe_selectivity_intermediate_{m}" in summary for m in models):
        parts.append("Intermediate results, at the layer chosen on validation: " + captions.names(
            [f"{captions.stage(m)} {_shown(summary, f'probe_selectivity_intermediate_{m}')}" for m in models]))
        gain = summary.get(f"probe_selectivity_gain_{STUDY}_vs_{REFERENCE}")
        if gain:
            parts[-1] += f"; {captions.stage(STUDY)} − {captions.stage(REFERENCE)} {captions.change(gain)}"
        if "selectivity_noise_floor" in summary:
            parts[-1] += f"; noise floor {_shown(summary, 'selectivity_noise_floor')}"
    if any(f"probe_selectivity_answer_{m}" in summary for m in models):
        parts.append("The answer's last digit: " + captions.names(
            [f"{captions.stage(m)} {_shown(summary, f'probe_selectivity_answer_{m}')}" for m in models]))
    rows = table[table.metric == "selectivity"] if len(table) else table
    empty = [t for t, r in rows.groupby("target", sort=False) if r.value.isna().all()] if len(rows) else []
    if empty:
        parts.append(f"Target {captions.names([repr(t) for t in empty])} has no selectivity (every example is its "
                     "own control type)")
    return " ".join([text, *(p + "." for p in parts)]) if parts else text + " Not measured on this run."


def caption_over_majority(table: pd.DataFrame, summary: dict, models=("base", REFERENCE, STUDY)) -> str:
    """The accuracy-over-majority figure's caption: the layer from which each model's answer is decodable, and
    how much better than the majority class SFT and RLVR predict their own correctness."""
    text = "Probe accuracy minus the majority-class baseline per layer for each target and component."
    n_layers = int(table.layer.max()) + 1 if len(table) else None
    layers = []
    for m in models:
        layer = summary.get(f"answer_decodable_layer_{m}", {}).get("value")
        if pd.notna(layer):
            where = "at no layer" if n_layers is not None and layer >= n_layers else f"from layer {layer:.0f}"
            layers.append(f"{where} ({captions.stage(m)})")
    parts = [f"The answer's last digit is decodable on the residual stream {captions.names(layers)}"] if layers else []
    correct = [f"{captions.stage(m)} {captions.change(summary[f'probe_correct_over_majority_{m}'], none='no gain detected')}"
               for m in models if m != "base" and f"probe_correct_over_majority_{m}" in summary]
    if correct:
        parts.append(f"probing a model's own correctness, accuracy over the majority class: {captions.names(correct)}")
    return " ".join([text, "; ".join(parts)[:1].upper() + "; ".join(parts)[1:] + "."]) if parts else \
        text + " Not measured on this run."


def reading(summary: dict, n_layers: int, stages=("base", REFERENCE, STUDY)) -> str:
    """A short Markdown reading of the summaries of probes.json and lens.json (merged) for the chapter's close."""
    def show(key, digits=2):
        if key not in summary:
            return "not measured"
        v = summary[key]
        if v["value"] is None:
            return "undefined"
        return fmt.interval(v["value"], v["ci"])  # at the precision its interval supports

    lines = []
    for m in stages:
        parts = []
        if f"answer_decodable_layer_{m}" in summary:
            layer = summary[f"answer_decodable_layer_{m}"]["value"]
            where = "at no layer" if layer >= n_layers else f"from layer {layer:.0f}"
            parts.append(f"the answer's last digit is decodable {where} (selectivity "
                         f"{show(f'probe_selectivity_answer_{m}')})")
        if f"probe_selectivity_intermediate_{m}" in summary:
            parts.append(f"intermediate results reach selectivity {show(f'probe_selectivity_intermediate_{m}')} "
                         "at the layer and site chosen on validation")
        lens_layer = summary.get(f"lens_answer_layer_{m}", {}).get("value")
        if lens_layer is not None and lens_layer == lens_layer:  # None (NaN) when no completion has an answer
            parts.append(f"its logit lens gives its final answer token from layer {lens_layer:.0f}")
        found = "; ".join(parts) or "no intermediate result or answer was found in the completions"
        lines.append(f"- **{m}**: {found}.")
    gain = summary.get(f"probe_selectivity_gain_{STUDY}_vs_{REFERENCE}")
    if gain and gain.get("ci"):
        lo, hi = gain["ci"]
        # described, not read as a hypothesis: the verdict reads the gain against the placebos' and nulls'
        verdict = ("RLVR made them more decodable than SFT at that layer" if lo > 0 else
                   "RLVR made them less decodable than SFT at that layer" if hi < 0 else
                   "the interval contains 0: no change detected")
        lines += ["", "RLVR − SFT selectivity for intermediate results, at the layer where RLVR gains most on "
                      f"validation: {show(f'probe_selectivity_gain_{STUDY}_vs_{REFERENCE}')}; {verdict}."]
    floor = summary.get("selectivity_noise_floor")
    if floor and floor.get("ci"):
        lines += ["", "Noise floor of selectivity (the same pipeline on shuffled features): "
                      f"{show('selectivity_noise_floor')}: a selectivity or gain inside this range is no evidence."]
    lines += ["", "Cross-model lens at the last layer (KL to the owner's output, nats): SFT's read-out on RLVR's "
                  f"stream {show(f'lens_cross_kl_{STUDY}_by_{REFERENCE}', 3)}, RLVR's on SFT's "
                  f"{show(f'lens_cross_kl_{REFERENCE}_by_{STUDY}', 3)}; for scale, the base model's read-out on SFT's "
                  f"stream {show(f'lens_cross_kl_{REFERENCE}_by_base', 3)}."]
    return "\n".join(lines)


# --- the logit lens --------------------------------------------------------------------------------------
LENS_LABELS = {"kl": "KL(final ‖ lens) [nats]", "top1_agreement": "top-1 agreement with final",
               "answer_prob": "p(answer token that follows)", "answer_rank": "rank of answer token that follows",
               "answer_agreement": "answer top-1 = final top-1"}


def lens_figure(lens_table: pd.DataFrame, metrics=("kl", "top1_agreement", "answer_prob", "answer_rank")) -> plt.Figure:
    """The plain logit lens (each model read by its own final norm + unembedding), one panel per metric."""
    own = lens_table[lens_table.model == lens_table.read_out]
    rows, cols = plots.grid(len(metrics))
    fig, axes = plt.subplots(rows, cols, figsize=(plots.PAGE_WIDTH, 2.9 * rows + 0.8), squeeze=False, sharex=True)
    plots.drop_unused(axes, len(metrics))
    for ax, metric in zip(axes.flat, metrics):
        for model, rows in own[own.metric == metric].groupby("model", sort=False):
            rows = rows.sort_values("layer")
            sns.lineplot(data=rows, x="layer", y="value", ax=ax, marker="o", color=STAGE_COLORS.get(model), label=model)
            ax.fill_between(rows.layer, rows.ci_low, rows.ci_high, color=STAGE_COLORS.get(model), alpha=0.2)
        ax.set(title=LENS_LABELS[metric], xlabel="layer (after block)", ylabel="")
        ax.set_xticks(sorted(own.layer.unique()))
        if metric == "answer_rank":
            ax.set_yscale("symlog")
        if ax is not axes.flat[0] and ax.get_legend():
            ax.get_legend().remove()
        elif ax.get_legend():
            ax.legend(fontsize=plots.MIN_FONT)
    fig.suptitle("Logit lens on the shared token cache\n(95% bootstrap interval over problems)")
    fig.tight_layout()
    return fig


def caption_lens(lens_table: pd.DataFrame, summary: dict, models=("base", REFERENCE, STUDY)) -> str:
    """The logit lens's caption: the layer from which each model's lens gives its final answer token, and the KL
    to the final output after the first block."""
    text = "Logit lens: each model's residual stream after each block, read by its own final norm and unembedding."
    layers = []
    for m in models:
        layer = summary.get(f"lens_answer_layer_{m}", {}).get("value")
        if pd.notna(layer):
            layers.append(f"{layer:.0f} ({captions.stage(m)})")
    parts = [("The lens's top-1 at the answer position matches the model's final prediction from layer "
              f"{captions.names(layers)}")] if layers else []
    own = lens_table[(lens_table.model == lens_table.read_out) & (lens_table.metric == "kl")] if len(lens_table) else lens_table
    if len(own):
        first = own[own.layer == own.layer.min()]
        kl = [f"{captions.stage(m)} {fmt.interval(r.value, [r.ci_low, r.ci_high])}"
              for m in models for r in first[first.model == m].itertuples()]
        if kl:
            parts.append(f"KL to the final output after block {int(own.layer.min())}: {captions.names(kl)} nats")
    return " ".join([text, *(p + "." for p in parts)]) if parts else text + " Not measured on this run."


def cross_figure(lens_table: pd.DataFrame, metric: str = "kl") -> plt.Figure:
    """Stitched cross-model lens: each model's residual stream (panel) after layer l, run through another
    model's later blocks and read-out (dashed, colour = that model; against that model's own output), beside
    the model's plain logit lens (solid)."""
    models = list(dict.fromkeys(lens_table.model))
    n_rows, cols = plots.grid(len(models))
    fig, axes = plt.subplots(n_rows, cols, figsize=(plots.PAGE_WIDTH, 2.9 * n_rows + 1.4), squeeze=False, sharey=True)
    plots.drop_unused(axes, len(models))
    for ax, model in zip(axes.flat, models):
        rows = lens_table[(lens_table.model == model) & (lens_table.metric == metric)]
        for read_out, line in rows.groupby("read_out", sort=False):
            line = line.sort_values("layer")
            other = read_out.removeprefix("stitch:")
            style = "-" if read_out == model else "--"
            label = "own logit lens" if read_out == model else f"{other}'s later blocks (vs its output)"
            ax.plot(line.layer, line.value, style, marker="o", color=STAGE_COLORS.get(other), label=label)
            ax.fill_between(line.layer, line.ci_low, line.ci_high, color=STAGE_COLORS.get(other), alpha=0.15)
        ax.set(title=f"{model}'s residual stream", xlabel="layer", ylabel=LENS_LABELS[metric] if ax in axes[:, 0] else "")
        ax.set_xticks(sorted(rows.layer.unique()))
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=2, fontsize=plots.MIN_FONT)
    fig.suptitle(f"Stitched cross-model lens and plain logit lens:\n{LENS_LABELS[metric]}")
    fig.tight_layout(rect=(0, 0.06 * -(-len(handles) // 2) / n_rows, 1, 1))
    return fig


def caption_cross(summary: dict) -> str:
    """The stitched lens's caption: KL (mean over layers) when SFT's later blocks read RLVR's stream and RLVR's
    read SFT's, beside the base model's on SFT's for scale."""
    text = ("Stitched cross-model lens: each model's residual stream after layer l run through another model's "
            "later blocks and read-out (dashed; KL to that model's own output), beside its own logit lens (solid).")
    reads = [(REFERENCE, STUDY), (STUDY, REFERENCE), ("base", REFERENCE)]
    parts = [f"{captions.stage(reader)}'s on {captions.stage(stream)}'s {_shown(summary, f'lens_stitch_kl_{stream}_into_{reader}')}"
             for reader, stream in reads if f"lens_stitch_kl_{stream}_into_{reader}" in summary]
    if not parts:
        return text + " Not measured on this run."
    parts[0] = parts[0].replace("'s on", "'s later blocks on", 1)
    return text + " KL averaged over layers (nats): " + "; ".join(parts) + "."


def targets_tables(targets: list[dict]) -> dict[str, pd.DataFrame]:
    """probes.json's 'targets' (one record per model and target, ten counts and shares each) as one narrow
    table per target: a row per quantity, a column per model, so it fits a phone's width."""
    frame = pd.DataFrame(targets)
    out = {}
    for target, rows in frame.groupby("target", sort=False):
        table = rows.drop(columns="target").set_index("model").T.rename_axis(index="quantity", columns=None)
        out[target] = table.reset_index()
    return out
