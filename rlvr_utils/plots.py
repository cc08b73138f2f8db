"""Seaborn figure helpers shared by the notebooks: one style, and every figure saved under the run."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
STAGE_COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "rlvr": "#d62728"}


def save(fig: plt.Figure, cfg, name: str) -> Path:
    """Save `fig` as runs/<name>/figures/<name>.png (the notebook still shows it inline)."""
    path = cfg.path("figures", f"{name}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
