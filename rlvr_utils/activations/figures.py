"""A first look at a store: mean activation norms per model, layer and site.

The plotting libraries are imported when drawing: this package is imported by every extraction process.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rlvr_utils.activations.store import ActivationStore

if TYPE_CHECKING:
    import matplotlib.pyplot as plt
    import pandas as pd


def describe_store(store: ActivationStore, selection: str) -> pd.DataFrame:
    """Mean L2 norm of each stored site per model at one selection: a sanity check and a first look at
    how the models' streams differ in scale. Columns: model, layer, site, norm, n, d."""
    import pandas as pd

    records = []
    for model in store.models():
        meta = store.meta(model)
        if selection not in meta["positions"]:
            continue
        for name in meta["site_names"]:
            layer, site = int(name.split(".")[1]), name.split(".")[2]
            chunks = [np.linalg.norm(c.astype(np.float64), axis=1) for c in store.iter_chunks(model, name, selection, 4096)]
            norms = np.concatenate(chunks) if chunks else np.zeros(0)
            records.append({"model": model, "layer": layer, "site": site.removeprefix("hook_"),
                            "norm": float(norms.mean()) if len(norms) else float("nan"), "n": len(norms),
                            "d": meta["d_model"]})
    return pd.DataFrame(records)


def caption_norms(table, pairs=(("sft", "rlvr"), ("base", "sft"))) -> str:
    """Where a model's mean norm differs most from the one before it (relative change), per pair of models."""
    from rlvr_utils.core import fmt

    wide = table.pivot_table(index=["site", "layer"], columns="model", values="norm")
    parts = []
    for before, after in pairs:
        if before in wide and after in wide:
            change = (wide[after] - wide[before]) / wide[before]
            site, layer = change.abs().idxmax()
            parts.append(f"from {before} to {after}, {fmt.number(100 * change[(site, layer)], sign=True)}% "
                         f"({site}, layer {layer})")
    text = "Mean L2 norm of the stored activations per layer and site."
    return text + (" The largest relative change of a mean norm: " + "; ".join(parts) + "." if parts else "")


def plot_norms(table) -> plt.Figure:
    """Mean activation norm per layer, one panel per site, one line per model."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from rlvr_utils.core import plots
    from rlvr_utils.core.plots import STAGE_COLORS

    sites = list(dict.fromkeys(table["site"]))
    rows, cols = plots.grid(len(sites))
    fig, axes = plt.subplots(rows, cols, figsize=(plots.PAGE_WIDTH, 2.7 * rows + 0.8), squeeze=False, sharex=True)
    plots.drop_unused(axes, len(sites))
    for ax, site in zip(axes.flat, sites):
        sns.lineplot(table[table["site"] == site], x="layer", y="norm", hue="model", marker="o",
                     palette={m: STAGE_COLORS.get(m, "black") for m in table["model"].unique()}, ax=ax)
        ax.set_title(site)
        ax.set_xlabel("layer")
        ax.set_ylabel("mean L2 norm" if ax in axes[:, 0] else "")
        ax.set_xticks(sorted(table["layer"].unique()))
        if ax is not axes.flat[0] and ax.get_legend():
            ax.get_legend().remove()
        elif ax.get_legend():
            ax.legend(fontsize=plots.MIN_FONT)
    fig.suptitle("Activation norms per layer at the stored positions")
    fig.tight_layout()
    return fig
