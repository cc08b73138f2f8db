"""Organism screen: train base, SFT and RLVR from scratch under changed params on several seeds and score
them on each seed's VALIDATION problems (never the test set), with stage times. This is how a change to the
organism is checked against its acceptance bar (RLVR at least 5 points above SFT and above base, on every
seed) before it goes into params/default.yaml; benchmarks/README.md lists the measurements.

    .venv/bin/python benchmarks/organism_seeds.py                      # params/default.yaml, seeds 0 1 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/organism_seeds.py data.corpus_new_verbs=0.25 --seeds 2 &
    .venv/bin/python benchmarks/organism_seeds.py --tag verbs3 --seeds 2   # after a change to the code

Each seed trains into runs/<name>-<tag>-s<seed>/ (about 4 minutes per seed on 2 cores); seeds run one
after another, so run several screens side by side with OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlvr_utils.core import config, stats
from rlvr_utils.training import data, train
from rlvr_utils.evaluation import evaluate
from rlvr_utils.models import loading as models  # noqa: E402


def screen_params(params_file: str, overrides: list[str], seed: int, tag: str | None = None) -> config.Params:
    raw = yaml.safe_load(Path(params_file).read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        raw.setdefault(section, {})[field] = yaml.safe_load(value)
    tag = tag or hashlib.sha1(" ".join(sorted(overrides)).encode()).hexdigest()[:8]
    raw.update(name=f"{raw.get('name', 'run')}-{tag}-s{seed}", seed=seed)
    return config.from_dict(raw, source=f"{params_file} with {overrides}, seed {seed}")


def greedy_correct(cfg: config.Params, stage: str, problems: list[dict]) -> np.ndarray:
    model, tokenizer = models.load(cfg.model_ref(stage), cfg)
    prompts = evaluate.stage_prompts(problems, stage, shots=[])
    rows = evaluate.greedy_eval(model, tokenizer, problems, cfg.evaluation.max_new_tokens, cfg.evaluation.batch_size,
                                prompts)
    return np.array([r["correct"] for r in rows], dtype=float)


def screen(cfg: config.Params) -> dict:
    seconds = {}
    for stage in ("base", "sft", "rlvr"):
        start = time.time()
        train.run_stage(cfg, stage)
        seconds[stage] = round(time.time() - start)
    problems = data.prepare_validation_set(cfg)
    correct = {stage: greedy_correct(cfg, stage, problems) for stage in ("base", "sft", "rlvr")}
    sft_log = json.loads(cfg.path("metrics", "train_sft.json").read_text())
    return {"seed": cfg.seed, "run_dir": str(cfg.run_dir), "train_seconds": seconds,
            "sft_stopping": sft_log.get("stopping"),
            **{f"{stage}_narrative" if stage == "base" else stage: round(100 * c.mean(), 1) for stage, c in correct.items()},
            "rlvr_minus_sft": stats.paired_difference(100 * correct["rlvr"], 100 * correct["sft"], seed=cfg.seed),
            "rlvr_minus_base": stats.paired_difference(100 * correct["rlvr"], 100 * correct["base"], seed=cfg.seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="section.key=value (YAML value)")
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tag", help="name of the screen's runs (default: a hash of the overrides); give one "
                        "when the code, not the params, changed")
    args = parser.parse_args()
    for seed in args.seeds:
        result = screen(screen_params(args.params, args.overrides, seed, args.tag))
        print(json.dumps({"overrides": args.overrides, "scored_on": "validation", **result}), flush=True)


if __name__ == "__main__":
    main()
