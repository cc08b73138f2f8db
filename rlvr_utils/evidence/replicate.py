"""Replication over seeds: which replicate runs this run has (recorded by `python -m rlvr_utils replicate`, which
rlvr_utils.publish.replication runs), so that the verdict reads those and no folder that merely has their name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from rlvr_utils.core import artifacts, lock
from rlvr_utils.treatments.registry import NOT_MEASURED

PARAMS = ("verdict",)  # replicate_seeds

RECORD = "replicates.json"  # in the main run's folder: {seed: run folder} of the replicates this command made


def recorded(cfg) -> dict[int, Path]:
    """The replicate runs that `replicate` made for this run (never a folder that merely has a matching name)."""
    path = cfg.path(RECORD)
    if not path.is_file():
        return {}
    return {int(seed): Path(folder) for seed, folder in artifacts.read_json(path).items()}


def record(cfg, seed: int, run_dir: Path) -> None:
    """Note that `replicate` ran seed `seed` of this run in `run_dir`."""
    with lock.run_lock(cfg.run_dir):
        made = {str(k): str(v) for k, v in recorded(cfg).items()}
        made[str(seed)] = str(run_dir)
        artifacts.write_json(cfg.path(RECORD), dict(sorted(made.items(), key=lambda kv: int(kv[0]))))


def replicate_dirs(cfg) -> dict[int, Path]:
    """Metrics folders of the replicate seeds (`verdict.replicate_seeds`) that `replicate` ran for this run and
    that have a verdict; the run itself is one of them under its own seed."""
    out = {cfg.seed: cfg.path("metrics")}
    made = recorded(cfg)
    for seed in cfg.verdict.replicate_seeds:
        if seed != cfg.seed and seed in made and (made[seed] / "metrics" / "verdict.json").exists():
            out[seed] = made[seed] / "metrics"
    return dict(sorted(out.items()))


def replicate(table: pd.DataFrame, seed: int, others: Mapping[int, dict]) -> pd.DataFrame:
    """Add per-seed RLVR readings and calibrations (this run's `seed`, and other seeds' verdict.json); a row
    keeps counting only when it counts on every seed and RLVR reads the same on all of them."""
    table = table.copy()
    seeds_reading, final = [], []
    for i, row in table.iterrows():
        per_seed = {f"seed {seed}": (row["rlvr"], row["calibration"])}
        for other, result in others.items():
            match = next((r for r in result["rows"] if r["measurement"] == row["measurement"]), None)
            per_seed[f"seed {other}"] = (match["rlvr"], match["calibration"]) if match else (NOT_MEASURED, "missing")
        seeds_reading.append({k: {"rlvr": v[0], "calibration": v[1]} for k, v in per_seed.items()})
        agree = len({v[0] for v in per_seed.values()}) == 1 and all(v[1] == "counts" for v in per_seed.values())
        if row["calibration"] == "counts" and not agree:
            final.append("seeds disagree: " + ", ".join(f"{k} {v[0]} ({v[1]})" for k, v in per_seed.items()))
        else:
            final.append(row["calibration"])
    table["seeds"] = seeds_reading
    table["calibration"] = final
    return table
