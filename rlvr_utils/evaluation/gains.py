"""metrics/variants.json: every treatment's greedy accuracy against SFT's and RLVR's, from the per-problem files
that `evaluate.run_variant` writes. Kept apart from rlvr_utils.evaluation.evaluate, which does not need the
treatment registry: that way an evaluation's stamp does not follow every treatment family's code and params, and
adding a placebo does not re-evaluate base, SFT and RLVR."""
from __future__ import annotations

import numpy as np

from rlvr_utils.core import artifacts, stats
from rlvr_utils.training import data
from rlvr_utils.treatments import registry

PARAMS = ("evaluation",)  # params sections read here (rlvr_utils.core.deps)


def summarize(cfg) -> dict:
    """metrics/variants.json (the variants chapter; eval.json stays the GRPO chapter's): per treatment, greedy accuracy, its
    gain over SFT and its difference from RLVR, with paired intervals; the controls' gains as summary keys."""
    ev = cfg.evaluation
    boot = dict(n_bootstrap=ev.n_bootstrap, confidence=ev.confidence, seed=cfg.seed)
    correct = {name: c for name in ["sft", *registry.names(cfg)] if (c := _greedy_correct(cfg, name)) is not None}
    if "sft" not in correct:
        raise FileNotFoundError(f"{cfg.path('eval', 'sft_greedy.jsonl')}: SFT is not evaluated yet (run the GRPO chapter first)")
    out = {"n_problems": len(correct["sft"]), "variants": summary(correct, boot), "summary": {}}
    for name in registry.names(cfg, "control"):
        if name in out["variants"]:
            out["summary"][f"{name}_minus_sft_accuracy"] = {
                **out["variants"][name]["gain"], "description": f"{name} control minus SFT greedy accuracy"}
    artifacts.write_json(cfg.path("metrics", "variants.json"), out)
    return out


def _greedy_correct(cfg, name: str) -> np.ndarray | None:
    """Per problem, whether `name`'s greedy answer is right (eval/<name>_greedy.jsonl); None if not evaluated."""
    path = cfg.path("eval", f"{name}_greedy.jsonl")
    return np.array([r["correct"] for r in data.read_jsonl(path)], dtype=float) if path.exists() else None


def summary(correct: dict[str, np.ndarray], boot: dict) -> dict:
    """Per treatment in `correct` (besides 'sft'): greedy accuracy, its gain over SFT and its difference from
    RLVR (paired intervals)."""
    out, sft, rlvr = {}, correct["sft"], correct.get("rlvr")
    for name, c in correct.items():
        if name == "sft" or c.shape != sft.shape:
            continue  # a different shape: evaluated on another problem set, stale; re-run the variants chapter
        out[name] = {"accuracy": stats.bootstrap(c, **boot), "gain": stats.paired_difference(c, sft, **boot)}
        if rlvr is not None and name != "rlvr":
            out[name]["minus_rlvr"] = stats.paired_difference(c, rlvr, **boot)
    return out
