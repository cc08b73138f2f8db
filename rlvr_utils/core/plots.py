"""Seaborn figure helpers shared by the notebooks: one style, and every figure saved under the run."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
STAGE_COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "rlvr": "#d62728"}


def save(fig: plt.Figure, cfg, name: str, caption: str | None = None) -> Path:
    """Save `fig` as runs/<name>/figures/<name>.png. In a notebook, show it here with its caption (the book
    numbers it as a figure: rlvr_utils.publish); the caption defaults to the figure's title."""
    path = cfg.path("figures", f"{name}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _show(fig, caption or figure_title(fig))
    return path


def figure_title(fig: plt.Figure) -> str:
    """The suptitle, else the axes' titles joined."""
    if fig._suptitle is not None and fig._suptitle.get_text():
        return fig._suptitle.get_text()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    return "; ".join(dict.fromkeys(titles))


def _show(fig: plt.Figure, caption: str) -> None:
    """Display now, with the caption in the output's metadata, and close (the inline backend would show it
    a second time, without one)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is None or "IPKernelApp" not in get_ipython().config:
        return
    display(fig, metadata={"caption": caption})
    plt.close(fig)


def training_curves(history: list[dict], panels: dict[str, str], title: str) -> plt.Figure:
    """One panel per logged quantity (key -> panel title) against the training step."""
    import pandas as pd

    frame = pd.DataFrame([h for h in history if "step" in h])
    keys = [k for k in panels if k in frame]
    # at most two panels per row: four in one row are too short to read at the book's page width
    cols = min(2, max(1, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        rows = frame[["step", key]].dropna().astype(float)
        sns.lineplot(data=rows, x="step", y=key, ax=ax, marker="o", markersize=3)
        ax.set(title=panels[key], xlabel="training step", ylabel=key)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pass_at_k(metrics: dict) -> plt.Figure:
    """pass@k with its bootstrap interval for each stage, k on a log axis."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for stage, by_k in metrics["pass_at_k"].items():
        ks = [int(k) for k in by_k]
        values = [by_k[k]["value"] for k in by_k]
        lo = [by_k[k]["ci"][0] for k in by_k]
        hi = [by_k[k]["ci"][1] for k in by_k]
        ax.plot(ks, values, marker="o", color=STAGE_COLORS.get(stage), label=stage)
        ax.fill_between(ks, lo, hi, color=STAGE_COLORS.get(stage), alpha=0.2)
    ax.set(xscale="log", xlabel="k (samples per problem)", ylabel="pass@k", ylim=(0, 1.02),
           title="pass@k on held-out problems (95% bootstrap CI)")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend(title="model")
    return fig


KIND_COLORS = {"study": STAGE_COLORS["rlvr"], "control": "#2ca02c",  # nulls and copies: grey
               "user": "#9467bd"}


def variant_gains(eval_metrics: dict, kinds: dict[str, str]) -> plt.Figure:
    """Greedy accuracy gain over SFT of every treatment (paired 95% interval), coloured by kind (`kinds`:
    {treatment: kind}, treatments.registry.kinds): RLVR, the controls, the identical model and the nulls, so a
    reader sees at once whether one component alone reaches RLVR's gain."""
    rows = [(name, v["gain"]) for name, v in eval_metrics.get("variants", {}).items()]
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(rows), 1) + 1.4))
    for i, (name, gain) in enumerate(rows):
        color = KIND_COLORS.get(kinds.get(name), "#555555")
        lo, hi = 100 * gain["ci"][0], 100 * gain["ci"][1]
        ax.errorbar([100 * gain["value"]], [i], xerr=[[100 * gain["value"] - lo], [hi - 100 * gain["value"]]],
                    fmt="o", color=color, capsize=4)
    ax.axvline(0, color="0.3", lw=1, ls="--")
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.invert_yaxis()
    ax.set(xlabel="greedy accuracy minus SFT's (points, paired 95% CI)",
           title="Accuracy gain over SFT: RLVR, its controls and its nulls")
    fig.tight_layout()
    return fig
