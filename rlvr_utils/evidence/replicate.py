"""Replication over seeds: the whole study again under `verdict.replicate_seeds`, one run per seed.

Seed k's run is the params file with `name: <name>-seed<k>` and `seed: k` (another base model, other training
data and another held-out set), executed into its own folder runs/<name>-seed<k>/ with its own executed
notebooks, so that it never touches the main book. The main run's verdict chapter then reads every seed's
metrics/verdict.json and counts a row only when the seeds agree.
"""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from rlvr_utils.core import artifacts, lock
from rlvr_utils.core.config import load, resolve

PARAMS = ("verdict",)  # params sections read here (rlvr_utils.core.deps)
RECORD = "replicates.json"  # in the main run's folder: {seed: run folder} of the replicates this command made


def recorded(cfg) -> dict[int, Path]:
    """The replicate runs that `replicate` made for this run (never a folder that merely has a matching name)."""
    path = cfg.path(RECORD)
    if not path.is_file():
        return {}
    return {int(seed): Path(folder) for seed, folder in artifacts.read_json(path).items()}


def _record(cfg, seed: int, run_dir: Path) -> None:
    with lock.run_lock(cfg.run_dir):
        made = {str(k): str(v) for k, v in recorded(cfg).items()}
        made[str(seed)] = str(run_dir)
        artifacts.write_json(cfg.path(RECORD), dict(sorted(made.items(), key=lambda kv: int(kv[0]))))


def seed_params(params_file: str | Path, seed: int) -> Path:
    """Write runs/<name>-seed<k>/params.yaml: the given file with the seed and the run name changed."""
    cfg = load(params_file)
    raw = yaml.safe_load(resolve(params_file).read_text()) or {}
    raw.update(name=f"{cfg.name}-seed{seed}", seed=seed)
    path = cfg.run_dir.parent / raw["name"] / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(params_file: str, seeds: list[int] | None = None) -> bool:
    """Execute every notebook for each replicate seed (skipping what is up to date); True when all succeeded."""
    from rlvr_utils.publish import runner

    cfg = load(params_file)
    for seed in seeds if seeds is not None else cfg.verdict.replicate_seeds:
        if seed == cfg.seed:
            continue
        path = seed_params(params_file, seed)
        print(f"--- seed {seed}: {path}", flush=True)
        started = time.time()
        if not runner.execute(str(path), book_root=path.parent / "book"):
            return False
        _record(cfg, seed, path.parent)
        print(f"--- seed {seed} done in {time.time() - started:.0f} s", flush=True)
    return True
