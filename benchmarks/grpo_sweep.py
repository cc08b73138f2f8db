"""GRPO recipe sweep: train GRPO from a finished run's SFT model under changed params and report what it does
to greedy accuracy on the run's VALIDATION problems (data/validation.jsonl), at the end and at every
intermediate checkpoint. The held-out test problems are never read here: only the book's final
evaluation touches them, so settings chosen with this tool are not tuned on the numbers the book reports.

This is how the organism's GRPO settings in params/default.yaml were chosen (benchmarks/README.md lists the
measurements). The run's base and SFT models are reused; each variant trains into runs/<run>-<variant>/.
Run from the project root after `make book`:

    .venv/bin/python benchmarks/grpo_sweep.py grpo.temperature=0.8 grpo.learning_rate=1e-4
    .venv/bin/python benchmarks/grpo_sweep.py --params params/default.yaml sft.steps=90 grpo.steps=180

A change to `sft.*` trains a new SFT model first (from the run's base). About 3-5 minutes per variant
on 2 cores; two variants can run side by side with OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlvr_utils.core import config, stats
from rlvr_utils.training import data, train
from rlvr_utils.evaluation import evaluate
from rlvr_utils.models import loading as models  # noqa: E402


def variant_params(params_file: str, overrides: list[str]) -> tuple[config.Params, config.Params]:
    """The finished run's params, and the variant's: same base (and SFT unless sft.* changes)."""
    run = config.load(params_file)
    raw = yaml.safe_load(Path(params_file).read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        raw.setdefault(section, {})[field] = yaml.safe_load(value)
    tag = hashlib.sha1(" ".join(sorted(overrides)).encode()).hexdigest()[:8]
    raw["name"] = f"{run.name}-{tag}"
    raw["model"] = {**raw.get("model", {}), "base": str(run.model_dir("base"))}
    if not any(item.startswith("sft.") for item in overrides):
        raw["model"]["sft"] = str(run.model_dir("sft"))
    return run, config.from_dict(raw, source=f"{params_file} with {overrides}")


def greedy_correct(model_dir: str, problems: list[dict], cfg: config.Params) -> np.ndarray:
    model, tokenizer = models.load(model_dir, cfg)
    rows = evaluate.greedy_eval(model, tokenizer, problems, cfg.evaluation.max_new_tokens, cfg.evaluation.batch_size)
    return np.array([r["correct"] for r in rows], dtype=float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="+", help="section.key=value (YAML value)")
    parser.add_argument("--params", default="params/default.yaml", help="a run that has finished notebook 02")
    args = parser.parse_args()
    run, cfg = variant_params(args.params, args.overrides)
    problems = data.prepare_validation_set(run)  # never the test set
    for stage in ("sft", "rlvr"):
        print(train.run_stage(cfg, stage), flush=True)
    sft = greedy_correct(cfg.model_ref("sft"), problems, cfg)
    checkpoints = sorted(cfg.path("models", "rlvr_checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    by_step = {p.name: greedy_correct(str(p), problems, cfg).mean() for p in checkpoints}
    rlvr = greedy_correct(str(cfg.path("models", "rlvr")), problems, cfg)
    history = json.loads(cfg.path("metrics", "train_rlvr.json").read_text())
    reward = [h["rewards/accuracy_reward/mean"] for h in history["log_history"] if "rewards/accuracy_reward/mean" in h]
    print(json.dumps({
        "overrides": args.overrides, "scored_on": f"{len(problems)} validation problems", "run_dir": str(cfg.run_dir), "grpo_seconds": round(history["seconds"]),
        "greedy_sft": sft.mean(), "greedy_rlvr": rlvr.mean(), "greedy_by_checkpoint": by_step,
        "rlvr_minus_sft": stats.paired_difference(rlvr, sft, seed=cfg.seed),
        "accuracy_reward_first_last": [float(np.mean(reward[:3])), float(np.mean(reward[-3:]))],
    }, indent=1))


if __name__ == "__main__":
    main()
