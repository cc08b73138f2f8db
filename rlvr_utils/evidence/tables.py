"""The evidence table as the book shows it, built from the verdict's result (rlvr_utils.evidence.verdict).

On the page it is two narrow tables rather than one with a column per treatment (19 of them at the default
scale, 1333 px wide): `rlvr_table`, RLVR's value against its references and its reading per numbered row, and
`calibration_table`, whether the treatments with a known answer read right on that row; the calibration figure
shows every treatment's reading of every row (the evidence as data: rlvr_utils.evidence.export)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from rlvr_utils.core.fmt import breakable, interval, number
from rlvr_utils.treatments.registry import BOTH, NO_EVIDENCE, NOT_MEASURED, REDUNDANT, REPRESENTATION, ROUTING


def _signal_line(s: dict) -> str:
    env = s["null_envelope"]
    refs = f"references {number(env[0])} to {number(env[1])}" if env else "no references"
    return f"{s['key']}: {interval(s['value'], s['ci'])}; {refs}"


def rlvr_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per numbered row: the measurement, RLVR's value with its interval beside the range its references
    (placebos, nulls, identical copy) span, one line per signal, and RLVR's reading. Four columns: it fits a
    phone's width."""
    return pd.DataFrame({
        "#": range(1, len(table) + 1),
        "Measurement": table["measurement"],
        "RLVR: value [95% CI]; references' range": [
            "<br>".join(_signal_line(s) for s in signals if s["value"] is not None) or "not measured"
            for signals in table["signals"]],
        "RLVR reads": table["rlvr"]})


def _tally(readings: dict, wanted: dict[str, str]) -> str:
    """'7 of 8' and the treatments that did not read what they should."""
    wrong = [f"{t} reads {readings.get(t, NOT_MEASURED)}" for t, w in wanted.items() if readings.get(t) != w]
    return f"{len(wanted) - len(wrong)} of {len(wanted)}" + (f" ({'; '.join(wrong)})" if wrong else "")


def calibration_table(table: pd.DataFrame, design) -> pd.DataFrame:
    """Per numbered row: how many treatments with a known side (frozen and full-parameter controls, planted
    features) read it, how many references (placebos, nulls, identical copy) read no evidence, naming those that
    did not, and whether the row counts, and why not (verdict.calibration). `design`: verdict.Design."""
    from rlvr_utils.evidence.verdict import RULES

    sides_of = {rule.measurement: {s.supports for s in rule.signals} for rule in RULES}
    controls, references = [], []
    for _, row in table.iterrows():
        expected = design.expected_in(row["group"])
        sides = sides_of.get(row["measurement"], {ROUTING, REPRESENTATION})
        # a control of a side this row cannot read must read no evidence on it (verdict.calibration)
        controls.append({t: a if a in sides else NO_EVIDENCE for t, a in expected.items()
                         if a in (ROUTING, REPRESENTATION)})
        references.append({t: NO_EVIDENCE for t, a in expected.items() if a == NO_EVIDENCE})
    return pd.DataFrame({
        "#": range(1, len(table) + 1),
        "Controls reading their side": [_tally(r, w) for r, w in zip(table["readings"], controls)],
        # a reference fails only by reading a side (not measured is no evidence, as verdict.calibration reads it)
        "References reading no evidence": [_tally({t: r[t] if r.get(t) in DECIDED else NO_EVIDENCE for t in w}, w)
                                           for r, w in zip(table["readings"], references)],
        "Counts?": ["yes" if c == "counts" else f"no: {c}" for c in table["calibration"]]})


DECIDED = (ROUTING, REPRESENTATION, BOTH, REDUNDANT)
_COLORS = {ROUTING: "#d8e8f7", REPRESENTATION: "#f9dcc4", BOTH: "#e3d7ef", REDUNDANT: "#d9ecd5",
           NO_EVIDENCE: "#eeeeee", NOT_MEASURED: "#ffffff"}
SHORT = {ROUTING: "R", REPRESENTATION: "RL", BOTH: "B", REDUNDANT: "=", NO_EVIDENCE: "–", NOT_MEASURED: "n/m"}


def styled(shown: pd.DataFrame):
    """The displayed table as a pandas Styler, readings coloured by side; identifiers may wrap at '_' and a
    cell's lines stay lines (rlvr_table joins its signals with '<br>')."""
    return (shown.style.hide(axis="index")
            .format(lambda v: "<br>".join(breakable(part) for part in v.split("<br>")) if isinstance(v, str) else v)
            .format_index(lambda c: breakable(str(c)), axis=1)
            .map(lambda v: f"background-color: {_COLORS.get(v, '#ffffff')}")
            .set_properties(**{"text-align": "left"}))


def markdown_table(shown: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + " --- |" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


def calibration_figure(table: pd.DataFrame, treatments: list[str]):
    """A grid: every treatment (rows) by every numbered row of the evidence table (columns), coloured by reading;
    the controls must read their expected side and the placebos, nulls and identical model no evidence for a
    row to count (counted rows are marked ✓)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from rlvr_utils.core import plots

    order = list(SHORT)
    grid = np.array([[order.index(r.get(t, NOT_MEASURED)) for r in table["readings"]] for t in treatments])
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH, 0.3 * len(treatments) + 1.6))
    ax.imshow(grid, cmap=ListedColormap([_COLORS[o] for o in order]), vmin=0, vmax=len(order) - 1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, SHORT[order[v]], ha="center", va="center", fontsize=plots.MIN_FONT)
    labels = [f"{i}{' ✓' if c == 'counts' else ''}" for i, c in enumerate(table["calibration"], start=1)]
    ax.set_xticks(range(len(table)), labels, fontsize=plots.MIN_FONT)
    ax.set_yticks(range(len(treatments)), treatments, fontsize=plots.MIN_FONT)
    ax.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.grid(False)
    ax.set_xlabel("row of the evidence table (✓: counts)", fontsize=plots.MIN_FONT)
    ax.set_title("R: Routing, RL: Representation learning, B: both,\n=: redundant, –: no evidence, n/m: not measured",
                 fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig


def caption_calibration(table: pd.DataFrame) -> str:
    """How many rows count, which, and what RLVR reads on them."""
    counted = [i for i, c in enumerate(table["calibration"], start=1) if c == "counts"]
    text = ("Every treatment's reading of every row of the evidence table: a row counts (✓) only when its controls "
            f"read their side and its placebos, nulls and identical copy read no evidence. {len(counted)} of "
            f"{len(table)} rows count")
    if not counted:
        return text + ", so no row decides the verdict on this run."
    reads: dict[str, list[int]] = {}
    for i in counted:
        reads.setdefault(table["rlvr"].iloc[i - 1], []).append(i)
    rows = lambda found: f"row{'s' if len(found) > 1 else ''} {', '.join(map(str, found))}"  # noqa: E731
    return (text + f" ({rows(counted)}); on them RLVR reads "
            + "; ".join(f"{reading} ({rows(found)})" for reading, found in reads.items()) + ".")


def thresholds_table(params) -> pd.DataFrame:
    return pd.DataFrame([{"param": f"verdict.{name}", "value": getattr(params, name), "reason": field.description}
                         for name, field in type(params).model_fields.items()])
