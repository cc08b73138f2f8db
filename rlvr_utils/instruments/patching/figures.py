"""Figures, tables and a reading of the patching and grafting results (metrics/patching.json and
metrics/grafting.json), for the patching chapter."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from rlvr_utils.core import captions, fmt, plots
from rlvr_utils.instruments.patching.grafting import GAIN_NOTE
from rlvr_utils.treatments.registry import REFERENCE, REFERENCE_KINDS, STUDY

SITE_LABELS = {"hook_resid_pre": "resid_pre", "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out",
               "hook_resid_post": "resid_post"}
COMPONENT_COLORS = {"attn": "#1f77b4", "mlp": "#ff7f0e"}


def layer_frame(report: dict):
    """Per layer and component (pandas, long form): total effect (activation patching at every position up to
    the answer, later components recompute), direct effect (same input, later components frozen), direct
    effect with own-run donor outputs; nats with intervals."""
    records = []
    for p in report["patches"]:
        comp = {"hook_attn_out": "attn", "hook_mlp_out": "mlp"}.get(p["site"])
        if comp and len(p["layers"]) == 1 and p["positions"] == "all":
            records.append({"layer": p["layers"][0], "component": comp, "effect": "total", **_flat(p["effect"])})
    for r in report["components"]:
        records.append({"layer": r["layer"], "component": r["component"], "effect": "direct", **_flat(r["direct"])})
        records.append({"layer": r["layer"], "component": r["component"], "effect": "direct (own run)",
                        **_flat(r["direct_own_run"])})
    return pd.DataFrame(records)


def _flat(estimate: dict) -> dict:
    ci = estimate.get("ci") or [np.nan, np.nan]
    value = estimate.get("value")
    return {"value": np.nan if value is None else value, "lo": np.nan if ci[0] is None else ci[0],
            "hi": np.nan if ci[1] is None else ci[1]}


def plot_layers(report: dict, title: str, effects=("total", "direct")):
    """One panel per effect kind: per layer, the attention and MLP effect (nats, 95% interval) on the answer
    tokens' mean log-probability; the donor - receiver gap as a dashed line for scale."""
    frame = layer_frame(report)
    fig, axes = plt.subplots(1, len(effects), figsize=(plots.PAGE_WIDTH, 3.8), squeeze=False, sharey=True)
    gap = report["total_effect"]["value"]
    for ax, kind in zip(axes[0], effects):
        rows = frame[frame.effect == kind]
        for offset, (comp, part) in zip((-0.18, 0.18), rows.groupby("component", sort=False)):
            ax.bar(part.layer + offset, part.value, width=0.36, color=COMPONENT_COLORS[comp], label=comp)
            ax.errorbar(part.layer + offset, part.value, yerr=np.abs(np.vstack([part.value - part.lo, part.hi - part.value])),
                        fmt="none", ecolor="black", capsize=2, lw=0.8)
        ax.axhline(0, color="black", lw=0.8)
        if gap is not None:
            ax.axhline(gap, color="#d62728", ls="--", lw=1, label="donor − receiver")
        ax.set(title=f"{kind} effect", xlabel="layer", ylabel="Δ mean log p(answer) [nats]" if ax is axes[0][0] else "")
        ax.set_xticks(sorted(frame.layer.unique()))
    axes[0][0].legend(fontsize=plots.MIN_FONT)
    fig.suptitle(f"{title} ({report['n_problems']} problems)")
    fig.tight_layout()
    return fig


def variants_frame(results: dict):
    """One row per treatment: attention and MLP direct effects summed over layers and the total effect."""
    rows = []
    for name, measures in results["variants"].items():
        n = results["cross_model"][f"{name}_into_{REFERENCE}"]["n_problems"]
        for key, entry in measures.items():
            rows.append({"treatment": name, "measure": key, "n_problems": n, **_flat(entry)})
    return pd.DataFrame(rows)


def _shown(row) -> str:
    value = None if np.isnan(row["value"]) else row["value"]
    return fmt.interval(value, None if np.isnan(row["lo"]) else (row["lo"], row["hi"]), sign=True)


def variants_table(results: dict):
    """Per treatment (donor into SFT): attention and MLP direct effects summed over layers and the total effect,
    each with its 95% interval at the precision the interval supports (nats)."""
    frame = variants_frame(results)
    names = {"attn_direct_effect": "attention direct", "mlp_direct_effect": "MLP direct", "total_effect": "total"}
    frame = frame[frame.measure.isin(names)].assign(shown=lambda f: f.apply(_shown, axis=1))
    table = frame.pivot(index="treatment", columns="measure", values="shown")
    table = table.loc[list(dict.fromkeys(frame.treatment)), [m for m in names if m in table.columns]]
    return table.rename(columns=names).reset_index()


def layer_table(report: dict):
    """Per layer and component: total, direct and own-run direct effects (nats) with their intervals."""
    frame = layer_frame(report).assign(shown=lambda f: f.apply(_shown, axis=1))
    return frame.pivot(index=["layer", "component"], columns="effect", values="shown").reset_index()


def plot_variants(results: dict):
    """Per treatment (donor into SFT): attention and MLP direct effects summed over layers, and the total
    effect, with 95% intervals."""
    frame = variants_frame(results)
    names = list(dict.fromkeys(frame.treatment))
    measures = {"attn_direct_effect": ("attention direct", COMPONENT_COLORS["attn"]),
                "mlp_direct_effect": ("MLP direct", COMPONENT_COLORS["mlp"]), "total_effect": ("total", "#7f7f7f")}
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH, 0.55 * len(names) + 1.8))
    for offset, (key, (label, color)) in zip((-0.25, 0.0, 0.25), measures.items()):
        part = frame[frame.measure == key].set_index("treatment").loc[names]
        y = np.arange(len(names)) + offset
        ax.barh(y, part.value, height=0.24, color=color, label=label)
        ax.errorbar(part.value, y, xerr=np.abs(np.vstack([part.value - part.lo, part.hi - part.value])), fmt="none",
                    ecolor="black", capsize=2, lw=0.8)
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Δ mean log p(answer tokens) in SFT [nats]\n(95% bootstrap CI)")
    ax.set_title("Each treatment's components patched into SFT: direct effects summed over layers")
    ax.legend(fontsize=plots.MIN_FONT, loc="best")
    fig.tight_layout()
    return fig


def plot_heatmaps(reports: dict[str, dict], titles: dict[str, str], suptitle: str = ""):
    """Clean/corrupted patching: one heatmap (layer x site@positions, normalised effect) per model."""
    def table(report):
        frame = pd.DataFrame([{"layer": str(p["layers"][0]), "column": f"{SITE_LABELS[p['site']]}@{p['positions']}",
                               "effect": _flat(p["normalised"])["value"]}
                              for p in report["patches"] if len(p["layers"]) == 1])
        out = frame.pivot(index="layer", columns="column", values="effect")
        return out.loc[sorted(out.index, key=int), list(dict.fromkeys(frame["column"]))]

    tables = {name: table(r) for name, r in reports.items()}
    # one model per row: side by side, the cells' numbers would be too small to read at the page's width
    height = 0.42 * max(t.shape[0] for t in tables.values()) + 2.0
    fig, axes = plt.subplots(len(reports), 1, figsize=(plots.PAGE_WIDTH, height * len(reports)), squeeze=False)
    for ax, (name, report) in zip(axes[:, 0], reports.items()):
        sns.heatmap(tables[name].astype(float), ax=ax, annot=True, fmt=".2f", cmap="RdBu_r", center=0, vmin=-1,
                    vmax=1, annot_kws={"fontsize": plots.MIN_FONT}, cbar_kws={"label": "normalised effect"})
        ax.set_title(f"{titles.get(name, name)} ({report['n_problems']} problems)")
        ax.set_xlabel("patched site @ positions")
        ax.set_ylabel("layer")
        ax.set_xticks(ax.get_xticks(), ax.get_xticklabels(), rotation=35, ha="right")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _fmt(entry: dict | None, digits: int = 2) -> str:
    """A value with its interval at the precision the interval supports (`digits` is kept for callers; the
    interval decides): direct effects of 5e-4 nats print as such, not as '+0.00 [0.00, 0.00]'."""
    if not entry or entry.get("value") is None:
        return (entry or {}).get("note", "n/a")
    return f"**{fmt.interval(entry['value'], entry.get('ci'), sign=True)}**"


def reading(results: dict, grafts: dict) -> str:
    """A short reading of this run's numbers (markdown) for the chapter's closing summary: `results` is
    metrics/patching.json, `grafts` metrics/grafting.json."""
    parts = []
    if grafts.get("rows"):
        gain, s = grafts["gain"], grafts["summary"]
        lo, hi = gain["ci"] if gain.get("ci") else (float("nan"), float("nan"))
        parts.append(
            f"On {grafts['n_problems']} held-out problems RLVR answers {grafts['donor']['value']:.1%} correctly and "
            f"SFT {grafts['receiver']['value']:.1%}: a gain of {100 * gain['value']:+.1f} points (95% CI "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}]). Grafting RLVR's attention into SFT recovers a share "
            f"{_fmt(s.get('graft_attn_share'))} of that gain, its MLPs {_fmt(s.get('graft_mlp_share'))}, both "
            f"{_fmt(s.get('graft_attn_mlp_share'))}.")
    treatments = [
        f"- **{name}** into SFT ({results['cross_model'][f'{name}_into_{REFERENCE}']['n_problems']} problems): total "
        f"effect {_fmt(m['total_effect'])}; direct effects summed over layers: attention "
        f"{_fmt(m['attn_direct_effect'])}, MLP {_fmt(m['mlp_direct_effect'])}."
        for name, m in results["variants"].items()]
    parts.append("Per treatment, the change in SFT's mean log-probability of the answer tokens (nats, 95% CI):\n\n"
                 + "\n".join(treatments))
    within = results.get("within_model")
    if within and "skipped" not in within:
        parts.append(_within_reading(within))
    return "\n\n".join(parts)


def _within_reading(within: dict) -> str:
    """Which component at the copy position carries the corrupted number in SFT, and the same cell in RLVR."""
    candidates = [(i, p) for i, p in enumerate(within[REFERENCE]["patches"])
                  if p["site"] != "hook_resid_pre" and p["positions"] == "target" and p["normalised"]["value"] is not None]
    if not candidates:
        return "The clean and corrupted runs do not differ distinguishably: the information flow cannot be read."
    i, best = max(candidates, key=lambda c: c[1]["normalised"]["value"])
    rlvr = within[STUDY]["patches"][i]["normalised"]["value"]
    text = (f"Inside each model ({within[REFERENCE]['n_problems']} problems), the corrupted number reaches the position "
            f"where the working copies it mainly through layer {best['layers'][0]}'s {SITE_LABELS[best['site']]}: "
            f"restoring it brings back {best['normalised']['value']:.2f} of the clean preference in SFT and ")
    return text + ("an unmeasured share in RLVR." if rlvr is None else f"{rlvr:.2f} in RLVR.")


# --- grafting ---------------------------------------------------------------------------------------
def table_frame(result: dict):
    """The grafting table (pandas): accuracy and share of the gain per hybrid, with intervals."""
    def shown(entry):
        return entry.get("note") or fmt.interval(entry.get("value"), entry.get("ci"))

    accuracy, share = "accuracy [95% CI]", "share of the gain [95% CI]"
    rows = [{"model": "SFT (receiver)", accuracy: shown(result["receiver"]), share: "0 (by definition)"}]
    rows += [{"model": f"SFT + RLVR {row['graft']}", accuracy: shown(row["accuracy"]), share: shown(row["share"])}
             for row in result["rows"]]
    rows.append({"model": "RLVR (donor)", accuracy: shown(result["donor"]), share: "1 (by definition)"})
    return pd.DataFrame(rows)


def plot_shares(result: dict):
    """Bar chart: share of the SFT -> RLVR accuracy gain each graft recovers, with bootstrap intervals."""
    kinds = {("attn",): "attention", ("mlp",): "MLP"}
    frame = pd.DataFrame([{
        "graft": r["graft"], "kind": kinds.get(tuple(r["components"]), "attention + MLP"),
        "share": np.nan if r["share"]["value"] is None else r["share"]["value"],
        "lo": np.nan if r["share"]["ci"] is None else r["share"]["ci"][0],
        "hi": np.nan if r["share"]["ci"] is None else r["share"]["ci"][1]} for r in result["rows"]])
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH, 0.45 * len(frame) + 1.8))
    sns.barplot(frame, x="share", y="graft", hue="kind", dodge=False, legend=False, ax=ax,
                palette={"attention": "#1f77b4", "MLP": "#ff7f0e", "attention + MLP": "#7f7f7f"})
    ax.errorbar(frame["share"], np.arange(len(frame)), fmt="none", ecolor="black", capsize=3,
                xerr=np.abs(np.vstack([frame["share"] - frame["lo"], frame["hi"] - frame["share"]])))
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(1, color="#d62728", lw=1, ls="--", label="RLVR's full gain")
    ax.set_xlabel("share of RLVR's gain over SFT recovered\n(95% bootstrap CI)")
    ax.set_ylabel("RLVR weights\ngrafted into SFT")
    gain, n = result["gain"], len(result["donor"]["correct"])
    note = "" if gain.get("ci") and (gain["ci"][0] > 0 or gain["ci"][1] < 0) else f": {GAIN_NOTE}, no share is reported"
    ax.set_title(f"Grafting RLVR components into SFT\n(RLVR - SFT accuracy gain {100 * gain['value']:+.1f} points on "
                 f"{n} problems{note})")
    if frame["share"].isna().all():  # nothing measured: say so rather than show empty bars
        ax.text(0.5, 0.5, "no share measured on this run", transform=ax.transAxes, ha="center", va="center",
                color="0.35", bbox={"facecolor": "white", "edgecolor": "none"})
    ax.legend(loc="lower right", fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig


def plot_graft_gains(result: dict, kinds: dict[str, str]):
    """Every treatment's attention update alone and MLP update alone grafted into SFT: accuracy gain over SFT in
    points with paired 95% intervals, one row per treatment (`kinds`: registry.kinds, to label them). The
    behavioural row of the verdict reads these against the placebos'."""
    rows = []
    for name, measures in result.get("variants", {}).items():
        for key, side in (("attn_graft_gain", "attention alone"), ("mlp_graft_gain", "MLP alone")):
            if measures.get(key, {}).get("ci"):
                m = measures[key]
                rows.append({"treatment": f"{name} ({kinds.get(name, '?')})", "graft": side,
                             "gain": 100 * m["value"], "lo": 100 * m["ci"][0], "hi": 100 * m["ci"][1]})
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH, 0.42 * max(frame["treatment"].nunique(), 1) + 1.8))
    if frame.empty:
        plots.say_missing(ax, "no treatment's graft was measured on this run")
        return fig
    order = list(dict.fromkeys(frame["treatment"]))
    for offset, (side, color) in zip((-0.17, 0.17), (("attention alone", "#1f77b4"), ("MLP alone", "#ff7f0e"))):
        part = frame[frame["graft"] == side]
        y = np.array([order.index(t) for t in part["treatment"]]) + offset
        ax.errorbar(part["gain"], y, xerr=[part["gain"] - part["lo"], part["hi"] - part["gain"]], fmt="o",
                    color=color, capsize=3, label=f"{side} into SFT")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.set_xlabel("greedy accuracy gain over SFT,\npoints (paired 95% CI)")
    ax.set_title("One component's update alone, grafted into SFT")
    ax.legend(loc="best", fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig


# --- captions ---------------------------------------------------------------------------------------
# Each figure's caption says what it plots and what this run shows, with numbers from the metrics the figure
# draws (rlvr_utils.core.captions): an interval that holds 0 is "no change detected", never a direction.
# registry.REFERENCE_KINDS as the prose names them
REFERENCE_NAMES = dict(zip(REFERENCE_KINDS, ("placebos", "nulls", "identical copy")))


def _measured(entry) -> bool:
    value = entry.get("value") if isinstance(entry, dict) else None
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _bounds(entry: dict) -> tuple[float, float]:
    ci = entry.get("ci")
    if ci and len(ci) == 2 and all(isinstance(c, (int, float)) and np.isfinite(c) for c in ci):
        return float(ci[0]), float(ci[1])
    return float(entry["value"]), float(entry["value"])


def _references(variants: dict, key: str, kinds: dict[str, str]) -> tuple[list[dict], list[str]]:
    """The measured entries `key` of the treatments known to carry no task signal (placebos, nulls, the
    identical copy), and the plural names of the kinds found, in that order."""
    entries, found = [], []
    for name, measures in variants.items():
        kind = kinds.get(name)
        entry = (measures or {}).get(key)
        if kind in REFERENCE_KINDS and _measured(entry):
            entries.append(entry)
            found.append(kind)
    return entries, [REFERENCE_NAMES[k] for k in REFERENCE_KINDS if k in found]


def _envelope(references: list[dict], scale: float = 1.0, unit: str = "") -> tuple[float, float, str]:
    """The span of the references' intervals: (lo, hi, '[lo, hi]' printed together, at one precision)."""
    lo = min(_bounds(r)[0] for r in references)
    hi = max(_bounds(r)[1] for r in references)
    if lo == hi:
        return lo, hi, fmt.number(lo * scale, sign=True) + unit
    shown = fmt.interval((lo + hi) / 2, [lo, hi], scale=scale, unit=unit, sign=True)
    return lo, hi, shown[shown.index("["):]


def _against(variants: dict, study: dict, keys, thing: str, kinds, scale: float = 1.0, unit: str = "") -> str:
    """'The placebos, nulls and identical copy span attention [a, b] and MLP [c, d]; RLVR's attention and MLP
    <thing>s lie beyond every one of those intervals' (or within those spans): the first half of the verdict's
    test, which also asks for a distance from the placebos' mean (rlvr_utils.evidence.verdict.read_signal)."""
    spans, where, names = [], {}, []
    for key, label in keys:
        references, found = _references(variants, key, kinds)
        if not references or not _measured(study.get(key)):
            continue
        names = names or found
        lo, hi, shown = _envelope(references, scale, unit)
        spans.append(f"{label} {shown}")
        own = _bounds(study[key])
        side = "beyond every one of those intervals" if own[0] > hi or own[1] < lo else "within those spans"
        where.setdefault(side, []).append(label)
    if not spans:
        return "No placebo or null was measured to compare RLVR with."
    sides = [f"{captions.names(labels)} {thing}{'s' if len(labels) > 1 else ''} "
             f"{'lie' if len(labels) > 1 else 'lies'} {side}" for side, labels in where.items()]
    return (f"Intervals of the {captions.names(names)} span {captions.names(spans)}; RLVR's "
            + ", its ".join(sides) + ".")


def caption_variants(results: dict, kinds: dict[str, str]) -> str:
    """RLVR's attention and MLP direct effects and total effect in SFT, each against the span of the placebos',
    nulls' and identical copy's intervals (`kinds`: registry.kinds)."""
    variants = results.get("variants") or {}
    n = ((results.get("cross_model") or {}).get(f"{STUDY}_into_{REFERENCE}") or {}).get("n_problems")
    what = ("Each treatment's components patched into SFT: attention and MLP direct effects (summed over layers) "
            f"and total effect, nats, 95% CI{f', {n} problems' if n else ''}.")
    study = variants.get(STUDY)
    if not study:
        return f"{what} RLVR's effects were not measured."
    parts = [f"{label} {captions.change(study.get(key))}" for key, label in
             (("attn_direct_effect", "attention"), ("mlp_direct_effect", "MLP"), ("total_effect", "total"))]
    text = f"{what} RLVR: " + ", ".join(parts) + "."
    keys = (("attn_direct_effect", "attention"), ("mlp_direct_effect", "MLP"))
    return f"{text} {_against(variants, study, keys, 'effect', kinds)}"


def caption_layers(report: dict) -> str:
    """One direction of cross-model patching (donor's components in the receiver), per layer: the donor −
    receiver gap, the largest total effect, and which direct effects are distinguishable from zero."""
    donor, receiver = captions.stage(report.get("donor", "donor")), captions.stage(report.get("receiver", "receiver"))
    n = report.get("n_problems")
    what = (f"{donor}'s components patched into {receiver}, per layer: total (left) and direct (right) effect on "
            f"the answer tokens' mean log-probability (nats, 95% CI{f', {n} problems' if n else ''}).")
    frame = layer_frame(report) if report.get("patches") is not None and report.get("components") is not None \
        else pd.DataFrame(columns=["layer", "component", "effect", "value", "lo", "hi"])
    parts = [f"{donor} − {receiver} gap {captions.change(report.get('total_effect'))}"]
    label = {"attn": "attention", "mlp": "MLP"}

    def entry(row):
        return {"value": row["value"], "ci": None if np.isnan(row["lo"]) else [row["lo"], row["hi"]]}

    total = frame[(frame.effect == "total") & frame.value.notna()]
    if len(total):
        top = total.loc[total.value.abs().idxmax()]
        parts.append(f"largest total effect at layer {int(top.layer)}'s {label.get(top.component, top.component)}, "
                     f"{captions.change(entry(top))}")
    direct = frame[(frame.effect == "direct") & frame.value.notna()]
    if len(direct):
        clear = [f"layer {int(r.layer)}'s {label.get(r.component, r.component)} {captions.change(entry(r))}"
                 for _, r in direct.iterrows() if captions.excludes_zero(entry(r))]
        parts.append("direct effects distinguishable from zero: " + (captions.names(clear) if clear else "none"))
    else:
        parts.append("direct effects not measured")
    return f"{what} " + "; ".join(parts) + "."


def caption_heatmaps(within: dict) -> str:
    """Clean → corrupted patching inside each model: the site that restores most of the clean preference where
    the completion copies the number, in SFT and in RLVR, and how far the two maps differ."""
    what = ("Clean → corrupted patching inside each model: share of the clean run's preference for the clean "
            "digit that restoring one site of one layer brings back.")
    if not within or "skipped" in within or REFERENCE not in within:
        return f"{what} Not measured on this run."
    reference, study = within[REFERENCE], within.get(STUDY) or {}

    def cell(p):
        return p["site"], tuple(p["layers"]), p["positions"]

    studied = {cell(p): p for p in study.get("patches", [])}
    candidates = [p for p in reference.get("patches", []) if p["site"] != "hook_resid_pre"
                  and p["positions"] == "target" and _measured(p.get("normalised"))]
    if not candidates:
        return (f"{what} The clean and corrupted runs do not differ distinguishably in SFT: the information flow "
                "cannot be read.")
    best = max(candidates, key=lambda p: p["normalised"]["value"])
    site = f"layer {best['layers'][0]}'s {SITE_LABELS.get(best['site'], best['site'])}"
    other = studied.get(cell(best), {}).get("normalised")
    n = reference.get("n_problems")
    text = (f"{what} Where the completion copies the number, {site} restores the most in SFT, "
            f"{captions.estimate(best['normalised'])}{f' ({n} problems)' if n else ''}; in RLVR "
            f"{captions.estimate(other) if _measured(other) else 'not measured'}.")
    gaps = [abs(p["normalised"]["value"] - studied[cell(p)]["normalised"]["value"])
            for p in reference.get("patches", []) if cell(p) in studied
            and _measured(p.get("normalised")) and _measured(studied[cell(p)].get("normalised"))]
    if gaps:
        text += f" Cell by cell, the two maps differ by at most {fmt.number(max(gaps))}."
    return text


def caption_shares(grafts: dict) -> str:
    """The RLVR − SFT accuracy gain and the share of it each graft recovers, or why no share is reported."""
    n = grafts.get("n_problems")
    what = (f"Share of RLVR's greedy accuracy gain over SFT recovered by grafting RLVR's weights into SFT "
            f"(paired 95% CI{f', {n} problems' if n else ''}).")
    gain = grafts.get("gain")
    if not grafts.get("rows") or not _measured(gain):
        return f"{what} Not measured on this run."
    text = f"{what} RLVR − SFT gain {captions.change(gain, scale=100, unit=' points')}"
    if not captions.excludes_zero(gain):
        return text + f": {GAIN_NOTE}, so no share is reported."
    shares = [f"{row.get('graft', '?')} {captions.estimate(row.get('share'))}" for row in grafts["rows"]]
    return text + "; shares recovered: " + ", ".join(shares) + "."


def caption_graft_gains(grafts: dict, kinds: dict[str, str]) -> str:
    """RLVR's attention-alone and MLP-alone graft gains, each against the span of the placebos', nulls' and
    identical copy's intervals (`kinds`: registry.kinds)."""
    variants = grafts.get("variants") or {}
    what = ("Greedy accuracy gain over SFT of SFT with one component's update alone, per treatment "
            "(points, paired 95% CI).")
    study = variants.get(STUDY)
    if not study:
        return f"{what} RLVR's grafts were not measured."
    points = {"scale": 100, "unit": " points"}
    keys = (("attn_graft_gain", "attention"), ("mlp_graft_gain", "MLP"))
    text = f"{what} RLVR: " + ", ".join(f"{label} alone {captions.change(study.get(key), **points)}"
                                        for key, label in keys) + "."
    return f"{text} {_against(variants, study, keys, 'graft', kinds, **points)}"
