"""The dictionary-transfer figure and caption, drawn from metrics/transfer.json and the treatments' kinds."""
from __future__ import annotations

from rlvr_utils.core import captions, fmt, plots

KEY = "dictionary_excess_fvu"
LINEAR_BELOW = 1e-4  # symlog: linear within ±1e-4, so a placebo's 0.0005 and a planted feature's 0.03 both show


def _rows(result: dict) -> list[tuple[str, dict]]:
    return [(name, v[KEY]) for name, v in result.get("variants", {}).items() if v.get(KEY, {}).get("value") is not None]


def plot_excess(result: dict, kinds: dict[str, str]):
    """Each treatment's excess FVU through SFT's dictionary with its interval, coloured by kind; the placebos'
    intervals shaded, so a reader sees which treatments leave what SFT's features cannot explain."""
    import matplotlib.pyplot as plt

    rows = _rows(result)
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH, 0.36 * max(len(rows), 1) + 1.5))
    placebos = [e for name, e in rows if kinds.get(name) == "placebo"]
    if placebos:
        ax.axvspan(min(e["ci"][0] for e in placebos), max(e["ci"][1] for e in placebos), color="0.85",
                   label="placebos' intervals")
    for i, (name, e) in enumerate(rows):
        color = plots.KIND_COLORS.get(kinds.get(name), "#555555")
        ax.errorbar([e["value"]], [i], xerr=[[e["value"] - e["ci"][0]], [e["ci"][1] - e["value"]]], fmt="o",
                    color=color, capsize=3)
    ax.axvline(0, color="0.3", lw=1, ls="--")
    ax.set_xscale("symlog", linthresh=LINEAR_BELOW)
    if rows:  # a little room left of 0 (the nulls' intervals), none wasted on negative decades
        ax.set_xlim(min(-LINEAR_BELOW, min(e["ci"][0] for _, e in rows)), 2 * max(e["ci"][1] for _, e in rows))
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("FVU minus SFT's (95% CI; symlog axis)")  # the grey band: the placebos' intervals
    ax.set_title("What SFT's dictionary cannot explain")
    fig.tight_layout()
    return fig


def caption_excess(result: dict, kinds: dict[str, str]) -> str:
    """RLVR's excess FVU against the placebos' and nulls' intervals, the controls that leave a residue, SFT's own
    FVU and base's excess (the yardstick)."""
    summary = result.get("summary", {})
    variants = {name: e for name, e in _rows(result)}
    text = (f"Fraction of each treatment's variance that SFT's sparse dictionary ({fmt.number(result.get('seeds'))} "
            f"dictionaries fitted on half of the problems) leaves unexplained on the other half, minus SFT's own "
            f"({captions.estimate(summary.get('transfer_sft_fvu'))}); 95% paired bootstrap intervals over "
            f"{fmt.number(result.get('n_problems_read'))} problems.")
    study = variants.get("rlvr")
    if study is None:
        return text + " RLVR: not measured."
    refs = {kind: [e for name, e in variants.items() if kinds.get(name) == kind] for kind in ("placebo", "null")}
    parts = [f"RLVR {captions.change(study)}, {captions.against(study, refs['placebo'], 'placebo', 'placebos')} "
             f"and {captions.against(study, refs['null'], 'null', 'nulls', show_range=False)}"]
    controls = [f"{name} {captions.estimate(e)}" for name, e in variants.items()
                if kinds.get(name) == "control" and captions.against(e, refs["placebo"], "p", "p") == "above every p"]
    parts.append(f"controls above every placebo: {captions.names(controls)}" if controls
                 else "no control lies above every placebo")
    if summary.get("transfer_base_excess_fvu"):
        parts.append(f"base (the yardstick, not drawn) {captions.estimate(summary['transfer_base_excess_fvu'])}")
    return text + " " + "; ".join(parts) + "."
