"""The evidence table as the book shows it: one row per measurement, a column per treatment, coloured by
reading, the calibration figure and the thresholds; built from the verdict's result (rlvr_utils.evidence.verdict)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from rlvr_utils.core.fmt import observed
from rlvr_utils.treatments.registry import BOTH, NO_EVIDENCE, NOT_MEASURED, REDUNDANT, REPRESENTATION, ROUTING


def _signals_text(signals: list[dict]) -> str:
    parts = []
    for s in signals:
        if s["value"] is None:
            continue
        env = s["null_envelope"]
        nulls = f"references [{env[0]:.3g}, {env[1]:.3g}]" if env else "no references"
        parts.append(f"{s['key']} {observed(s['value'], s['ci'])}; {nulls}")
    return "; ".join(parts) or "—"


def display_table(table: pd.DataFrame, treatments: list[str]) -> pd.DataFrame:
    """The evidence table as shown: measurement, RLVR's value against its references (placebos, nulls and the
    identical copy), each treatment's reading, and whether the row counts."""
    shown = pd.DataFrame({
        "Measurement": table["measurement"],
        "RLVR: value [95% CI]; references' range": [_signals_text(s) for s in table["signals"]],
        **{t: [r.get(t, NOT_MEASURED) for r in table["readings"]] for t in treatments},
        "Counts?": table["calibration"],
    })
    return shown


_COLORS = {ROUTING: "#d8e8f7", REPRESENTATION: "#f9dcc4", BOTH: "#e3d7ef", REDUNDANT: "#d9ecd5",
           NO_EVIDENCE: "#eeeeee", NOT_MEASURED: "#ffffff"}
SHORT = {ROUTING: "R", REPRESENTATION: "RL", BOTH: "B", REDUNDANT: "=", NO_EVIDENCE: "–", NOT_MEASURED: "n/m"}


def styled(shown: pd.DataFrame):
    """The displayed table as a pandas Styler, readings coloured by side."""
    return (shown.style.hide(axis="index")
            .map(lambda v: f"background-color: {_COLORS.get(v, '#ffffff')}")
            .set_properties(**{"text-align": "left"}))


def markdown_table(shown: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + " --- |" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


def calibration_figure(table: pd.DataFrame, treatments: list[str]):
    """A grid: rows of the evidence table by treatment, coloured by reading; the controls must match their
    expected side and the placebos, nulls and identical model must stay grey for a row to count."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    order = list(SHORT)
    grid = np.array([[order.index(r.get(t, NOT_MEASURED)) for t in treatments] for r in table["readings"]])
    fig, ax = plt.subplots(figsize=(0.6 * len(treatments) + 5.5, 0.55 * len(table) + 1.8))
    ax.imshow(grid, cmap=ListedColormap([_COLORS[o] for o in order]), vmin=0, vmax=len(order) - 1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, SHORT[order[v]], ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(treatments)), treatments, rotation=30, ha="right")
    labels = [f"{m[:60]}{'…' if len(m) > 60 else ''} [{'counts' if c == 'counts' else 'not counted'}]"
              for m, c in zip(table["measurement"], table["calibration"])]
    ax.set_yticks(range(len(table)), labels, fontsize=9)
    ax.set_title("Reading of every row on every treatment (R: Routing, RL: Representation learning, B: both, "
                 "=: redundant, –: no evidence)", fontsize=10)
    fig.tight_layout()
    return fig


def thresholds_table(params) -> pd.DataFrame:
    return pd.DataFrame([{"param": f"verdict.{name}", "value": getattr(params, name), "reason": field.description}
                         for name, field in type(params).model_fields.items()])
