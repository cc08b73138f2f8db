"""The evidence table as data: one record per row, treatment and signal, one column per field, written as
metrics/evidence.csv and its twin metrics/evidence.json. A reader can filter, plot or recompute the verdict
from them without parsing the book's display strings."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import pandas as pd

from rlvr_utils.core import artifacts
from rlvr_utils.evidence import verdict

PARAMS = ("verdict",)  # params sections read here (rlvr_utils.core.deps)

# The columns, in order, with what each holds (the JSON twin carries these descriptions, the Data page lists them).
COLUMNS = {
    "row": "the measurement (one evidence row of the verdict chapter)",
    "group": "rows of one group re-read one measurement and vote once",
    "treatment": "the model read against SFT (rlvr: the study; controls, placebos, nulls, identical)",
    "kind": "the treatment's kind: study, control, placebo, null, identical, user",
    "signal": "the metrics key the signal reads (in file)",
    "file": "the metrics file (metrics/<file>, variants/<treatment>/<signal>) the value comes from",
    "supports": "the hypothesis the signal supports when it fires",
    "direction": "high: it fires above the references; low: below them",
    "value": "the treatment's value",
    "ci_low": "lower end of its 95% interval",
    "ci_high": "upper end of its 95% interval",
    "null_low": "lower end of the union of the references' intervals (placebos, nulls, identical copy)",
    "null_high": "upper end of that union",
    "effect": "the signed distance from the placebos' mean, in the row's effect units",
    "fired": "whether the signal fired (beyond every reference, by the row's effect size)",
    "reading": "the row's reading for the treatment (both signals together; over seeds when replicated)",
    "counts": "whether the row counts toward the verdict",
    "calibration": "'counts', or why the row does not",
}


def _number(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def records(metrics: Mapping[str, dict], design: verdict.Design, params, rows: list[dict]) -> list[dict]:
    """One record per (row, treatment, signal). `rows`: the verdict's rows (verdict.build(...)["rows"]), whose
    readings and calibration (over seeds when replicated) are the ones the book shows; values, intervals and
    reference envelopes come from the same rules on this run's metrics."""
    by_measurement = {rule.measurement: rule for rule in verdict.RULES}
    out = []
    for row in rows:
        rule = by_measurement[row["measurement"]]
        for treatment in design.treatments:
            read = verdict.read_rule(rule, metrics, treatment, design, params)
            for s in read["signals"]:
                ci, env = s["ci"] or (None, None), s["null_envelope"] or (None, None)
                out.append({"row": row["measurement"], "group": row["group"], "treatment": treatment,
                            "kind": design.kinds.get(treatment, ""), "signal": s["key"], "file": rule.file,
                            "supports": s["supports"], "direction": s["direction"], "value": _number(s["value"]),
                            "ci_low": _number(ci[0]), "ci_high": _number(ci[1]), "null_low": _number(env[0]),
                            "null_high": _number(env[1]), "effect": _number(s["effect"]), "fired": s["fired"],
                            "reading": row["readings"].get(treatment, read["reading"]),
                            "counts": row["calibration"] == "counts", "calibration": row["calibration"]})
    return out


def write(folder: str | Path, table: list[dict], run: str) -> tuple[Path, Path]:
    """evidence.csv and evidence.json in `folder` (the run's metrics/); returns their paths."""
    folder = Path(folder)
    frame = pd.DataFrame(table, columns=list(COLUMNS))
    csv_path, json_path = folder / "evidence.csv", folder / "evidence.json"
    with artifacts.atomic_file(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    artifacts.write_json(json_path, {"run": run, "columns": COLUMNS, "records": table})
    return csv_path, json_path
