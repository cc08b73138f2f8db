"""Placebo GRPO: the RLVR recipe (same SFT start, data, steps, learning rate and sampling) paid by seeded 0/1 draws
that ignore the completion, with the same means as RLVR's logged training rewards. A *trained* update of RLVR's
kind and about its size that carries no task signal, so it must read "no evidence": the yardstick a random
direction cannot be (any trained update beats a random one). `variants.placebos` of them, placebo_k drawing
with seed `seed + 2000 + k`.
"""
from __future__ import annotations

import os

import numpy as np

from rlvr_utils.core import artifacts
from rlvr_utils.treatments.registry import NO_EVIDENCE, Family, Treatment, register

PARAMS = ("variants", "model")
SEED_OFFSET = 2000
PAID = ("rewards/accuracy_reward/mean", "rewards/format_reward/mean")  # what RLVR's log says it was paid


def rlvr_reward_means(cfg) -> tuple[float, float]:
    """Mean accuracy and format rewards over RLVR's logged GRPO steps (metrics/train_rlvr.json)."""
    path = cfg.path("metrics", "train_rlvr.json")
    history = artifacts.read_json(path)["log_history"] if path.exists() else []
    means = [[h[k] for h in history if k in h] for k in PAID]
    if not all(means):
        raise ValueError(f"{path}: no logged GRPO rewards ({', '.join(PAID)}); placebos copy RLVR's mean rewards, "
                         "so they need RLVR trained by this run (set variants.placebos: 0 for given checkpoints)")
    return tuple(float(np.mean(m)) for m in means)


def placebo_rewards(means: tuple[float, float], seed: int, rank: int | None = None) -> list:
    """Reward functions with TRL's signature that pay Bernoulli(mean) draws, whatever the completion says. Each
    process of a launched run draws its own stream (its `RANK`): with one seed, every rank would pay its own
    completions the same sequence. Rank 0 keeps the plain seed's stream (a one-process run is unchanged)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    rng = np.random.default_rng(seed if rank == 0 else [seed, rank])

    def placebo_accuracy(completions, **_):
        return [float(x) for x in rng.random(len(completions)) < means[0]]

    def placebo_format(completions, **_):
        return [float(x) for x in rng.random(len(completions)) < means[1]]
    return [placebo_accuracy, placebo_format]


def train_placebo(cfg, name: str) -> list[dict]:
    from rlvr_utils.training import train

    seed = cfg.seed + SEED_OFFSET + int(name.split("_")[1])
    return train.grpo(cfg, name, cfg.model_ref("sft"), reward_funcs=placebo_rewards(rlvr_reward_means(cfg), seed))


def runs(cfg) -> int:
    """How many placebo runs this run has: `variants.placebos`, but none for given checkpoints (analyze-only), whose
    RLVR training log, the rewards a placebo copies, is not there (the verdict's caveats then say no row counts)."""
    return 0 if cfg.model.analyze_only else cfg.variants.placebos


def expand(cfg) -> list[Treatment]:
    return [Treatment(f"placebo_{k}", "placebo", NO_EVIDENCE, "placebos", "GRPO paid by draws that ignore the completion",
                      trained=True) for k in range(runs(cfg))]


register(Family("placebos", expand, order=20, train=train_placebo))
