"""Replication over seeds: which replicate runs this run has (recorded by `python -m rlvr_utils replicate`, which
rlvr_utils.publish.replication runs), so that the verdict reads those and no folder that merely has their name.
"""
from __future__ import annotations

from pathlib import Path


from rlvr_utils.core import artifacts, lock

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
