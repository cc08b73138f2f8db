"""`python -m rlvr_utils replicate`: the whole study again under `verdict.replicate_seeds`, one run per seed.

Seed k's run is the params file with `name: <name>-seed<k>` and `seed: k` (another base model, other training
data and another held-out set), executed into its own folder runs/<name>-seed<k>/ with its own executed
notebooks, so that it never touches the main book. Each finished seed is recorded in the main run
(rlvr_utils.evidence.replicate), whose verdict chapter then reads every seed's metrics/verdict.json and counts a
row only when the seeds agree.
"""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from rlvr_utils.core import lock
from rlvr_utils.core.config import load, resolve
from rlvr_utils.evidence.replicate import record
from rlvr_utils.publish import runner

PARAMS = ("verdict",)  # params sections read here (rlvr_utils.core.deps)


def seed_params(params_file: str | Path, seed: int) -> Path:
    """Write runs/<name>-seed<k>/params.yaml: the given file with the seed and the run name changed."""
    cfg = load(params_file)
    raw = yaml.safe_load(resolve(params_file).read_text()) or {}
    raw.update(name=f"{cfg.name}-seed{seed}", seed=seed)
    path = cfg.run_dir.parent / raw["name"] / "params.yaml"
    lock.claim(path.parent)  # a run folder of this package's, made before its params file is written in it
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(params_file: str, seeds: list[int] | None = None) -> bool:
    """Execute every notebook for each replicate seed (skipping what is up to date); True when all succeeded."""
    cfg = load(params_file)
    for seed in seeds if seeds is not None else cfg.verdict.replicate_seeds:
        if seed == cfg.seed:
            continue
        path = seed_params(params_file, seed)
        print(f"--- seed {seed}: {path}", flush=True)
        started = time.time()
        if not runner.execute(str(path), book_root=path.parent / "book"):
            return False
        record(cfg, seed, path.parent)
        print(f"--- seed {seed} done in {time.time() - started:.0f} s", flush=True)
    return True
