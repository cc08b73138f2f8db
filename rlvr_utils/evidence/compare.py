"""Runs side by side: `python -m rlvr_utils compare RUN_A RUN_B ...` prints, and writes as Markdown and CSV,
the accuracies and the evidence rows of several runs or seeds from their metrics files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from rlvr_utils.evidence import tables, verdict
from rlvr_utils.core import fmt
from rlvr_utils.core.config import resolve


def _run_dir(run: str) -> Path:
    """A run name under runs/ or a run folder."""
    path = resolve(run)
    folder = path if (path / "metrics").is_dir() else resolve("runs") / run
    if not (folder / "metrics").is_dir():
        made = sorted(f.parent.name for f in resolve("runs").glob("*/metrics"))
        raise FileNotFoundError(f"{run!r}: no metrics folder at {path / 'metrics'} or {folder / 'metrics'}: "
                                "give a run name under runs/ or a run folder (runs with metrics here: "
                                f"{', '.join(made) or 'none yet; make book makes runs/default'})")
    return folder


def table(runs: list[str]) -> pd.DataFrame:
    """One row per accuracy and per evidence row, one column per run: value [95% CI], or RLVR's reading
    with whether the row counts."""
    columns = {}
    for run in runs:
        folder = _run_dir(run)
        metrics = verdict.load_metrics(folder / "metrics")
        column = {}
        controls = [k.removesuffix("_minus_sft_accuracy") for k in metrics.get("variants.json", {}).get("summary", {})
                    if k.endswith("_minus_sft_accuracy")]  # whatever controls that run had
        for file, key in verdict.context_keys(controls)[:len(verdict.ACCURACY) + len(controls)]:
            value = verdict.summary_value(metrics, file, key)
            column[key] = fmt.observed(*(value or (None, None)))
        result = _read_verdict(folder)
        for row in (result or {}).get("rows", []):
            counted = "counts" if row["calibration"] == "counts" else "not counted"
            column[row["measurement"]] = f"{row['rlvr']} ({counted})"
        column["verdict"] = (result or {}).get("verdict", verdict.NOT_MEASURED)
        columns[folder.name] = column
    return pd.DataFrame(columns).fillna("—").rename_axis("measurement").reset_index()


def _read_verdict(folder: Path) -> dict | None:
    import json

    path = folder / "metrics" / "verdict.json"
    return json.loads(path.read_text()) if path.exists() else None


def write(frame: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """`out`.md and `out`.csv."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, csv = out.with_suffix(".md"), out.with_suffix(".csv")
    md.write_text(tables.markdown_table(frame) + "\n")
    frame.to_csv(csv, index=False)
    return md, csv
